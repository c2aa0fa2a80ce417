"""``dnnpiracy bench-http``: what serving the pirated classifier costs over serving the bare model, under the same
concurrent load over HTTP.

One after the other, on a free port of 127.0.0.1, it starts ``dnnpiracy serve`` for the pirated classifier and for
the bare model (the same model and detector artifact; each in its own process), waits until ``/healthz`` answers,
sends ``warmup`` untimed requests and then ``n_requests`` timed ones, ``concurrency`` in flight at once (asyncio +
httpx, one image per request, JSON), and stops the server.  Reported per service: throughput (answered images per
second of wall time), latency p50 / p99 / mean of the answered requests, errors (refused, failed or malformed
answers), the server's own batching; and served-pirated / served-bare throughput.  For reference, measured in this
process before the servers start: the pirated classifier and the bare model on batches of 256 (``dnnpiracy bench``'s
``pirated`` and ``bare``).

The load generator shares the machine with the server: on a few cores it takes a good part of them, so the
served numbers are those of this machine driving itself, the same for both services.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from dnnpiracy.experiments.timing import machine_info, percentile, throughput, torch_info
from dnnpiracy.io import git_commit

MODES = ("pirated", "bare")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class ServerProcess:
    """``python -m dnnpiracy serve ...`` on a free port, stopped on exit; ``url`` once it answers /healthz."""

    def __init__(self, model_dir: str | Path, detector_dir: str | Path, bare: bool = False, host: str = "127.0.0.1",
                 port: int | None = None, threads: int | None = None, extra: list[str] | None = None,
                 startup_timeout: float = 180.0):
        self.host, self.port = host, port or free_port(host)
        self.url = f"http://{host}:{self.port}"
        self.startup_timeout = startup_timeout
        self.cmd = [sys.executable, "-m", "dnnpiracy", *(["--threads", str(threads)] if threads else []), "serve",
                    "--model", str(model_dir), "--detector", str(detector_dir), "--host", host, "--port",
                    str(self.port), *(["--bare"] if bare else []), *(extra or [])]
        self.proc: subprocess.Popen | None = None
        self._log = tempfile.TemporaryFile()

    def log_tail(self, n: int = 2000) -> str:
        self._log.seek(0)
        return self._log.read().decode("utf-8", "replace")[-n:]

    def start(self, tries: int = 3) -> "ServerProcess":
        import httpx
        self.proc = subprocess.Popen(self.cmd, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                if tries > 1 and "address already in use" in self.log_tail().lower():   # the free port was taken
                    self.port = free_port(self.host)
                    self.url = f"http://{self.host}:{self.port}"
                    self.cmd[self.cmd.index("--port") + 1] = str(self.port)
                    self._log.seek(0)
                    self._log.truncate()
                    return self.start(tries - 1)
                raise RuntimeError(f"server exited with status {self.proc.returncode}: {self.log_tail()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=2.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server did not answer {self.url}/healthz within {self.startup_timeout:g} s: "
                           f"{self.log_tail()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)
        self._log.close()

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


async def drive(url: str, bodies: list[bytes], n_requests: int, concurrency: int, warmup: int = 0) -> dict:
    """Send ``n_requests`` POST /v1/predict (body i = ``bodies[i % len(bodies)]``), ``concurrency`` at a time;
    latencies of the answered ones, errors, wall time, and each request's answer (None where it failed)."""
    import httpx
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"content-type": "application/json"}
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120.0) as client:
        async def one(i: int) -> tuple[float, int | None, str | None]:
            t0 = time.perf_counter()
            try:
                r = await client.post("/v1/predict", content=bodies[i % len(bodies)], headers=headers)
                dt = time.perf_counter() - t0
                if r.status_code != 200:
                    return dt, None, f"HTTP {r.status_code}"
                labels = r.json().get("labels")
                if not isinstance(labels, list) or len(labels) != 1:
                    return dt, None, "malformed answer"
                return dt, int(labels[0]), None
            except (httpx.HTTPError, ValueError) as exc:
                return time.perf_counter() - t0, None, type(exc).__name__

        async def run(n: int, offset: int) -> tuple[list, float]:
            results: list = [None] * n
            counter = itertools.count()

            async def worker():
                while (i := next(counter)) < n:
                    results[i] = await one(offset + i)

            t0 = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(min(concurrency, n))))
            return results, time.perf_counter() - t0

        if warmup:
            await run(warmup, 0)
        results, wall = await run(n_requests, 0)
    lat = [dt for dt, label, err in results if err is None]
    errors: dict[str, int] = {}
    for _, _, err in results:
        if err is not None:
            errors[err] = errors.get(err, 0) + 1
    return {"requests": n_requests, "concurrency": concurrency, "answered": len(lat),
            "errors": sum(errors.values()), "error_kinds": errors, "wall_seconds": wall,
            "throughput": len(lat) / wall if wall > 0 else float("nan"),
            "latency_ms": {"p50": percentile(lat, 50) * 1e3, "p99": percentile(lat, 99) * 1e3,
                           "mean": (sum(lat) / len(lat) * 1e3) if lat else float("nan"),
                           "max": max(lat) * 1e3 if lat else float("nan")},
            "answers": [label for _, label, _ in results]}


