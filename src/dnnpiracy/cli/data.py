"""``dnnpiracy data`` and ``dnnpiracy models``: what is on this machine (a dataset, the model zoo) before any run."""

from __future__ import annotations

import json

import click

from dnnpiracy.cli import main
from dnnpiracy.cli.options import DATASET_CHOICES, data_dir_option
from dnnpiracy.config import DetectorConfig


@main.command()
@click.argument("name", type=click.Choice(DATASET_CHOICES))
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.option("--surrogate-fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              default=DetectorConfig.surrogate_fraction, show_default=True,
              help="share of the test set (stratified) counted as the attacker's surrogate set")
@click.option("--seed", type=int, default=0, show_default=True, help="surrogate split seed")
@click.option("--no-download", is_flag=True, help="never download; fail if the files are not local")
@data_dir_option
def data(name, as_json, surrogate_fraction, seed, no_download, data_dir):
    """Counts per split and class, source path and checksum status of dataset NAME (fashion-mnist, mnist,
    mnist-10k or digits-tiny)."""
    from dnnpiracy.data import dataset_summary, load_dataset, make_splits
    ds = load_dataset(name, data_dir, download=not no_download)
    summary = dataset_summary(ds, make_splits(ds.test_y, surrogate_fraction, seed))
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    note = summary.get("note") or ""
    click.echo(note if note.startswith(f"{name}:") else f"{name}: {note}".rstrip(": "))
    click.echo(f"source: {summary['source']}")
    for f, status in summary["checksums"].items():
        click.echo(f"  {f}: {status}")
    click.echo("split        total  " + " ".join(f"{c:>6d}" for c in range(ds.num_classes)))
    for split, n in summary["counts"].items():
        per = summary["per_class"][split]
        click.echo(f"{split:11s} {n:6d}  " + " ".join(f"{c:6d}" for c in per))


@main.command()
@click.option("--measure", is_flag=True, help="also time a training step (batch 128, Adam) per arch and stem")
@click.option("--arch", "archs", multiple=True, help="architectures to list (repeatable; default all)")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None, help="write the table as JSON")
def models(measure, archs, json_out):
    """Stage sizes on 28x28 input (and, with --measure, training cost) of every architecture and stem."""
    from dnnpiracy.models.measure import measure_models
    rows = measure_models(list(archs) or None, time_steps=measure, echo=click.echo)
    if json_out:
        from dnnpiracy.io import write_json
        write_json(json_out, rows)
