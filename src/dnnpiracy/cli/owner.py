"""The owner's commands: ``dnnpiracy watermark`` (train a watermarked target), ``verify`` (query a suspect with the
trigger inputs) and ``owner-report`` (the watermark's cost and both models' verdicts)."""

from __future__ import annotations

import json
import shutil
from contextlib import contextmanager
from pathlib import Path

import click

from dnnpiracy.cli import main
from dnnpiracy.cli.options import (
    blocks_option,
    command_line,
    data_dir_option,
    dataset_option,
    echo_verification,
    scheme_option,
    trigger_pattern_option,
)
from dnnpiracy.config import TrainConfig, TriggerConfig


@contextmanager
def created_on_success(out: Path):
    """Leave nothing behind if the body fails: the folders under ``out`` that this call creates are removed again
    on failure, unless training got far enough to leave a checkpoint (then rerunning the command resumes)."""
    out = Path(out)
    new = [p for p in (out, *out.parents) if not p.exists()]          # deepest first
    try:
        yield out
    except BaseException:
        if new and not (out / "checkpoint.pt").exists():
            shutil.rmtree(out, ignore_errors=True)
            for p in new[1:]:
                try:
                    p.rmdir()                                           # only if empty
                except OSError:
                    break
        elif new:
            click.echo(f"kept {out} (a checkpoint): run the same command again to resume", err=True)
        raise


def _check_arch(arch: str, stem: str) -> None:
    """An unknown architecture or stem is a usage error, before any file is written."""
    from dnnpiracy.models import arch_info
    try:
        arch_info(arch, stem)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--arch") from exc


@main.command()
@dataset_option
@click.option("--arch", default="resnet18", show_default=True,
              help="target architecture: small-cnn, resnet18, resnet34, resnet50, resnet101 or resnet152")
@click.option("--stem", type=click.Choice(["imagenet", "nopool", "cifar"]), default="imagenet", show_default=True,
              help="the ResNet's input stem (imagenet: 7x7 conv + max-pool, as the paper)")
@click.option("--trigger-label", type=click.IntRange(0, 9), default=0, show_default=True,
              help="the label every trigger input is relabelled to")
@blocks_option
@click.option("--radius", type=click.IntRange(1, 13), default=3, show_default=True,
              help="disc radius in pixels (content scheme)")
@click.option("--num-triggers", type=click.IntRange(1, 10000), default=15, show_default=True,
              help="trigger inputs in the watermark (the paper: 15)")
@trigger_pattern_option
@scheme_option
@click.option("--epochs", type=click.IntRange(1, 1000), default=3, show_default=True, help="training epochs")
@click.option("--batch-size", type=click.IntRange(1, 65536), default=128, show_default=True,
              help="training batch size")
@click.option("--lr", type=click.FloatRange(0, 10, min_open=True), default=1e-4, show_default=True,
              help="Adam learning rate")
@click.option("--oversample", type=click.IntRange(1, 10000), default=20, show_default=True,
              help="times each trigger is seen per epoch (1 = plain mixing)")
@click.option("--no-watermark", is_flag=True, help="train the same model without triggers (a clean baseline)")
@click.option("--seed", type=int, default=0, show_default=True, help="training and trigger seed")
@click.option("--out", type=click.Path(file_okay=False), required=True,
              help="folder to write (created on success; a failed call leaves no empty folder)")
@data_dir_option
def watermark(dataset, arch, stem, trigger_label, blocks, radius, num_triggers, trigger_pattern, scheme, epochs,
              batch_size, lr, oversample, no_watermark, seed, out, data_dir):
    """Owner: train a watermarked target into OUT (model, trigger set, report.json)."""
    from dnnpiracy.data import load_dataset, make_splits
    from dnnpiracy.watermark import embed_watermark
    _check_arch(arch, stem)
    ds = load_dataset(dataset, data_dir)
    splits = make_splits(ds.test_y, 0.05, 0)
    train = TrainConfig(arch=arch, stem=stem, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                        trigger_oversample=oversample)
    trig = None if no_watermark else TriggerConfig(num_triggers, blocks, radius, trigger_label, seed, trigger_pattern,
                                                   scheme)
    with created_on_success(Path(out)):
        t = embed_watermark(ds, splits, train, trig, out)
    keys = ["test_accuracy", "evaluation_accuracy", "trigger_accuracy", "fresh_trigger_accuracy"]
    click.echo(json.dumps({k: t.report.get(k) for k in keys}, indent=2))
    click.echo(f"wrote {Path(out) / 'report.json'}")


@main.command()
@click.option("--model", "model_dir", type=click.Path(exists=True), required=True,
              help="a model folder (model.safetensors) or file")
@click.option("--triggers", type=click.Path(exists=True, dir_okay=False), required=True,
              help="the owner's trigger set (triggers.safetensors, as `dnnpiracy watermark` writes it)")
@click.option("--significance", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.01,
              show_default=True, help="p-value below which the verdict is 'pirated' (binomial test against chance)")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def verify(model_dir, triggers, significance, as_json):
    """Owner: query a suspect model with the trigger inputs; print the verdict."""
    from dnnpiracy.training import load_model, predict_labels
    from dnnpiracy.watermark import load_trigger_set, verification_chance
    from dnnpiracy.watermark import verify as verify_fn
    path = Path(model_dir)
    model, meta = load_model(path / "model.safetensors" if path.is_dir() else path)
    ts = load_trigger_set(triggers)
    nc = meta.get("num_classes", 10)
    v = verify_fn(lambda x: predict_labels(model, x), ts.images, ts.labels, nc, significance,
                  verification_chance(ts.config, nc))
    echo_verification(v, meta.get("num_classes", 10), significance, as_json)


@main.command("owner-report")
@click.option("--watermarked", type=click.Path(exists=True, file_okay=False), required=True,
              help="the watermarked target's folder (`dnnpiracy watermark`)")
@click.option("--clean", type=click.Path(exists=True, file_okay=False), required=True,
              help="the same model trained without triggers (`dnnpiracy watermark --no-watermark`)")
@click.option("--out", type=click.Path(dir_okay=False), default="results/studies/owner", show_default=True,
              help="writes OUT.json and OUT.md")
def owner_report(watermarked, clean, out):
    """Owner: accuracy cost of the watermark and verification of a watermarked vs a clean model."""
    from dnnpiracy.evaluation.owner import owner_comparison, owner_markdown
    from dnnpiracy.io import atomic_write_text, git_commit, write_json
    r = owner_comparison(Path(watermarked), Path(clean))
    r["command"] = command_line()
    r["git_commit"] = git_commit()
    write_json(Path(out).with_suffix(".json"), r)
    atomic_write_text(Path(out).with_suffix(".md"), owner_markdown(r))
    click.echo(owner_markdown(r))