def _queries(ds, n: int) -> torch.Tensor:
    """``n`` clean test images (cycled if the test set is smaller), in a seeded order."""
    order = torch.randperm(len(ds.test_x), generator=torch.Generator().manual_seed(0))
    idx = order.repeat((n + len(order) - 1) // len(order))[:n]
    return ds.test_x[idx]


def run_http_bench(model_dir: str | Path, detector_dir: str | Path, n_requests: int = 2000, concurrency: int = 64,
                   warmup: int = 100, max_batch: int = 256, batch_window_ms: float = 5.0,
                   server_threads: int | None = None, seconds: float = 3.0, n_queries: int = 1000,
                   data_dir: str | None = None, echo: Callable[[str], None] = print,
                   command: list[str] | None = None) -> dict:
    """The whole measurement (see the module doc); returns a JSON-ready dict."""
    from dnnpiracy.attack import PiratedClassifier
    from dnnpiracy.attack.artifact import load_detector, model_meta_for
    from dnnpiracy.data import load_dataset
    from dnnpiracy.models import arch_info
    from dnnpiracy.training import load_model
    model_path = Path(model_dir)
    model_path = model_path / "model.safetensors" if model_path.is_dir() else model_path
    model, meta = load_model(model_path)
    facts = model_meta_for(model_path)
    det = load_detector(detector_dir, model, arch_info(meta["arch"], meta.get("stem", "imagenet")), facts)
    ds = load_dataset(meta["dataset"], data_dir)
    queries = _queries(ds, max(n_queries, 256))
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    machine = machine_info()

    echo(f"in-process batch-256 throughput ({seconds:g} s each)")
    pirate = PiratedClassifier(det, "uniform-other", 0)
    batch = queries[:256]
    from dnnpiracy.training import predict_labels
    in_process = {
        "pirated": throughput(lambda: pirate.predict(batch), len(batch), seconds),
        "bare": throughput(lambda: predict_labels(model, batch, batch_size=256), len(batch), seconds),
    }
    in_process["pirated_over_bare"] = in_process["pirated"] / in_process["bare"]

    bodies = [json.dumps({"images": q[0].tolist()}).encode() for q in queries[:n_queries]]
    served: dict[str, dict] = {}
    for mode in MODES:
        echo(f"serving the {mode} model; {warmup} + {n_requests} requests, {concurrency} in flight")
        extra = ["--max-batch", str(max_batch), "--batch-window-ms", str(batch_window_ms)]
        with ServerProcess(model_dir, detector_dir, bare=mode == "bare", threads=server_threads,
                           extra=extra) as server:
            res = asyncio.run(drive(server.url, bodies, n_requests, concurrency, warmup))
        served[mode] = res
        echo(f"  {res['throughput']:.1f} images/s, p50 {res['latency_ms']['p50']:.1f} ms, "
             f"p99 {res['latency_ms']['p99']:.1f} ms, {res['errors']} errors")
    pa, ba = served["pirated"].pop("answers"), served["bare"].pop("answers")
    both = [(p, b) for p, b in zip(pa, ba) if p is not None and b is not None]
    served["pirated"]["same_label_as_bare"] = sum(p == b for p, b in both) / len(both) if both else float("nan")
    ratio = served["pirated"]["throughput"] / served["bare"]["throughput"] if served["bare"]["throughput"] else None
    return {
        "benchmark": "bench-http",
        "command": " ".join(command) if command else None,
        "started": started,
        "git_commit": git_commit(),
        "model": {"path": str(model_path), "arch": meta.get("arch"), "stem": meta.get("stem"),
                  "dataset": meta.get("dataset"), "sha256": facts["model_sha256"]},
        "detector": {"path": str(detector_dir), "name": det_name(detector_dir)},
        "settings": {"requests": n_requests, "concurrency": concurrency, "warmup": warmup,
                     "images_per_request": 1, "max_batch": max_batch, "batch_window_ms": batch_window_ms,
                     "server_threads": server_threads, "strategy": "uniform-other",
                     "in_process_seconds": seconds, "distinct_queries": len(bodies)},
        "machine": {**machine, "loadavg_end": [round(v, 2) for v in os.getloadavg()]},
        "torch": torch_info(),
        "in_process_batch256": in_process,
        "served": served,
        "served_pirated_over_bare": ratio,
    }


def det_name(detector_dir: str | Path) -> str | None:
    from dnnpiracy.attack.artifact import read_detector_meta
    return read_detector_meta(detector_dir).get("detector")


def _f(v, fmt: str = ".1f") -> str:
    return "n/a" if v is None or v != v else format(v, fmt)


def http_bench_markdown(res: dict) -> str:
    s, m = res["settings"], res["model"]
    lines = [
        "# Serving the pirated classifier over HTTP (`dnnpiracy bench-http`)",
        "",
        f"Model `{m['arch']}` ({m['dataset']}), detector `{res['detector']['name']}`; {s['requests']} timed "
        f"requests of 1 image each (after {s['warmup']} untimed), {s['concurrency']} in flight, max batch "
        f"{s['max_batch']}, batch window {s['batch_window_ms']:g} ms; the load generator runs on the same machine "
        f"({res['machine'].get('nproc')} cores, {res['machine'].get('cpu_model')}).",
        "",
        *(["(A smoke run: the service's target measurement sends at least 1000 requests, 32 or more in flight.)", ""]
          if s["requests"] < 1000 or s["concurrency"] < 32 else []),
        "| service | answered | errors | throughput (images/s) | p50 latency (ms) | p99 latency (ms) | mean (ms) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for mode in MODES:
        r = res["served"][mode]
        lat = r["latency_ms"]
        lines.append(f"| served {mode} | {r['answered']} | {r['errors']} | {_f(r['throughput'])} | "
                     f"{_f(lat['p50'], '.2f')} | {_f(lat['p99'], '.2f')} | {_f(lat['mean'], '.2f')} |")
    ip = res["in_process_batch256"]
    lines += [
        "",
        f"**served pirated / served bare throughput: {_f(res['served_pirated_over_bare'], '.3f')}**; the served "
        f"pirate answers {_f(100 * res['served']['pirated'].get('same_label_as_bare', float('nan')), '.1f')} % of "
        "the requests with the bare model's label.",
        "",
        "In process, batches of 256 (reference, no HTTP): "
        f"pirated {_f(ip['pirated'])} images/s, bare {_f(ip['bare'])} images/s, ratio "
        f"{_f(ip['pirated_over_bare'], '.3f')}.",
        "",
        f"Command: `{res.get('command')}`; commit {res.get('git_commit')}; started {res.get('started')}; load "
        f"average {res['machine'].get('loadavg_start')} -> {res['machine'].get('loadavg_end')}.",
        "",
    ]
    return "\n".join(lines)


__all__ = ["run_http_bench", "http_bench_markdown", "drive", "ServerProcess", "free_port"]
