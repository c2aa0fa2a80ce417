"""The scheme benchmark: a tiny grid end to end, caching, the criterion of the held-out protocol, composed designs."""

import json

import pytest

from dnnpiracy.attack import resolve_spec
from dnnpiracy.experiments import bench_report as br
from dnnpiracy.experiments.benchmark import BenchCell, grid_targets, load_grid, render, run_grid

TINY = """
title = "tiny"
datasets = ["digits-tiny"]
schemes = ["content", "abstract"]
development = ["content"]
seeds = [0]
trigger_labels = [3]
detectors = ["mahalanobis-stages", "ensemble:mahalanobis-stages,knn-input"]
arch = "small-cnn"
lr = 0.001
epochs = {digits-tiny = 3}
surrogate_fraction = {digits-tiny = 0.3}
clean_baseline = true
"""


def test_shipped_grids_load_and_every_column_resolves():
    for name in ("schemes", "selection"):
        g = load_grid(name)
        assert set(g["development"]) <= set(g["schemes"])
    g = load_grid("schemes")
    assert len(g["schemes"]) >= 8 and len(g["seeds"]) == 3 and set(g["datasets"]) == {"fashion-mnist", "mnist-10k"}
    # selection never uses a held-out scheme nor a benchmark seed
    s = load_grid("selection")
    assert set(s["schemes"]) <= set(g["development"]) and not set(s["seeds"]) & set(g["seeds"])


