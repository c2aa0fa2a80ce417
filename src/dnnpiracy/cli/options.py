"""Options shared by several commands (no import of the command group here, so any command module can use them)."""

from __future__ import annotations

import sys

import click

DATASET_CHOICES = ["fashion-mnist", "mnist", "mnist-10k", "digits-tiny"]
SCHEME_CHOICES = ["content", "pattern", "noise", "unrelated", "abstract", "blend", "halfmix", "glyphs", "frontier",
                  "ewe"]


def command_line() -> str:
    """This invocation as one string (``dnnpiracy ...``), for the provenance of a report."""
    return " ".join(["dnnpiracy", *sys.argv[1:]])


def scheme_option(f):
    return click.option("--scheme", type=click.Choice(SCHEME_CHOICES), default="content", show_default=True,
                        help="the owner's watermark scheme (`dnnpiracy schemes` lists them); content = the paper's "
                             "white discs")(f)


def blocks_option(f):
    return click.option("--blocks", type=click.IntRange(1, 16), default=4, show_default=True,
                        help="white discs stamped per trigger input (content scheme)")(f)


def trigger_pattern_option(f):
    return click.option("--trigger-pattern", type=click.Path(exists=True, dir_okay=False), default=None,
                        help="PNG pattern (alpha = mask) stamped instead of the discs (the pattern scheme)")(f)


def data_dir_option(f):
    return click.option("--data-dir", type=click.Path(file_okay=False), envvar="DNNPIRACY_DATA", default=None,
                        help="data folder (default $DNNPIRACY_DATA or ~/.cache/dnnpiracy/data)")(f)


def cache_dir_option(f):
    return click.option("--cache-dir", type=click.Path(file_okay=False), default=None, envvar="DNNPIRACY_CACHE",
                        help="trained-target and cell cache (default $DNNPIRACY_CACHE or ~/.cache/dnnpiracy/runs)")(f)


def dataset_option(f):
    return click.option("--dataset", type=click.Choice(DATASET_CHOICES), default="fashion-mnist", show_default=True,
                        help="the dataset (`dnnpiracy data NAME` says whether it is there)")(f)


def executor_options(f):
    """--executor local|ray and the Ray resources of one job (one target and its cells)."""
    for opt in reversed([
        click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
                     help="run the grid's jobs (one per target) in this process, or as Ray tasks (pip install "
                          "-e '.[ray]')"),
        click.option("--ray-address", default=None,
                     help="join a running Ray cluster ('auto' or 'ray://HOST:PORT'); default: a local instance"),
        click.option("--cpus-per-cell", type=click.FloatRange(0, None, min_open=True), default=1.0,
                     show_default=True, help="Ray: CPUs per job (also its torch threads)"),
        click.option("--gpus-per-cell", type=click.FloatRange(0, None), default=0.0, show_default=True,
                     help="Ray: GPUs per job; fractions share a GPU (0.5: two jobs per GPU)"),
        click.option("--ray-num-cpus", type=click.IntRange(1, None), default=None,
                     help="Ray: CPUs a local instance may use (default: all)")]):
        f = opt(f)
    return f


def ray_options(address, cpus, gpus, num_cpus):
    from dnnpiracy.experiments.executor import RayOptions
    return RayOptions(address=address, cpus_per_job=cpus, gpus_per_job=gpus, num_cpus=num_cpus)


def emit_report(md: str, result: dict, json_out: str | None, md_out: str | None) -> None:
    """Print a report's Markdown, and write it and its JSON where asked (atomically)."""
    from dnnpiracy.io import atomic_write_text, write_json
    click.echo(md)
    if json_out:
        write_json(json_out, result)
        click.echo(f"wrote {json_out}")
    if md_out:
        atomic_write_text(md_out, md)
        click.echo(f"wrote {md_out}")


def echo_verification(v, num_classes: int, significance: float, as_json: bool) -> None:
    """Print a verification (in process or over HTTP, the same words): JSON, or the verdict in one line."""
    import json
    if as_json:
        click.echo(json.dumps(v.to_dict(), indent=2))
    else:
        click.echo(f"{v.verdict}: {v.n_trigger_label}/{v.n_queries} trigger inputs answered with their watermark label "
                   f"(p = {v.p_value:.3g} against chance {v.chance or 1 / num_classes:.2f}; "
                   f"significance {significance}); majority rule says "
                   f"{'pirated' if v.pirated_majority_rule else 'not pirated'}")
