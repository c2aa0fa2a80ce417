import json

import pytest
import torch

from dnnpiracy.experiments.reproduce import PROFILES, Profile, load_table, reproduce_spec, table_cells


def test_tables_declare_the_paper_grid():
    t1, t2, t3, t4, t5 = (load_table(str(i)) for i in range(1, 6))
    assert t1["trigger_labels"] == list(range(10)) and t2["dataset"] == "fashion-mnist"
    assert t3["archs"] == ["resnet34", "resnet101", "resnet152"] and t4["blocks"] == [1, 2, 3, 4]
    assert 0.1 in t5["taus"] and 20.0 in t5["taus"]
    assert t2["paper"]["0"][2:] == [0.20, 0.07] and t5["paper"]["0.1"][2] == 1.0
    cells = table_cells(t1, PROFILES["cpu"], "mnist-10k")
    assert len(cells) == 10 * 3 * 3 and {c.arch for c in cells} == {"resnet18"}
    assert {c.detector for c in cells} == {"paper", "ensemble-mahalanobis-stages-input-knn-patch-window",
                                           "ensemble-mahalanobis-stages-input-knn-patch"}   # default, previous one
    fashion = table_cells(t2, PROFILES["cpu"], "fashion-mnist")
    assert len(fashion) == 10 * 3 * 4         # the new default beside the earlier Fashion-MNIST default
    assert {c.detector for c in fashion} == {"paper", "ensemble-mahalanobis-stages-input-knn-patch-window",
                                             "ensemble-patch-dknn-window", "ensemble-patch-dknn"}
    # "default" and the name it stands for are one design, run once
    assert len(table_cells(dict(t1, detectors=["default", "ensemble-mahalanobis-stages-input-knn-patch-window"]),
                           PROFILES["cpu"], "mnist-10k")) == 10 * 3
    assert {c.arch for c in table_cells(t3, PROFILES["cpu"], "mnist-10k")} == {"resnet34", "resnet101", "resnet152"}
    assert len({c.key() for c in cells}) == len(cells)


def test_a_cells_key_names_only_what_its_detector_uses():
    from dataclasses import replace
    cells = table_cells(load_table("1"), PROFILES["cpu"], "mnist-10k")
    paper = next(c for c in cells if c.detector == "paper")
    calibrated = next(c for c in cells if c.detector != "paper")
    assert paper.calibration_folds == calibrated.calibration_folds == 0          # leave-one-out by default
    assert replace(paper, calibration_folds=20).key() == paper.key()             # the paper rule cross-fits nothing
    assert replace(calibrated, calibration_folds=20).key() != calibrated.key()
    assert replace(calibrated, gan_epochs=7).key() == calibrated.key()           # a calibrated detector trains no GAN
    assert replace(paper, gan_epochs=7).key() != paper.key()
    assert calibrated.fpr_confidence == 0.9                                      # the confident rule by default
    assert replace(calibrated, fpr_confidence=None).key() != calibrated.key()
    assert replace(paper, fpr_confidence=None).key() == paper.key()              # the paper rule calibrates nothing


