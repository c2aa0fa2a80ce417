"""The experiments behind the results: ``dnnpiracy study`` (every detector on one target), ``reproduce`` (the paper's
Tables I-V) and the traffic studies ``traffic-calibration`` and ``traffic-fit`` (from finished table cells)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import click

from dnnpiracy.cli import main
from dnnpiracy.cli.options import (
    cache_dir_option,
    command_line,
    data_dir_option,
    dataset_option,
    executor_options,
    ray_options,
    scheme_option,
)
from dnnpiracy.config import DetectorConfig, GanConfig, TriggerConfig

STUDY_DETECTORS = ("paper,knn-heatmap,knn-cam,knn-input,knn-features,mahalanobis-features,mahalanobis-stages,mass,"
                   "ensemble-heatmap-features-input,ensemble-stages-input")
PROFILE_HELP = "cpu (ResNet-18, few epochs) or paper (the paper's settings; a GPU)"
TARGET_FPR_HELP = "calibrated rule: clean false-positive rate to aim for"


@main.command()
@dataset_option
@click.option("--arch", default="resnet18", show_default=True, help="target architecture")
@click.option("--epochs", type=click.IntRange(1, 1000), default=3, show_default=True, help="target training epochs")
@click.option("--trigger-label", type=click.IntRange(0, 9), default=0, show_default=True,
              help="the owner's trigger label")
@click.option("--seed", type=int, default=0, show_default=True, help="training, trigger, split and detector seed")
@click.option("--detectors", "names", default=STUDY_DETECTORS, show_default=True,
              help="comma-separated detector names")
@click.option("--layers", default="default", show_default=True,
              help="comma-separated heatmap layers ('default' = the arch's)")
@click.option("--tau", type=click.FloatRange(0, None), default=None, help="paper rule margin (default per dataset)")
@click.option("--target-fpr", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.01,
              show_default=True, help=TARGET_FPR_HELP)
@click.option("--gan-epochs", type=click.IntRange(1, 10000), default=200, show_default=True,
              help="paper detector: DCGAN training epochs")
@click.option("--out", type=click.Path(dir_okay=False), default="results/studies/detectors", show_default=True,
              help="writes OUT.json (rows merged with earlier runs) and OUT.md")
@cache_dir_option
@data_dir_option
def study(dataset, arch, epochs, trigger_label, seed, names, layers, tau, target_fpr, gan_epochs, out, cache_dir,
          data_dir):
    """Detector study: every detector x heatmap layer on one (cached) target; rows go to OUT.json / OUT.md."""
    import time as _time

    from dnnpiracy.config import paper_tau
    from dnnpiracy.data import load_dataset, make_splits
    from dnnpiracy.experiments.runner import CPU_TRAIN, get_target
    from dnnpiracy.experiments.study import study_target, write_study
    from dnnpiracy.io import git_commit
    t0 = _time.perf_counter()
    ds = load_dataset(dataset, data_dir)
    splits = make_splits(ds.test_y, 0.05, seed)
    train = replace(CPU_TRAIN, arch=arch, epochs=epochs, seed=seed)
    target = get_target(ds, splits, train, TriggerConfig(trigger_label=trigger_label, seed=seed),
                        Path(cache_dir) if cache_dir else None)
    tau = tau if tau is not None else paper_tau(dataset)
    base = DetectorConfig(target_fpr=target_fpr, seed=seed, gan=GanConfig(epochs=gan_epochs))
    layer_list = [None if x == "default" else x for x in layers.split(",")]
    rows = study_target(target, ds, splits, names.split(","), layer_list, base, tau, log=click.echo)
    stamp = {"command": command_line(), "git_commit": git_commit(),
             "wall_seconds": _time.perf_counter() - t0,
             "target_test_accuracy": target.report["test_accuracy"],
             "target_trigger_accuracy": target.report["trigger_accuracy"], "epochs": epochs}
    rows = [{**r, **stamp} for r in rows]
    out_path = Path(out)
    write_study(out_path, rows)
    click.echo(f"wrote {out_path.with_suffix('.json')} and {out_path.with_suffix('.md')}")


@main.command()
@click.option("--table", type=click.Choice(["1", "2", "3", "4", "5", "all"]), required=True,
              help="the paper's table (I-V) to reproduce, or all of them")
@click.option("--profile", type=click.Choice(["cpu", "paper"]), default="cpu", show_default=True, help=PROFILE_HELP)
@click.option("--out", type=click.Path(file_okay=False), default="results/tables", show_default=True,
              help="writes OUT/tableN.md and .json, and OUT/figures/")
@click.option("--max-cells", type=click.IntRange(1, None), default=None, help="stop after this many cells")
@click.option("--cached-only", is_flag=True, help="render from the finished (cached) cells alone; compute nothing")
@click.option("--fpr-confidence", type=click.FloatRange(0, 1, max_open=True), default=DetectorConfig.fpr_confidence,
              show_default=True, help="calibrated rule: FPR <= target in this share of surrogate draws (0: on "
                                      "average only)")
@click.option("--arch", "archs", multiple=True, help="run only the cells of this architecture (repeatable); to split "
              "a table over processes or machines")
@click.option("--seed", "seeds", type=int, multiple=True, help="run only the cells of this seed (repeatable)")
@click.option("--blocks", "blocks", type=click.IntRange(1, 4), multiple=True,
              help="run only the cells with this many blocks (repeatable)")
@click.option("--trigger-label", "labels", type=click.IntRange(0, None), multiple=True,
              help="run only the cells of this trigger label (repeatable)")
@click.option("--detector", "detectors", multiple=True,
              help="run only the cells of this detector column (repeatable; 'default' = the dataset's default)")
@click.option("--overwrite", is_flag=True, help="write OUT/tableN.* even when they hold cells this invocation will not "
              "end with (an empty or partial cache, another subset of the grid, another profile)")
@cache_dir_option
@scheme_option
@data_dir_option
@executor_options
def reproduce(table, profile, out, max_cells, cached_only, fpr_confidence, archs, seeds, blocks, labels, detectors,
              overwrite, cache_dir, scheme, data_dir, executor, ray_address, cpus_per_cell, gpus_per_cell,
              ray_num_cpus):
    """Reproduce the paper's Table N (cached, resumable): writes OUT/tableN.md and .json.

    --arch/--seed/--blocks/--trigger-label/--detector run (and render) a subset of the grid; merge the caches and
    render the whole table with --cached-only."""
    from dnnpiracy.attack import resolve_spec
    from dnnpiracy.experiments.reproduce import TABLES, CellFilter
    from dnnpiracy.experiments.reproduce import reproduce as reproduce_fn
    for name in detectors:
        try:
            resolve_spec(name)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--detector") from exc
    only = CellFilter(archs=frozenset(archs), seeds=frozenset(seeds), blocks=frozenset(blocks),
                      labels=frozenset(labels), detectors=frozenset(detectors))
    for t in (TABLES if table == "all" else (table,)):
        try:
            res = reproduce_fn(t, profile, Path(out), Path(cache_dir) if cache_dir else None, data_dir, max_cells,
                               command=command_line(), cached_only=cached_only,
                               fpr_confidence=fpr_confidence or None, only=only, overwrite=overwrite,
                               scheme=scheme, executor=executor,
                               ray_options=ray_options(ray_address, cpus_per_cell, gpus_per_cell, ray_num_cpus))
        except ValueError as exc:
            raise click.ClickException(str(exc)) from exc
        click.echo(f"table {t}: {res['meta']['cells_done']}/{res['meta']['cells_total']} cells -> "
                   f"{Path(out) / f'table{t}.md'}")


def _study_tables(tables: str) -> list[str]:
    """--tables of the traffic studies: a comma-separated subset of Tables I-IV (Table V sweeps thresholds)."""
    chosen = [t.strip() for t in tables.split(",") if t.strip()]
    if not chosen or any(t not in ("1", "2", "3", "4") for t in chosen):
        raise click.BadParameter(f"tables must be among 1,2,3,4; got {tables!r}", param_hint="--tables")
    return chosen


def traffic_options(tables: str, traffic_help: str):
    """The options both traffic studies take: which tables, the profile, the target FPR and the traffic size."""
    def wrap(f):
        for opt in reversed([
                click.option("--tables", default=tables, show_default=True, help="comma-separated tables among 1-4"),
                click.option("--profile", type=click.Choice(["cpu", "paper"]), default="cpu", show_default=True,
                             help=PROFILE_HELP),
                click.option("--target-fpr", type=click.FloatRange(0, 1, min_open=True, max_open=True),
                             default=0.01, show_default=True, help=TARGET_FPR_HELP),
                click.option("--n-traffic", type=click.IntRange(1, None), default=500, show_default=True,
                             help=traffic_help)]):
            f = opt(f)
        return f
    return wrap


@main.command("traffic-calibration")
@traffic_options("1,2,3,4", "unlabelled clean queries the threshold is calibrated on")
@click.option("--repeats", type=click.IntRange(1, None), default=200, show_default=True, help="random draws per cell")
@click.option("--out", type=click.Path(dir_okay=False), default="results/studies/traffic_calibration",
              show_default=True, help="writes OUT.md and OUT.json")
@cache_dir_option
@data_dir_option
def traffic_calibration(tables, profile, target_fpr, n_traffic, repeats, out, cache_dir, data_dir):
    """Re-threshold the calibrated detectors of finished `reproduce` cells on unlabelled traffic (from cached
    scores: trains nothing) and compare with the surrogate-calibrated threshold."""
    from dnnpiracy.experiments.traffic import write_traffic_study
    chosen = _study_tables(tables)
    out = Path(out)
    try:
        res = write_traffic_study(chosen, profile, out, Path(cache_dir) if cache_dir else None, data_dir, target_fpr,
                                  n_traffic, repeats, command=command_line())
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{len(res['rows'])} rows -> {out.with_suffix('.md')}")


@main.command("traffic-fit")
@traffic_options("1,2,4", "unlabelled clean queries the detector is fitted and thresholded on, beside the surrogate "
                          "set")
@click.option("--repeats", type=click.IntRange(1, None), default=10, show_default=True,
              help="random traffic draws per cell (each refits the scorer)")
@click.option("--max-clean", type=click.IntRange(2, None), default=None,
              help="probe only a seeded subset of this many clean evaluation inputs per cell (Fashion-MNIST has 9,500)")
@click.option("--out", type=click.Path(dir_okay=False), default="results/studies/traffic_fit", show_default=True,
              help="writes OUT.md and OUT.json")
@click.option("--detector", default="default", show_default=True,
              help="the calibrated design whose finished cells are refitted (a column of the tables)")
@cache_dir_option
@data_dir_option
def traffic_fit(tables, profile, target_fpr, n_traffic, repeats, max_clean, out, detector, cache_dir, data_dir):
    """Refit a detector (the default) of finished `reproduce` cells on surrogate + unlabelled traffic (probes the
    cached targets: trains nothing), beside the surrogate-fitted detector thresholded on the surrogate set or on the
    traffic."""
    from dnnpiracy.experiments.traffic import write_traffic_fit_study
    chosen = _study_tables(tables)
    out = Path(out)
    try:
        res = write_traffic_fit_study(chosen, profile, out, Path(cache_dir) if cache_dir else None, data_dir,
                                      target_fpr, n_traffic, repeats, max_clean,
                                      command=command_line(), detector=detector)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{len(res['rows'])} rows -> {out.with_suffix('.md')}")
