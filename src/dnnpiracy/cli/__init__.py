"""``dnnpiracy``: the command line.  Each command is a thin layer over the package's functions."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import click

from dnnpiracy.config import STRATEGIES, ConfigError, DetectorConfig, GanConfig, TrainConfig, TriggerConfig

DATASET_CHOICES = ["fashion-mnist", "mnist", "mnist-10k", "digits-tiny"]
SCHEME_CHOICES = ["content", "pattern", "noise", "unrelated", "abstract", "blend", "halfmix", "glyphs"]


def _scheme_option(f):
    return click.option("--scheme", type=click.Choice(SCHEME_CHOICES), default="content", show_default=True,
                        help="the owner's watermark scheme (`dnnpiracy schemes` lists them); content = the paper's "
                             "white discs")(f)


class _Errors(click.Group):
    """Turn the project's own errors into one clear line and exit status 2, never a traceback."""

    def invoke(self, ctx):
        from dnnpiracy.data import DataError
        from dnnpiracy.io import ArtifactError
        try:
            return super().invoke(ctx)
        except (DataError, ArtifactError, ConfigError) as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        except ValueError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)


@click.group(cls=_Errors, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--threads", type=click.IntRange(1, 256), default=None, help="torch CPU threads (default: all cores)")
def main(threads: int | None) -> None:
    """Pirate a watermarked DNN without accuracy loss (and test your watermark against it)."""
    if threads:
        import torch
        torch.set_num_threads(threads)


def _executor_options(f):
    from dnnpiracy.cli.options import executor_options
    return executor_options(f)


def _ray_options(address, cpus, gpus, num_cpus):
    from dnnpiracy.cli.options import ray_options
    return ray_options(address, cpus, gpus, num_cpus)


def _link_latest(out: Path) -> None:
    """Point runs/latest at the newest run folder (a symbolic link; a real folder of that name is left alone)."""
    latest = Path("runs") / "latest"
    if latest.exists() and not latest.is_symlink():
        return
    tmp = latest.with_name(".latest.tmp")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(out.resolve(), target_is_directory=True)
    tmp.replace(latest)


def _data_dir_option(f):
    return click.option("--data-dir", type=click.Path(file_okay=False), envvar="DNNPIRACY_DATA", default=None,
                         help="data folder (default $DNNPIRACY_DATA or ~/.cache/dnnpiracy/data)")(f)


# -------------------------------------------------------------------------------------------------------- data
@main.command()
@click.argument("name", type=click.Choice(DATASET_CHOICES))
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.option("--surrogate-fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              default=DetectorConfig.surrogate_fraction)
@click.option("--seed", type=int, default=0, help="surrogate split seed")
@click.option("--no-download", is_flag=True, help="never download; fail if the files are not local")
@_data_dir_option
def data(name, as_json, surrogate_fraction, seed, no_download, data_dir):
    """Counts per split and class, source path and checksum status of dataset NAME."""
    from dnnpiracy.data import dataset_summary, load_dataset, make_splits
    ds = load_dataset(name, data_dir, download=not no_download)
    summary = dataset_summary(ds, make_splits(ds.test_y, surrogate_fraction, seed))
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(f"{name}: {summary.get('note', '')}")
    click.echo(f"source: {summary['source']}")
    for f, status in summary["checksums"].items():
        click.echo(f"  {f}: {status}")
    click.echo("split        total  " + " ".join(f"{c:>6d}" for c in range(ds.num_classes)))
    for split, n in summary["counts"].items():
        per = summary["per_class"][split]
        click.echo(f"{split:11s} {n:6d}  " + " ".join(f"{c:6d}" for c in per))


# ------------------------------------------------------------------------------------------------------ models
@main.command()
@click.option("--measure", is_flag=True, help="also time a training step (batch 128, Adam) per arch and stem")
@click.option("--arch", "archs", multiple=True, help="architectures to list (default all)")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None, help="write the table as JSON")
def models(measure, archs, json_out):
    """Stage sizes on 28x28 input (and, with --measure, training cost) of every architecture and stem."""
    from dnnpiracy.models.measure import measure_models
    rows = measure_models(list(archs) or None, time_steps=measure, echo=click.echo)
    if json_out:
        from dnnpiracy.io import write_json
        write_json(json_out, rows)


# ---------------------------------------------------------------------------------------------- owner: watermark
@main.command()
@click.option("--dataset", type=click.Choice(DATASET_CHOICES), default="fashion-mnist", show_default=True)
@click.option("--arch", default="resnet18", show_default=True)
@click.option("--stem", type=click.Choice(["imagenet", "nopool", "cifar"]), default="imagenet", show_default=True)
@click.option("--trigger-label", type=click.IntRange(0, 9), default=0, show_default=True)
@click.option("--blocks", type=click.IntRange(1, 16), default=4, show_default=True)
@click.option("--radius", type=click.IntRange(1, 13), default=3, show_default=True)
@click.option("--num-triggers", type=click.IntRange(1, 10000), default=15, show_default=True)
@click.option("--trigger-pattern", type=click.Path(exists=True, dir_okay=False), default=None,
              help="PNG pattern (alpha = mask) stamped instead of the discs (the pattern scheme)")
@_scheme_option
@click.option("--epochs", type=click.IntRange(1, 1000), default=3, show_default=True)
@click.option("--batch-size", type=click.IntRange(1, 65536), default=128, show_default=True)
@click.option("--lr", type=click.FloatRange(0, 10, min_open=True), default=1e-4, show_default=True)
@click.option("--oversample", type=click.IntRange(1, 10000), default=20, show_default=True,
              help="times each trigger is seen per epoch (1 = plain mixing)")
@click.option("--no-watermark", is_flag=True, help="train the same model without triggers (a clean baseline)")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", type=click.Path(file_okay=False), required=True)
@_data_dir_option
def watermark(dataset, arch, stem, trigger_label, blocks, radius, num_triggers, trigger_pattern, scheme, epochs,
              batch_size, lr, oversample, no_watermark, seed, out, data_dir):
    """Owner: train a watermarked target into OUT (model, trigger set, report.json)."""
    from dnnpiracy.data import load_dataset, make_splits
    from dnnpiracy.watermark import embed_watermark
    ds = load_dataset(dataset, data_dir)
    splits = make_splits(ds.test_y, 0.05, 0)
    train = TrainConfig(arch=arch, stem=stem, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                        trigger_oversample=oversample)
    trig = None if no_watermark else TriggerConfig(num_triggers, blocks, radius, trigger_label, seed, trigger_pattern,
                                                   scheme)
    t = embed_watermark(ds, splits, train, trig, out)
    keys = ["test_accuracy", "evaluation_accuracy", "trigger_accuracy", "fresh_trigger_accuracy"]
    click.echo(json.dumps({k: t.report.get(k) for k in keys}, indent=2))
    click.echo(f"wrote {Path(out) / 'report.json'}")


@main.command()
@click.option("--model", "model_dir", type=click.Path(exists=True), required=True,
              help="a model folder (model.safetensors) or file")
@click.option("--triggers", type=click.Path(exists=True, dir_okay=False), required=True)
@click.option("--significance", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.01,
              show_default=True)
@click.option("--json", "as_json", is_flag=True)
def verify(model_dir, triggers, significance, as_json):
    """Owner: query a suspect model with the trigger inputs; print the verdict."""
    from dnnpiracy.training import load_model, predict_labels
    from dnnpiracy.watermark import load_trigger_set
    from dnnpiracy.watermark import verify as verify_fn
    path = Path(model_dir)
    model, meta = load_model(path / "model.safetensors" if path.is_dir() else path)
    ts = load_trigger_set(triggers)
    v = verify_fn(lambda x: predict_labels(model, x), ts.images, ts.labels, meta.get("num_classes", 10),
                  significance)
    from dnnpiracy.cli.options import echo_verification
    echo_verification(v, meta.get("num_classes", 10), significance, as_json)


@main.command("owner-report")
@click.option("--watermarked", type=click.Path(exists=True, file_okay=False), required=True)
@click.option("--clean", type=click.Path(exists=True, file_okay=False), required=True)
@click.option("--out", type=click.Path(dir_okay=False), default="results/owner", show_default=True,
              help="writes OUT.json and OUT.md")
def owner_report(watermarked, clean, out):
    """Owner: accuracy cost of the watermark and verification of a watermarked vs a clean model."""
    from dnnpiracy.evaluation.owner import owner_comparison, owner_markdown
    from dnnpiracy.io import atomic_write_text, git_commit, write_json
    r = owner_comparison(Path(watermarked), Path(clean))
    r["command"] = " ".join(["dnnpiracy", *sys.argv[1:]])
    r["git_commit"] = git_commit()
    write_json(Path(out).with_suffix(".json"), r)
    atomic_write_text(Path(out).with_suffix(".md"), owner_markdown(r))
    click.echo(owner_markdown(r))


# ------------------------------------------------------------------------------------------- attacker: run
@main.command()
@click.option("--dataset", type=click.Choice(DATASET_CHOICES), default="fashion-mnist", show_default=True)
@click.option("--arch", default=None, help="target architecture (default: resnet18, small-cnn with --quick)")
@click.option("--epochs", type=click.IntRange(1, 1000), default=None, help="target training epochs (default 3)")
@click.option("--trigger-label", type=click.IntRange(0, 9), default=0, show_default=True)
@click.option("--blocks", type=click.IntRange(1, 16), default=4, show_default=True)
@click.option("--trigger-pattern", type=click.Path(exists=True, dir_okay=False), default=None,
              help="PNG pattern (alpha = mask) stamped instead of the discs (the pattern scheme)")
@_scheme_option
@click.option("--detector", default="default", show_default=True,
              help="default | paper | any name of `dnnpiracy detectors` | ensemble:SCORER,SCORER,...")
@click.option("--tau", type=click.FloatRange(0, None), default=None,
              help="paper rule margin (default 2 MNIST, 0.65 Fashion-MNIST)")
@click.option("--target-fpr", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.01,
              show_default=True, help="calibrated rule: clean false-positive rate to aim for")
@click.option("--fpr-confidence", type=click.FloatRange(0, 1, max_open=True), default=DetectorConfig.fpr_confidence,
              show_default=True, help="calibrated rule: the FPR stays <= --target-fpr in this share of surrogate "
                                      "draws (0: only on average over draws, plain split conformal)")
@click.option("--traffic", type=click.IntRange(0, None), default=0, show_default=True,
              help="re-set the threshold on this many unlabelled clean queries, held out of the evaluation "
                   "(0: threshold from the surrogate set)")
@click.option("--traffic-use", type=click.Choice(["threshold", "fit"]), default="threshold", show_default=True,
              help="threshold: re-set only the threshold on the traffic; fit: fit the scorer on surrogate + traffic "
                   "(traffic labelled by the target's predictions) and threshold on both")
@click.option("--surrogate-fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              default=DetectorConfig.surrogate_fraction,
              show_default=True, help="share of the test set (stratified) the attacker holds labelled (paper: 5 %)")
@click.option("--gan-epochs", type=click.IntRange(1, 10000), default=200, show_default=True)
@click.option("--heatmap-layer", default=None, help="Grad-CAM layer (default: the arch's >= 7x7 stage)")
@click.option("--strategy", type=click.Choice(STRATEGIES), default="uniform-other", show_default=True,
              help="label for flagged queries: uniform (paper), uniform-other, runner-up")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--quick", is_flag=True, help="smoke run: small CNN, 2 epochs, lr 1e-3 (about 1 minute)")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="run folder (default: a new runs/<dataset>-<scheme>-<time>/, linked as runs/latest)")
@click.option("--overwrite", is_flag=True, help="allow --out to name a folder that already holds a run")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None, envvar="DNNPIRACY_CACHE",
              help="trained-target cache (default $DNNPIRACY_CACHE or ~/.cache/dnnpiracy/runs)")