def test_cell_filter_runs_a_subset_of_the_grid(tmp_path, monkeypatch):
    from dnnpiracy.experiments.reproduce import CellFilter
    spec = {"id": "1", "title": "tiny", "dataset": "digits-tiny", "trigger_labels": [0], "archs": ["small-cnn"],
            "blocks": [4], "taus": [2.0], "detectors": ["knn-input"], "seeds": [0, 1], "target_fprs": [0.1]}
    prof = Profile("test", {"digits-tiny": 2}, {"digits-tiny": 2}, {}, True, "tiny test profile", {"digits-tiny": 0.2})
    res = reproduce_spec(spec, prof, tmp_path / "results", tmp_path / "cache", progress=False, log=lambda m: None,
                         only=CellFilter(seeds=frozenset({1})))
    assert res["meta"]["cells_done"] == 1 and res["meta"]["cells_total"] == 2
    assert [r["seeds"] for r in res["rows"]] == [[1]]
    assert len(list((tmp_path / "cache" / "targets").iterdir())) == 1          # seed 0's target was never trained
    assert CellFilter(labels=frozenset({0}))(table_cells(spec, prof, "digits-tiny")[0])
    assert not CellFilter(labels=frozenset({3}))(table_cells(spec, prof, "digits-tiny")[0])
    assert CellFilter(detectors=frozenset({"knn-input"}))(table_cells(spec, prof, "digits-tiny")[0])
    assert not CellFilter(detectors=frozenset({"default"}))(table_cells(spec, prof, "digits-tiny")[0])
    default_cell = table_cells({**spec, "detectors": ["default"]}, prof, "digits-tiny")[0]
    assert CellFilter(detectors=frozenset({"default"}))(default_cell)   # "default" names the dataset's default
    # another subset of the same size cannot replace the table; a computing run that will end with everything the
    # table holds writes into it only once it does (a run killed before that leaves it as it was)
    with pytest.raises(ValueError, match="without 1 of them"):
        reproduce_spec(spec, prof, tmp_path / "results", tmp_path / "cache", progress=False, log=lambda m: None,
                       only=CellFilter(seeds=frozenset({0})))
    assert len(list((tmp_path / "cache" / "targets").iterdir())) == 1
    from dnnpiracy.experiments import reproduce as rep
    real_run_cell, before = rep.run_cell, (tmp_path / "results" / "table1.json").read_text()

    def killed_after_seed_0(cell, *a, **k):
        if cell.seed == 1:
            raise KeyboardInterrupt
        return real_run_cell(cell, *a, **k)
    monkeypatch.setattr(rep, "run_cell", killed_after_seed_0)
    with pytest.raises(KeyboardInterrupt):
        reproduce_spec(spec, prof, tmp_path / "results", tmp_path / "cache", progress=False, log=lambda m: None)
    assert (tmp_path / "results" / "table1.json").read_text() == before     # seed 0 done, the table untouched
    monkeypatch.setattr(rep, "run_cell", real_run_cell)
    both = reproduce_spec(spec, prof, tmp_path / "results", tmp_path / "cache", progress=False, log=lambda m: None)
    assert both["meta"]["cells_done"] == 2 and len(both["meta"]["cell_keys"]) == 2
    with pytest.raises(ValueError, match="no cell of table 1 matches"):
        reproduce_spec(spec, prof, tmp_path / "results", tmp_path / "cache", progress=False, log=lambda m: None,
                       only=CellFilter(archs=frozenset({"resnet18"})))


