"""What the pirated classifier costs: ``dnnpiracy bench`` (in process, against the bare model and a Captum pipeline)
and ``dnnpiracy bench-http`` (served pirate vs served bare model under the same concurrent load).  Both print a
Markdown table; --json / --md also write it (the repository keeps its measurements under results/bench/)."""

from __future__ import annotations

import sys

import click

from dnnpiracy.cli import main
from dnnpiracy.cli.options import DATASET_CHOICES, data_dir_option, emit_report

JSON_HELP = "write the result as JSON (e.g. results/bench/NAME.json)"
MD_HELP = "write the table as Markdown (e.g. results/bench/NAME.md)"


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
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None, help=JSON_HELP)
@click.option("--md", "md_out", type=click.Path(dir_okay=False), default=None, help=MD_HELP)
@data_dir_option
def bench(arch, target_dir, detector_names, batch_sizes, dataset, seconds, rounds, quick, json_out, md_out,
          data_dir):
    """Serving and fitting cost: the pirated classifier against the bare model and a Captum-based pipeline."""
    from dnnpiracy.experiments.speed import run_bench
    from dnnpiracy.experiments.speed_report import bench_markdown
    res = run_bench(arch=arch, detectors=tuple(detector_names) or ("default", "paper"),
                    batch_sizes=tuple(batch_sizes) or (1, 256), quick=quick, target_dir=target_dir,
                    data_dir=data_dir, seconds_per_measure=seconds, echo=lambda m: click.echo(m, err=True),
                    dataset=dataset, rounds=rounds, command=["dnnpiracy", *sys.argv[1:]])
    emit_report(bench_markdown(res), res, json_out, md_out)


@main.command("bench-http")
@click.option("--model", "model_dir", type=click.Path(exists=True), required=True,
              help="a trained target (model folder or file)")
@click.option("--detector", "detector_dir", type=click.Path(exists=True, file_okay=False), required=True,
              help="its detector artifact (`dnnpiracy fit-detector`)")
@click.option("--requests", "n_requests", type=click.IntRange(1, None), default=2000, show_default=True,
              help="timed requests per service (1 image each)")
@click.option("--concurrency", type=click.IntRange(1, 4096), default=64, show_default=True,
              help="requests in flight at once")
@click.option("--warmup", type=click.IntRange(0, None), default=100, show_default=True,
              help="untimed requests sent first")
@click.option("--max-batch", type=click.IntRange(1, 65536), default=256, show_default=True,
              help="most images per request, and per forward pass, of each server")
@click.option("--batch-window-ms", type=click.FloatRange(0, 10000), default=5.0, show_default=True,
              help="how long a server's batch waits for more requests")
@click.option("--server-threads", type=click.IntRange(1, 256), default=None,
              help="torch threads of each server (default: all cores)")
@click.option("--seconds", type=click.FloatRange(0, None, min_open=True), default=3.0, show_default=True,
              help="time budget of each in-process batch-256 measurement")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None, help=JSON_HELP)
@click.option("--md", "md_out", type=click.Path(dir_okay=False), default=None, help=MD_HELP)
@data_dir_option
def bench_http(model_dir, detector_dir, n_requests, concurrency, warmup, max_batch, batch_window_ms, server_threads,
               seconds, json_out, md_out, data_dir):
    """Served pirated vs served bare model under the same concurrent load (and in-process batch-256 for
    reference): throughput, p50/p99 latency, errors."""
    from dnnpiracy.serve.load import http_bench_markdown, run_http_bench
    res = run_http_bench(model_dir, detector_dir, n_requests=n_requests, concurrency=concurrency, warmup=warmup,
                         max_batch=max_batch, batch_window_ms=batch_window_ms, server_threads=server_threads,
                         seconds=seconds, data_dir=data_dir, echo=lambda m: click.echo(m, err=True),
                         command=["dnnpiracy", *sys.argv[1:]])
    emit_report(http_bench_markdown(res), res, json_out, md_out)