@_data_dir_option
def run(dataset, arch, epochs, trigger_label, blocks, trigger_pattern, scheme, detector, tau, target_fpr,
        fpr_confidence, traffic, traffic_use, surrogate_fraction, gan_epochs, heatmap_layer, strategy, seed, quick,
        out, overwrite, cache_dir, data_dir):
    """End to end: watermark a target (or reuse it), fit the detector, evaluate; writes OUT/report.json."""
    import time as _time
    link_latest = out is None
    if out is None:
        out = Path("runs") / f"{dataset}-{scheme}-label{trigger_label}-{_time.strftime('%Y%m%d-%H%M%S')}"
    elif (Path(out) / "report.json").exists() and not overwrite:
        raise click.UsageError(f"{out} already holds a run (report.json); choose another --out or pass --overwrite")
    from dnnpiracy.experiments.runner import CPU_TRAIN, QUICK_TRAIN, RunConfig
    from dnnpiracy.experiments.runner import run as run_fn
    base = QUICK_TRAIN if quick else CPU_TRAIN
    train = replace(base, seed=seed, arch=arch or base.arch, epochs=epochs or base.epochs)
    cfg = RunConfig(dataset=dataset, train=train,
                    trigger=TriggerConfig(trigger_label=trigger_label, blocks=blocks, seed=seed,
                                          pattern=trigger_pattern, scheme=scheme),
                    detector=DetectorConfig(detector=detector, tau=tau, target_fpr=target_fpr, seed=seed,
                                            fpr_confidence=fpr_confidence or None,
                                            heatmap_layer=heatmap_layer, gan=GanConfig(epochs=gan_epochs),
                                            traffic=traffic, traffic_use=traffic_use,
                                            surrogate_fraction=surrogate_fraction),
                    strategy=strategy, data_dir=data_dir)
    run_fn(cfg, out, Path(cache_dir) if cache_dir else None)
    if link_latest:
        _link_latest(Path(out))
    click.echo((Path(out) / "summary.md").read_text())
    click.echo(f"wrote {Path(out) / 'report.json'}, summary.md, figure.png")


