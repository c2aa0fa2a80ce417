"""The owner's test on a model that is *not* a copy: the unwatermarked target of the same dataset and seed, queried
with each scheme's embedded triggers.  'pirated' there is a false claim, so a scheme whose test says it has no
evidence (frontier stitching's labels are the true classes, which any good model gives).

Stored in each benchmark cell as ``independent_verification`` (added to cached cells that lack it, from the cached
targets; a cell whose targets are not in the cache is left as it is)."""

from __future__ import annotations

from pathlib import Path

from dnnpiracy.io import git_commit, read_json, write_json
from dnnpiracy.training import load_model, predict_labels
from dnnpiracy.watermark import load_trigger_set, verification_chance, verify

KEY = "independent_verification"


def independent_verdict(ds, target_dir: Path, clean_dir: Path, arch: str) -> dict | None:
    """Verify the unwatermarked model in ``clean_dir`` with the triggers of the target in ``target_dir``; None when
    either is not there."""
    model_file, trig_file = clean_dir / "model.safetensors", target_dir / "triggers.safetensors"
    if not (model_file.exists() and trig_file.exists()):
        return None
    model, _ = load_model(model_file, arch=arch, dataset=ds.name)
    trig = load_trigger_set(trig_file)
    v = verify(lambda q: predict_labels(model, q), trig.images, trig.labels,
               chance=verification_chance(trig.config, ds.num_classes))
    return {**v.to_dict(), "model": "the unwatermarked target of the same dataset and seed", "git_commit": git_commit()}


def annotate_grid(grid: dict, cache_dir: Path, log=print) -> int:
    """Add ``independent_verification`` to every cached cell of ``grid`` that lacks it (one verdict per target, written
    into each of its cells atomically).  Returns the number of cells annotated."""
    from dnnpiracy.experiments.benchmark import BenchCell, _dataset, cell_path, designs, grid_targets
    from dnnpiracy.experiments.runner import target_key
    done = 0
    for t in grid_targets(grid):
        if t.scheme is None:
            continue
        paths = [p for p in (cell_path(cache_dir, BenchCell(t, d)) for d in designs(grid, t.dataset)) if p.exists()]
        todo = [p for p in paths if KEY not in read_json(p)]
        if not todo:
            continue
        ds = _dataset(t.dataset)
        splits = t.target_splits(ds)
        verdict = independent_verdict(
            ds, cache_dir / "targets" / target_key(ds.name, t.train, t.trigger_config(), splits),
            cache_dir / "targets" / target_key(ds.name, t.train, None, splits), t.train.arch)
        if verdict is None:
            continue
        for p in todo:
            write_json(p, {**read_json(p), KEY: verdict})
        done += len(todo)
    if done:
        log(f"owner's test on the unwatermarked targets added to {done} cells")
    return done