def test_bad_grid_is_refused_before_training(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text(TINY.replace('"mahalanobis-stages",', '"no-such-detector",'))
    with pytest.raises(ValueError, match="no-such-detector"):
        load_grid(str(p))
    with pytest.raises(ValueError, match="unknown grid"):
        load_grid("nope")


def test_composed_ensembles_resolve_and_bad_parts_are_named():
    assert resolve_spec("ensemble:mahalanobis-stages,dknn").rule == "calibrated"
    with pytest.raises(ValueError, match="unknown or not composable: dcgan"):
        resolve_spec("ensemble:mahalanobis-stages,dcgan")
    with pytest.raises(ValueError, match="at least two"):
        resolve_spec("ensemble:dknn")


def test_tiny_grid_runs_caches_and_renders(tmp_path):
    p = tmp_path / "tiny.toml"
    p.write_text(TINY)
    grid = load_grid(str(p))
    cache, out = tmp_path / "cache", tmp_path / "out"
    res = run_grid(grid, cache, progress=False, log=lambda _m: None)
    assert not res["failed"] and len(res["cells"]) == 4          # 2 schemes x 2 detectors
    files = sorted((cache / "bench_cells").glob("*.json"))
    stamps = {f: f.stat().st_mtime_ns for f in files}
    res2 = run_grid(grid, cache, progress=False, log=lambda _m: None)   # all cached: nothing recomputed
    assert {f: f.stat().st_mtime_ns for f in files} == stamps and len(res2["cells"]) == 4
    paths = render(grid, out, cache, command="test")
    data = json.loads((out / "schemes" / "schemes.json").read_text())
    rows = data["rows"]
    assert len(rows) == 4 and {r["scheme"] for r in rows} == {"content", "abstract"}
    assert {r["held_out"] for r in rows if r["scheme"] == "abstract"} == {True}
    for r in rows:
        assert r["seeds"] == [0] and 0 <= r["fpr_mean"] <= 1 and r["watermark_accuracy_cost"] is not None
    assert (out / "schemes" / "matrix.png").stat().st_size > 1000 and any(str(x).endswith(".md") for x in paths)
    # a render from an empty cache does not overwrite a fuller report
    with pytest.raises(ValueError, match="holds 4 cells"):
        render(grid, out, tmp_path / "empty", command="test")


def test_frontier_grid_reuses_the_clean_target_and_tests_the_unwatermarked_model(tmp_path):
    """Frontier stitching starts from the grid's unwatermarked target (no second training), its cells carry the
    owner's test of that unwatermarked model against 1/2, and the render shows the column and the gallery row."""
    from dnnpiracy.experiments.runner import target_key
    from dnnpiracy.training import load_model, predict_labels
    from dnnpiracy.watermark import load_trigger_set, verify
    p = tmp_path / "tiny.toml"
    p.write_text(TINY.replace('schemes = ["content", "abstract"]', 'schemes = ["content", "frontier"]')
                 .replace("seeds = [0]", "seeds = [0, 1]").replace("trigger_labels = [3]", "trigger_labels = [3, 4]"))
    grid = load_grid(str(p))
    cache, out = tmp_path / "cache", tmp_path / "out"
    res = run_grid(grid, cache, progress=False, log=lambda _m: None)
    assert not res["failed"]
    assert not list((cache / "targets").glob("*/base"))         # the clean baseline was the frontier's base
    cells = [json.loads(f.read_text()) for f in (cache / "bench_cells").glob("*.json")]
    assert len(cells) == 8 and all("independent_verification" in c for c in cells)
    t = next(t for t in grid_targets(grid) if t.scheme == "frontier" and t.seed == 0)
    c1 = next(t for t in grid_targets(grid) if t.scheme is None and t.seed == 1)     # the next seed's clean target
    from dnnpiracy.data import load_dataset
    ds = load_dataset("digits-tiny")
    clean, _ = load_model(cache / "targets" / target_key(ds.name, c1.train, None, c1.target_splits(ds)) /
                          "model.safetensors")
    trig = load_trigger_set(cache / "targets" / target_key(ds.name, t.train, t.trigger_config(), t.target_splits(ds))
                            / "triggers.safetensors")
    ref = verify(lambda q: predict_labels(clean, q), trig.images, trig.labels, chance=0.5)
    got = next(c for c in cells if c["cell"]["scheme"] == "frontier" and c["cell"]["seed"] == 0)[
        "independent_verification"]
    assert got["chance"] == 0.5 and got["n_trigger_label"] == ref.n_trigger_label and got["p_value"] == ref.p_value
    assert got["model_seed"] == 1
    assert {c["independent_verification"]["model_seed"] for c in cells if c["cell"]["seed"] == 1} == {0}
    assert {c["independent_verification"]["chance"] for c in cells if c["cell"]["scheme"] == "content"} == {0.1}
    render(grid, out, cache, command="test")
    md = (out / "schemes" / "schemes.md").read_text()
    assert "unwatermarked model 'pirated'" in md and "| frontier |" in md
    # the committed cells alone (no target cache) render the same rows, the watermark's accuracy cost included
    import shutil
    shutil.copytree(cache / "bench_cells", tmp_path / "cells_only" / "bench_cells")
    render(grid, tmp_path / "out2", tmp_path / "cells_only", command="test")
    again = json.loads((tmp_path / "out2" / "schemes" / "schemes.json").read_text())["rows"]
    first = json.loads((out / "schemes" / "schemes.json").read_text())["rows"]
    assert again == first and all(r["watermark_accuracy_cost"] is not None for r in again)


def test_paper_cells_key_their_gan_and_calibrated_cells_their_threshold(tmp_path):
    p = tmp_path / "tiny.toml"
    p.write_text(TINY)
    t = grid_targets(load_grid(str(p)))[0]
    from dataclasses import replace
    longer = replace(t, gan_epochs=t.gan_epochs + 1)
    assert BenchCell(t, "paper").key() != BenchCell(longer, "paper").key()
    assert BenchCell(t, "dknn").key() == BenchCell(longer, "dknn").key()
    assert BenchCell(t, "dknn").key() != BenchCell(t, "dknn", target_fpr=0.02).key()


def _cell(det, scheme, fpr, fnr, fresh, pirated):
    return {"cell": {"detector": det, "scheme": scheme, "dataset": "d", "seed": 0},
            "metrics": {"fpr": fpr, "fnr": fnr, "fnr_fresh": fresh, "auroc": 0.9,
                        "verification_pirated": {"pirated": pirated}}}


def test_selection_criterion_known_values():
    cells = [_cell("mahalanobis-stages", "a", 0.005, 0.2, 0.1, False),   # passes (FNR exactly at the bar)
             _cell("mahalanobis-stages", "b", 0.02, 0.0, 0.0, False),    # FPR too high
             _cell("dknn", "a", 0.005, 0.0, 0.4, False),
             _cell("dknn", "b", 0.005, 0.1, float("nan"), False),        # no fresh hit: embedded FNR stands in
             _cell("knn-input", "a", 0.0, 0.0, 0.0, True),               # owner still proves piracy
             _cell("knn-input", "b", 0.0, 0.0, 0.0, False)]
    ranking = br.selection_scores(cells)
    assert [r["detector"] for r in ranking] == ["dknn", "knn-input", "mahalanobis-stages"]
    assert ranking[0]["pass_share"] == 1.0 and ranking[0]["mean_fnr_embedded_fresh"] == pytest.approx(0.15)
    assert ranking[1]["pass_share"] == 0.5 and ranking[2]["pass_share"] == 0.5
    # ties on the share go to the lower (FNR + fresh FNR) / 2: knn-input 0.0 before mahalanobis-stages 0.075
    assert ranking[2]["mean_fnr_embedded_fresh"] == pytest.approx(0.075)
    # without scheme b both pass everything; (0.2 + 0.1) / 2 = 0.15 beats dknn's (0.0 + 0.4) / 2 = 0.2
    loso = br.selection_scores(cells, exclude_scheme="b")
    assert [r["detector"] for r in loso] == ["mahalanobis-stages", "dknn", "knn-input"]
    assert {r["detector"]: r["pass_share"] for r in loso} == {"mahalanobis-stages": 1.0, "dknn": 1.0,
                                                              "knn-input": 0.0}


def test_held_out_bar():
    row = {"fpr_mean": 0.01, "fnr_mean": 0.2, "owner_pirated_share": 0.0}
    assert br.meets_bar(row)
    assert not br.meets_bar({**row, "owner_pirated_share": 1 / 3})
    assert not br.meets_bar({**row, "fnr_mean": 0.21})


def test_lof_scorer_matches_scikit_learn_and_flags_a_planted_outlier():
    import torch
    from sklearn.neighbors import LocalOutlierFactor

    from dnnpiracy.attack.scorers import Evidence, LOFScorer
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(200, 8, generator=g)
    queries = torch.cat([torch.randn(20, 8, generator=g), torch.full((1, 8), 6.0)])
    y = torch.zeros(200, dtype=torch.long)
    s = LOFScorer(k=20).fit(Evidence(features=ref), y).score(Evidence(features=queries), torch.zeros(21).long())
    sk = LocalOutlierFactor(n_neighbors=20, novelty=True).fit(ref.double().numpy())
    assert torch.allclose(s.double(), torch.from_numpy(-sk.score_samples(queries.double().numpy())), atol=1e-5)
    assert int(s.argmax()) == 20 and s[20] > 2 and s[:20].median() < 1.3     # inliers score about 1


def test_cli_lists_few_detectors_and_every_scheme():
    from click.testing import CliRunner

    from dnnpiracy.attack import USER_DETECTORS
    from dnnpiracy.cli import main
    from dnnpiracy.watermark import SCHEMES
    out = CliRunner().invoke(main, ["detectors"])
    assert out.exit_code == 0
    # one entry per name; a long description wraps onto indented lines
    listed = [line.split()[0] for line in out.output.split("\n\n")[0].splitlines() if not line.startswith(" ")]
    assert listed == list(USER_DETECTORS) and len(listed) <= 10
    assert all(len(line) <= 120 for line in out.output.splitlines())
    full = CliRunner().invoke(main, ["detectors", "--all"])
    assert "ensemble-patch-dknn-window" in full.output
    sch = CliRunner().invoke(main, ["schemes", "--json"])
    assert [r["scheme"] for r in json.loads(sch.output)] == list(SCHEMES)
    bad = CliRunner().invoke(main, ["run", "--scheme", "nope"])
    assert bad.exit_code == 2 and "nope" in bad.output