@main.command()
@click.option("--dataset", type=click.Choice(DATASET_CHOICES), default="fashion-mnist", show_default=True)
@click.option("--arch", default="resnet18", show_default=True)
@click.option("--epochs", type=click.IntRange(1, 1000), default=3, show_default=True)
@click.option("--trigger-label", type=click.IntRange(0, 9), default=0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--detectors", "names", default="paper,knn-heatmap,knn-cam,knn-input,knn-features,mahalanobis-features,"
              "mahalanobis-stages,mass,ensemble-heatmap-features-input,ensemble-stages-input", show_default=True,
              help="comma-separated detector names")
@click.option("--layers", default="default", show_default=True,
              help="comma-separated heatmap layers ('default' = the arch's)")
@click.option("--tau", type=click.FloatRange(0, None), default=None, help="paper rule margin (default per dataset)")
@click.option("--target-fpr", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.01,
              show_default=True)
@click.option("--gan-epochs", type=click.IntRange(1, 10000), default=200, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False), default="results/detectors", show_default=True,
              help="writes OUT.json (rows merged with earlier runs) and OUT.md")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None, envvar="DNNPIRACY_CACHE")
@_data_dir_option
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
    stamp = {"command": " ".join(["dnnpiracy", *sys.argv[1:]]), "git_commit": git_commit(),
             "wall_seconds": _time.perf_counter() - t0,
             "target_test_accuracy": target.report["test_accuracy"],
             "target_trigger_accuracy": target.report["trigger_accuracy"], "epochs": epochs}
    rows = [{**r, **stamp} for r in rows]
    out_path = Path(out)
    write_study(out_path, rows)
    click.echo(f"wrote {out_path.with_suffix('.json')} and {out_path.with_suffix('.md')}")


