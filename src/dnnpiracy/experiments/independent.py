"""The owner's test on a model that is *not* a copy: the grid's unwatermarked target of the same dataset trained with
the *next* seed of the grid (cyclically), queried with each scheme's embedded triggers.  'pirated' there is a false
claim.  Another seed, not the same one: frontier stitching crafts its keys against the same seed's unwatermarked
model, which its true adversaries fool by construction.

Stored in each benchmark cell as ``independent_verification`` (added to, or brought up to date in, cached cells
from the cached targets; a cell whose targets are not in the cache is left as it is)."""

from __future__ import annotations

from pathlib import Path

from dnnpiracy.io import git_commit, read_json, write_json
from dnnpiracy.training import load_model, predict_labels
from dnnpiracy.watermark import load_trigger_set, verification_chance, verify

KEY = "independent_verification"
CLEAN = "clean_baseline"      # the same seed's unwatermarked target's accuracy, so a render needs no target cache


def independent_verdict(ds, target_dir: Path, clean_dir: Path, arch: str, model_seed: int) -> dict | None:
    """Verify the unwatermarked model in ``clean_dir`` with the triggers of the target in ``target_dir``; None when
    either is not there."""
    model_file, trig_file = clean_dir / "model.safetensors", target_dir / "triggers.safetensors"
    if not (model_file.exists() and trig_file.exists()):
        return None
    model, _ = load_model(model_file, arch=arch, dataset=ds.name)
    trig = load_trigger_set(trig_file)
    v = verify(lambda q: predict_labels(model, q), trig.images, trig.labels,
               chance=verification_chance(trig.config, ds.num_classes))
    return {**v.to_dict(), "model": "the grid's unwatermarked target of the same dataset, another seed",
            "model_seed": model_seed, "git_commit": git_commit()}


def annotate_grid(grid: dict, cache_dir: Path, log=print) -> int:
    """Add ``independent_verification`` to every cached cell of ``grid`` that lacks it or holds another model's (one
    verdict per target, written into each of its cells atomically).  Returns the number of cells written."""
    from dnnpiracy.experiments.benchmark import BenchCell, _dataset, cell_path, designs, grid_targets, make_target
    from dnnpiracy.experiments.runner import target_key
    seeds = list(grid["seeds"])
    done = 0
    for t in grid_targets(grid):
        if t.scheme is None:
            continue
        other = seeds[(seeds.index(t.seed) + 1) % len(seeds)]
        cells = {p: read_json(p) for p in (cell_path(cache_dir, BenchCell(t, d)) for d in designs(grid, t.dataset))
                 if p.exists()}
        todo = [p for p, c in cells.items() if c.get(KEY, {}).get("model_seed") != other or CLEAN not in c]
        if not todo:
            continue
        ds = _dataset(t.dataset)
        same = cache_dir / "targets" / target_key(ds.name, t.train, None, t.target_splits(ds)) / "report.json"
        baseline = None
        if same.exists():
            r = read_json(same)
            baseline = {"seed": t.seed, "test_accuracy": r["test_accuracy"], "wall_seconds": r.get("wall_seconds", 0.0)}
        clean = make_target(grid, t.dataset, None, other, grid["trigger_labels"][seeds.index(other)])
        verdict = independent_verdict(
            ds, cache_dir / "targets" / target_key(ds.name, t.train, t.trigger_config(), t.target_splits(ds)),
            cache_dir / "targets" / target_key(ds.name, clean.train, None, clean.target_splits(ds)), t.train.arch,
            other)
        if verdict is None:
            continue
        for p in todo:
            write_json(p, {**cells[p], KEY: verdict, **({CLEAN: baseline} if baseline else {})})
        done += len(todo)
    if done:
        log(f"owner's test on an unwatermarked target of another seed written to {done} cells")
    return done