def test_grid_runs_caches_and_resumes(tmp_path, monkeypatch):
    spec = {"id": "1", "title": "tiny", "dataset": "digits-tiny", "trigger_labels": [0], "archs": ["small-cnn"],
            "blocks": [4], "taus": [0.5, 2.0], "detectors": ["paper", "knn-input"], "seeds": [0],
            "target_fprs": [0.05, 0.1], "paper": {"0": [0.9, 1.0, 0.0, 0.0]}}
    # 20 % of digits-tiny's 200 test images: 4 labelled inputs per class (5 % leaves 1, too few to cross-fit)
    prof = Profile("test", {"digits-tiny": 3}, {"digits-tiny": 2}, {}, True, "tiny test profile", {"digits-tiny": 0.2})
    res = reproduce_spec(spec, prof, tmp_path / "results", tmp_path / "cache", progress=False, log=lambda m: None)
    rows = res["rows"]
    assert {(r["detector"], r["tau"], r["target_fpr"]) for r in rows} == {
        ("paper", 0.5, None), ("paper", 2.0, None), ("knn-input", None, 0.05), ("knn-input", None, 0.1)}
    for r in rows:
        assert 0 <= r["fpr_mean"] <= 1 and 0 <= r["fnr_mean"] <= 1 and r["paper_fnr"] == 0.0
        lo, hi = r["fpr_ci95"]
        assert lo <= r["fpr_mean"] <= hi
    paper = {r["tau"]: r for r in rows if r["detector"] == "paper"}
    assert paper[2.0]["fpr_mean"] <= paper[0.5]["fpr_mean"]        # a larger tau never flags more
    saved = json.loads((tmp_path / "results" / "table1.json").read_text())
    assert len(saved["rows"]) == 4 and "Table 1" in (tmp_path / "results" / "table1.md").read_text()
    cells = list((tmp_path / "cache" / "cells").glob("*.json"))
    assert len(cells) == 2
    # every cell keeps its clean/trigger scores, and the figures are drawn from them
    for c in cells:
        out = json.loads(c.read_text())
        sc, n_clean = out["scores"], out["results"][0]["n_clean"]
        assert len(sc["triggers"]) == out["results"][0]["n_triggers"] == 15 and len(sc["clean"]) == n_clean > 0
    figs = tmp_path / "results" / "figures"
    assert (figs / "table1_roc.png").read_bytes().startswith(b"\x89PNG")
    assert (figs / "table1_gallery.png").read_bytes().startswith(b"\x89PNG")
    assert (figs / "table1_fnr_by_label.png").read_bytes().startswith(b"\x89PNG")
    # resume: every cell is cached, so nothing is recomputed (fitting would be needed otherwise)
    import dnnpiracy.experiments.cells as cells_mod
    import dnnpiracy.experiments.render as render_mod
    monkeypatch.setattr(cells_mod, "fit_detector", lambda *a, **k: (_ for _ in ()).throw(AssertionError("refit")))
    again = reproduce_spec(spec, prof, tmp_path / "results", tmp_path / "cache", progress=False, log=lambda m: None)
    assert again["rows"] == rows
    # the one target is counted once, at its recorded build time; the cells that reused it add only their own time
    compute = again["meta"]["compute_seconds"]
    target_report = next((tmp_path / "cache" / "targets").glob("*/report.json"))
    assert compute["n_targets"] == 1
    assert compute["targets"] == pytest.approx(json.loads(target_report.read_text())["wall_seconds"])
    first = [json.loads(c.read_text()) for c in cells]
    assert compute["detectors"] == pytest.approx(sum(o["seconds"] - o["target_seconds"] for o in first))
    assert "1 targets" in (tmp_path / "results" / "table1.md").read_text()
    assert torch.get_num_threads() >= 1
    assert again["meta"]["devices"] == ["cpu (%d threads)" % torch.get_num_threads()]
    # cached-only rendering (cells merged from another machine): the missing cell and target are not computed
    import shutil
    for mod in (cells_mod, render_mod):
        monkeypatch.setattr(mod, "get_target", lambda *a, **k: (_ for _ in ()).throw(AssertionError("trained")))
    paper_cell = next(c for c in cells if json.loads(c.read_text())["rule"] == "paper")
    paper_cell.unlink()
    shutil.rmtree(tmp_path / "cache" / "targets")
    only = reproduce_spec(spec, prof, tmp_path / "partial", tmp_path / "cache", progress=False, log=lambda m: None,
                          cached_only=True, command="dnnpiracy first")
    # rendering again from the cache keeps the first command and records its own beside it
    again = reproduce_spec(spec, prof, tmp_path / "partial", tmp_path / "cache", progress=False, log=lambda m: None,
                           cached_only=True, command="dnnpiracy render")
    assert again["meta"]["command"] == "dnnpiracy first" and again["meta"]["rendered_by"] == "dnnpiracy render"
    assert "Re-rendered from the cache by `dnnpiracy render`" in (tmp_path / "partial" / "table1.md").read_text()
    # a render that would end with fewer cells than the table already written refuses and leaves it as it was
    before = (tmp_path / "results" / "table1.json").read_text()
    with pytest.raises(ValueError, match="holds 2 finished cells; this invocation would end with 1, without 1"):
        reproduce_spec(spec, prof, tmp_path / "results", tmp_path / "cache", progress=False, log=lambda m: None,
                       cached_only=True)
    assert (tmp_path / "results" / "table1.json").read_text() == before
    # --overwrite writes it anyway, and the command is then this render's own
    forced = reproduce_spec(spec, prof, tmp_path / "results", tmp_path / "cache", progress=False,
                            log=lambda m: None, cached_only=True, overwrite=True, command="dnnpiracy forced")
    assert forced["meta"]["cells_done"] == 1 and forced["meta"]["command"] == "dnnpiracy forced"
    assert "rendered_by" not in forced["meta"]
    assert {r["detector"] for r in only["rows"]} == {"knn-input"} and only["meta"]["cells_done"] == 1
    # the target was built elsewhere (no report here): its build time comes from what the cell recorded, the same
    # number its report had
    kept = json.loads(next(c for c in cells if c.exists()).read_text())
    assert only["meta"]["compute_seconds"]["n_targets_from_cells"] == 1
    assert only["meta"]["compute_seconds"]["targets"] == pytest.approx(kept["target_report"]["wall_seconds"])
    assert kept["target_report"]["wall_seconds"] == pytest.approx(compute["targets"])
    assert only["meta"]["cells_total"] == 2 and "1/2 finished" in (tmp_path / "partial" / "table1.md").read_text()
    assert not (tmp_path / "partial" / "figures" / "table1_gallery.png").exists()
    # the traffic-calibrated threshold is computed from the cached scores of the calibrated cell alone
    from dnnpiracy.experiments.traffic import bar_check, spec_traffic_rows, traffic_markdown
    rows = spec_traffic_rows(spec, prof, "digits-tiny", tmp_path / "cache", target_fpr=0.05, n_traffic=40, repeats=5)
    assert len(rows) == 1 and rows[0]["detector"] == "knn-input" and rows[0]["seeds"] == [0]
    knn = next(r for r in only["rows"] if r["target_fpr"] == 0.05)
    assert rows[0]["surrogate_fpr_mean"] == knn["fpr_mean"] and rows[0]["surrogate_fnr_mean"] == knn["fnr_mean"]
    assert 0 <= rows[0]["traffic_fpr_mean"] <= 1 and 0 <= rows[0]["contaminated_fnr_mean"] <= 1
    assert bar_check(rows, "knn-input", "traffic") == {}          # digits-tiny has no bar
    md = traffic_markdown(rows, {"profile": "test", "target_fpr": 0.05, "n_traffic": 40, "repeats": 5,
                                 "wall_seconds": 0.0, "command": "x", "git_commit": "y"})
    assert "| 1 | 0 | small-cnn | 4 | knn-input | 0 |" in md
    from dnnpiracy.evaluation.plots import traffic_figure
    assert traffic_figure(rows, "t").startswith(b"\x89PNG")