@main.command()
@click.option("--table", type=click.Choice(["1", "2", "3", "4", "5", "all"]), required=True)
@click.option("--profile", type=click.Choice(["cpu", "paper"]), default="cpu", show_default=True)
@click.option("--out", type=click.Path(file_okay=False), default="results", show_default=True)
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
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None, envvar="DNNPIRACY_CACHE")
@_scheme_option
@_data_dir_option
@_executor_options
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
                               command=" ".join(["dnnpiracy", *sys.argv[1:]]), cached_only=cached_only,
                               fpr_confidence=fpr_confidence or None, only=only, overwrite=overwrite,
                               scheme=scheme, executor=executor,
                               ray_options=_ray_options(ray_address, cpus_per_cell, gpus_per_cell, ray_num_cpus))
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


@main.command("traffic-calibration")
@click.option("--tables", default="1,2,3,4", show_default=True, help="comma-separated tables among 1-4")
@click.option("--profile", type=click.Choice(["cpu", "paper"]), default="cpu", show_default=True)
@click.option("--target-fpr", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.01,
              show_default=True)
@click.option("--n-traffic", type=click.IntRange(1, None), default=500, show_default=True,
              help="unlabelled clean queries the threshold is calibrated on")
@click.option("--repeats", type=click.IntRange(1, None), default=200, show_default=True, help="random draws per cell")
@click.option("--out", type=click.Path(dir_okay=False), default="results/traffic_calibration", show_default=True,
              help="writes OUT.md and OUT.json")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None, envvar="DNNPIRACY_CACHE")
@_data_dir_option
def traffic_calibration(tables, profile, target_fpr, n_traffic, repeats, out, cache_dir, data_dir):
    """Re-threshold the calibrated detectors of finished `reproduce` cells on unlabelled traffic (from cached
    scores: trains nothing) and compare with the surrogate-calibrated threshold."""
    from dnnpiracy.experiments.traffic import write_traffic_study
    chosen = _study_tables(tables)
    out = Path(out)
    try:
        res = write_traffic_study(chosen, profile, out, Path(cache_dir) if cache_dir else None, data_dir, target_fpr,
                                  n_traffic, repeats, command=" ".join(["dnnpiracy", *sys.argv[1:]]))
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{len(res['rows'])} rows -> {out.with_suffix('.md')}")


@main.command("traffic-fit")
@click.option("--tables", default="1,2,4", show_default=True, help="comma-separated tables among 1-4")
@click.option("--profile", type=click.Choice(["cpu", "paper"]), default="cpu", show_default=True)
@click.option("--target-fpr", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.01,
              show_default=True)
