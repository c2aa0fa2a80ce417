"""The attacker's pipeline end to end: ``dnnpiracy run`` (watermark, fit the detector, evaluate, report) and
``dnnpiracy detectors`` (the detectors a user chooses between)."""

from __future__ import annotations

import textwrap
from dataclasses import replace
from pathlib import Path

import click

from dnnpiracy.cli import main
from dnnpiracy.cli.options import (
    blocks_option,
    cache_dir_option,
    data_dir_option,
    dataset_option,
    scheme_option,
    trigger_pattern_option,
)
from dnnpiracy.config import STRATEGIES, DetectorConfig, GanConfig, TriggerConfig

# measured once (`time dnnpiracy run --quick`, a fresh cache, Fashion-MNIST) on 2 CPU cores shared with a training
# job; README.md's Quickstart says the same words
QUICK_DURATION = "a few minutes on 2 CPU cores (4 min 42 s measured under load)"
QUICK_HELP = f"smoke run: small CNN, 2 epochs, lr 1e-3; {QUICK_DURATION}"
DETECTORS_WIDTH = 100          # `dnnpiracy detectors` wraps its lines at this many characters


def _link_latest(out: Path) -> None:
    """Point runs/latest at the newest run folder (a symbolic link; a real folder of that name is left alone)."""
    latest = Path("runs") / "latest"
    if latest.exists() and not latest.is_symlink():
        return
    tmp = latest.with_name(".latest.tmp")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(out.resolve(), target_is_directory=True)
    tmp.replace(latest)


@main.command()
@dataset_option
@click.option("--arch", default=None, help="target architecture (default: resnet18, small-cnn with --quick)")
@click.option("--epochs", type=click.IntRange(1, 1000), default=None, help="target training epochs (default 3)")
@click.option("--trigger-label", type=click.IntRange(0, 9), default=0, show_default=True,
              help="the owner's trigger label")
@blocks_option
@trigger_pattern_option
@scheme_option
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
@click.option("--gan-epochs", type=click.IntRange(1, 10000), default=200, show_default=True,
              help="paper detector: DCGAN training epochs")
@click.option("--heatmap-layer", default=None, help="Grad-CAM layer (default: the arch's >= 7x7 stage)")
@click.option("--strategy", type=click.Choice(STRATEGIES), default="uniform-other", show_default=True,
              help="label for flagged queries: uniform (paper), uniform-other, runner-up")
@click.option("--seed", type=int, default=0, show_default=True, help="training, trigger, split and detector seed")
@click.option("--quick", is_flag=True, help=QUICK_HELP)
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="run folder (default: a new runs/<dataset>-<scheme>-<time>/, linked as runs/latest)")
@click.option("--overwrite", is_flag=True, help="allow --out to name a folder that already holds a run")
@cache_dir_option
@data_dir_option
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


def _echo_wrapped(text: str, indent: int) -> None:
    """One entry, wrapped at DETECTORS_WIDTH characters, continuation lines indented by ``indent``."""
    click.echo(textwrap.fill(text, DETECTORS_WIDTH, subsequent_indent=" " * indent, break_on_hyphens=False))


@main.command()
@click.option("--all", "show_all", is_flag=True,
              help="also list the exploratory designs kept for the selection tooling")
def detectors(show_all):
    """List the detectors a user chooses between (--all: every registered name)."""
    from dnnpiracy.attack import DEFAULT_DETECTOR, DETECTORS, USER_DETECTORS
    width = max(map(len, USER_DETECTORS))
    for name, what in USER_DETECTORS.items():
        _echo_wrapped(f"{name:{width}s}  {what}", width + 2)
    click.echo("")
    _echo_wrapped(f"`default` is {DEFAULT_DETECTOR} on every dataset (docs/heldout_protocol.md).", 2)
    rest = [n for n in DETECTORS if n not in USER_DETECTORS]
    if show_all:
        click.echo(f"\n{len(rest)} exploratory designs (docs/detector_selection.md):")
        for name in rest:
            click.echo(f"  {name}")
    else:
        click.echo(f"{len(rest)} exploratory designs more: dnnpiracy detectors --all")