def test_bar_summary_applies_the_issue_bar_per_dataset():
    from dnnpiracy.experiments.reproduce import bar_summary

    def row(label, fpr, fnr, dataset="fashion-mnist", det="d"):
        return {"detector": det, "target_fpr": 0.01, "dataset": dataset, "trigger_label": label,
                "arch": "resnet18", "blocks": 4, "fpr_mean": fpr, "fnr_mean": fnr}

    ok = bar_summary([row(0, 0.009, 0.2), row(1, 0.001, 0.0), row(2, 0.5, 1.0, det="other")], "d")
    assert ok["met"] and ok["configurations"] == 2 and ok["worst_fnr_mean"] == 0.2
    bad = bar_summary([row(0, 0.009, 0.2, "mnist-10k"), row(1, 0.011, 0.0, "mnist-10k")], "d")
    assert not bad["met"] and bad["failing"] == [(0, "resnet18", 4), (1, "resnet18", 4)]
    assert bar_summary([row(0, 0.0, 0.0, "digits-tiny")], "d") is None       # no bar for that dataset
    assert bar_summary([row(0, 0.0, 0.0)], "missing") is None


def test_traffic_fit_study_refits_the_default_and_caches_per_cell(tmp_path, monkeypatch):
    spec = {"id": "1", "title": "tiny", "dataset": "digits-tiny", "trigger_labels": [0], "archs": ["small-cnn"],
            "blocks": [4], "taus": [2.0], "detectors": ["default"], "seeds": [0], "target_fprs": [0.05]}
    # 20 % of digits-tiny's 200 test images: 4 labelled inputs per class (5 % leaves 1, too few to cross-fit)
    prof = Profile("test", {"digits-tiny": 3}, {"digits-tiny": 2}, {}, True, "tiny test profile", {"digits-tiny": 0.2})
    from dnnpiracy.experiments import traffic as tf
    reproduce_spec(spec, prof, tmp_path / "results", tmp_path / "cache", progress=False, log=lambda m: None)
    from dnnpiracy.data import load_dataset
    ds = load_dataset("digits-tiny")
    rows = tf.spec_traffic_fit_rows(spec, prof, ds, tmp_path / "cache", target_fpr=0.05, n_traffic=60, repeats=2,
                                    progress=False)
    assert len(rows) == 1 and rows[0]["seeds"] == [0] and rows[0]["n_surrogate"] == 40
    r = rows[0]
    assert r["n_clean"] == 160 and all(0 <= r[f"{m}_{k}_mean"] <= 1 for m in ("surrogate", "threshold", "fit")
                                       for k in ("fpr", "fnr", "auroc"))
    cell = json.loads(next((tmp_path / "cache" / "cells").glob("*.json")).read_text())
    assert r["surrogate_fnr_mean"] == pytest.approx(cell["results"][0]["fnr"], abs=1e-6)   # the table cell's design
    assert len(list((tmp_path / "cache" / "traffic_fit").glob("*.json"))) == 1
    # a second study with the same parameters reads the cache: no target is loaded
    monkeypatch.setattr(tf, "get_target", lambda *a, **k: (_ for _ in ()).throw(AssertionError("recomputed")))
    assert tf.spec_traffic_fit_rows(spec, prof, ds, tmp_path / "cache", target_fpr=0.05, n_traffic=60, repeats=2,
                                    progress=False) == rows
    md = tf.traffic_fit_markdown(rows, {"profile": "test", "target_fpr": 0.05, "n_traffic": 60, "repeats": 2,
                                        "wall_seconds": 0.0, "device": "cpu", "command": "x", "git_commit": "y"})
    assert "| 1 | 0 | small-cnn | 4 |" in md and "default detector" in md
    # a named design instead of the default: only a column of the table, and only a calibrated one
    with pytest.raises(ValueError, match="not a calibrated"):
        tf.spec_traffic_fit_rows(spec, prof, ds, tmp_path / "cache", detector="paper", progress=False)
    assert tf.spec_traffic_fit_rows(spec, prof, ds, tmp_path / "cache", detector="knn-input", progress=False) == []
    md = tf.traffic_fit_markdown(rows, {"profile": "test", "target_fpr": 0.05, "n_traffic": 60, "repeats": 2,
                                        "wall_seconds": 0.0, "device": "cpu", "command": "x", "git_commit": "y",
                                        "detector": "knn-input"})
    assert "detector `knn-input`" in md