@click.option("--n-traffic", type=click.IntRange(1, None), default=500, show_default=True,
              help="unlabelled clean queries the detector is fitted and thresholded on, beside the surrogate set")
@click.option("--repeats", type=click.IntRange(1, None), default=10, show_default=True,
              help="random traffic draws per cell (each refits the scorer)")
@click.option("--max-clean", type=click.IntRange(2, None), default=None,
              help="probe only a seeded subset of this many clean evaluation inputs per cell (Fashion-MNIST has 9,500)")
@click.option("--out", type=click.Path(dir_okay=False), default="results/traffic_fit", show_default=True,
              help="writes OUT.md and OUT.json")
@click.option("--detector", default="default", show_default=True,
              help="the calibrated design whose finished cells are refitted (a column of the tables)")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None, envvar="DNNPIRACY_CACHE")
@_data_dir_option
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
                                      command=" ".join(["dnnpiracy", *sys.argv[1:]]), detector=detector)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{len(res['rows'])} rows -> {out.with_suffix('.md')}")


@main.command()
@click.option("--all", "show_all", is_flag=True,
              help="also list the exploratory designs kept for the selection tooling")
def detectors(show_all):
    """List the detectors a user chooses between (--all: every registered name)."""
    from dnnpiracy.attack import DEFAULT_DETECTOR, DETECTORS, USER_DETECTORS
    width = max(map(len, USER_DETECTORS))
    for name, what in USER_DETECTORS.items():
        click.echo(f"{name:{width}s}  {what}")
    click.echo(f"\n`default` is {DEFAULT_DETECTOR} on every dataset (docs/heldout_protocol.md).")
    rest = [n for n in DETECTORS if n not in USER_DETECTORS]
    if show_all:
        click.echo(f"\n{len(rest)} exploratory designs (docs/detector_selection.md):")
        for name in rest:
            click.echo(f"  {name}")
    else:
        click.echo(f"{len(rest)} exploratory designs more: dnnpiracy detectors --all")


# ------------------------------------------------------------------------------------------------ bench
@main.command()
@click.option("--arch", default="resnet34", show_default=True, help="architecture (random init, seed 0)")
@click.option("--target", "target_dir", type=click.Path(exists=True), default=None,
              help="benchmark a trained target instead (folder with model.safetensors); overrides --arch")
@click.option("--detector", "detector_names", multiple=True,
              help="detector to benchmark, repeatable (default: default and paper)")
@click.option("--batch-size", "batch_sizes", type=click.IntRange(1, 65536), multiple=True,
              help="batch size, repeatable (default: 1 and 256)")
@click.option("--dataset", type=click.Choice(DATASET_CHOICES), default="fashion-mnist", show_default=True,
              help="queries and surrogate set (falls back to digits-tiny if unavailable)")
@click.option("--seconds", type=click.FloatRange(0, None, min_open=True), default=None,
              help="time budget per measurement (default 3, 0.5 with --quick)")
@click.option("--rounds", type=click.IntRange(1, 100), default=3, show_default=True,
              help="interleaved rounds per measurement (the median is reported)")
@click.option("--quick", is_flag=True, help="short measurements; the paper's DCGANs train 5 epochs, not 200")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None, help="write the result as JSON")
@click.option("--md", "md_out", type=click.Path(dir_okay=False), default=None, help="write the table as Markdown")
@_data_dir_option
def bench(arch, target_dir, detector_names, batch_sizes, dataset, seconds, rounds, quick, json_out, md_out,
          data_dir):
    """Serving and fitting cost: the pirated classifier against the bare model and a Captum-based pipeline."""
    from dnnpiracy.bench import bench_markdown, run_bench
    res = run_bench(arch=arch, detectors=tuple(detector_names) or ("default", "paper"),
                    batch_sizes=tuple(batch_sizes) or (1, 256), quick=quick, target_dir=target_dir,
                    data_dir=data_dir, seconds_per_measure=seconds, echo=lambda m: click.echo(m, err=True),
                    dataset=dataset, rounds=rounds, command=["dnnpiracy", *sys.argv[1:]])
    from dnnpiracy.cli.options import emit_report
    emit_report(bench_markdown(res), res, json_out, md_out)


from dnnpiracy.cli import schemes as _schemes  # noqa: E402,F401  (registers `schemes` and `benchmark`)
from dnnpiracy.cli import serve as _serve  # noqa: E402,F401  (fit-detector, serve, bench-http, verify --url)

if __name__ == "__main__":  # pragma: no cover
    main()
