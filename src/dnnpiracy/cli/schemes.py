"""``dnnpiracy schemes`` and ``dnnpiracy benchmark``: the watermark schemes and the scheme x detector matrix."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from dnnpiracy.cli import main
from dnnpiracy.cli.options import executor_options, ray_options


@main.command()
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def schemes(as_json):
    """List the watermark schemes (--scheme NAME on watermark, run and benchmark)."""
    import json

    from dnnpiracy.config import TriggerConfig
    from dnnpiracy.watermark import SCHEMES, get_scheme
    rows = [get_scheme(TriggerConfig(scheme=n)).describe() for n in SCHEMES]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    import textwrap
    width = max(len(n) for n in SCHEMES)
    pad = " " * (width + 2)
    for r in rows:
        text = textwrap.fill(f"{r['summary']} ({r['reference']})", 118, initial_indent=pad, subsequent_indent=pad,
                             break_on_hyphens=False)
        click.echo(f"{r['scheme']:<{width}}  {text[width + 2:]}")


@main.command()
@click.option("--grid", default="schemes", show_default=True,
              help="schemes (the benchmark), selection (the default's selection run), or a grid .toml file")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("results"),
              show_default=True, help="where the report goes (schemes.md/.json and schemes/ for the benchmark)")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="target and cell cache (default $DNNPIRACY_CACHE or ~/.cache/dnnpiracy/runs)")
@click.option("--targets-only", is_flag=True, help="train (or reuse) the grid's targets and evaluate nothing")
@click.option("--cached-only", is_flag=True, help="render the finished cells; compute nothing")
@click.option("--dataset", "datasets", multiple=True, help="run only this dataset's targets (repeatable)")
@click.option("--seed", "seeds", type=int, multiple=True, help="run only this seed's targets (repeatable)")
@click.option("--detector", "detectors", multiple=True,
              help="compute only this column (repeatable; a design name, as the grid lists it)")
@executor_options
def benchmark(grid, out, cache_dir, targets_only, cached_only, datasets, seeds, detectors, executor, ray_address,
              cpus_per_cell, gpus_per_cell, ray_num_cpus):
    """The scheme x detector matrix (cached and resumable): every scheme's targets, every detector column, the
    owner's verdicts; renders results/schemes.md + .json and its figures."""
    from dnnpiracy.experiments.benchmark import load_grid, render, run_grid
    spec = load_grid(grid)
    t0 = time.perf_counter()
    failed = []
    if not cached_only:
        res = run_grid(spec, cache_dir, targets_only=targets_only, only_datasets=datasets, only_seeds=seeds,
                       detectors=detectors, log=lambda m: click.echo(m, err=True), executor=executor,
                       ray_options=ray_options(ray_address, cpus_per_cell, gpus_per_cell, ray_num_cpus))
        failed = res["failed"]
        for f in failed:
            click.echo(f"failed: {f['target']}: {f['error']}", err=True)
    if targets_only:
        return
    paths = render(spec, out, cache_dir, command="dnnpiracy " + " ".join(sys.argv[1:]),
                   wall_seconds=time.perf_counter() - t0, failed=len(failed))
    for p in paths:
        click.echo(f"wrote {p}")
    if failed:
        sys.exit(1)