def test_cells_with_another_surrogate_share_reuse_the_target(tmp_path, monkeypatch):
    """The surrogate share is the attacker's, not the owner's: a second share reuses the trained target (no
    training) and draws its own split; fresh triggers come from that split's evaluation part, never its surrogate."""
    spec = {"id": "1", "title": "tiny", "dataset": "digits-tiny", "trigger_labels": [0], "archs": ["small-cnn"],
            "blocks": [4], "taus": [2.0], "detectors": ["knn-input"], "seeds": [0], "target_fprs": [0.1]}
    runs = {}
    for share in (0.2, 0.3):
        prof = Profile("test", {"digits-tiny": 2}, {"digits-tiny": 2}, {}, True, "tiny", {"digits-tiny": share})
        runs[share] = reproduce_spec(spec, prof, tmp_path / f"r{share}", tmp_path / "cache", progress=False,
                                     log=lambda m: None)
        if share == 0.2:     # from now on, training anything fails the test
            import dnnpiracy.watermark.embed as embed
            monkeypatch.setattr(embed, "train_classifier", lambda *a, **k: (_ for _ in ()).throw(
                AssertionError("retrained")))
    assert len(list((tmp_path / "cache" / "targets").iterdir())) == 1
    assert len(list((tmp_path / "cache" / "cells").glob("*.json"))) == 2
    assert runs[0.2]["meta"]["surrogate_size"] == 40 and runs[0.3]["meta"]["surrogate_size"] == 60
    assert "Surrogate set: 60 labelled test images" in (tmp_path / "r0.3" / "table1.md").read_text()

    from dnnpiracy.config import TriggerConfig
    from dnnpiracy.data import load_dataset, make_splits
    from dnnpiracy.watermark import fresh_triggers_for
    ds = load_dataset("digits-tiny")
    splits = make_splits(ds.test_y, 0.3, 0)
    fresh = fresh_triggers_for(ds, splits, TriggerConfig(trigger_label=0), n=50)
    assert len(fresh) == 50 and not set(fresh.source_idx.tolist()) & set(splits.surrogate_idx.tolist())
    assert (ds.test_y[fresh.source_idx] != 0).all() and (fresh.labels == 0).all()
    again = fresh_triggers_for(ds, splits, TriggerConfig(trigger_label=0), n=50)
    assert torch.equal(again.images, fresh.images)


def test_the_bar_admits_a_rate_exactly_at_it():
    """3, 3 and 3 misses in 15 triggers over three seeds is a mean FNR of 0.2, which meets Fashion-MNIST's
    FNR <= 0.2 although the floating-point mean is 0.20000000000000004; one more miss does not."""
    import statistics

    from dnnpiracy.experiments.reproduce import bar_summary, within_bar
    mean = statistics.fmean([3 / 15, 3 / 15, 3 / 15])
    assert mean > 0.2 and within_bar(0.01, mean, "fashion-mnist")
    assert not within_bar(0.0, 10 / 45, "fashion-mnist") and not within_bar(0.0101, 0.0, "mnist-10k")
    rows = [{"detector": "d", "target_fpr": 0.01, "dataset": "fashion-mnist", "trigger_label": 3, "arch": "a",
             "blocks": 4, "fpr_mean": 0.001, "fnr_mean": mean}]
    assert bar_summary(rows, "d")["met"]
