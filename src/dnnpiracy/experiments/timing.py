"""How the speed benchmarks measure: images per second, latency percentiles, RSS growth during a call, and the
facts of the machine and of torch that the timings depend on (``dnnpiracy bench``, ``dnnpiracy bench-http``)."""

from __future__ import annotations

import gc
import math
import os
import platform
import resource
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def machine_info() -> dict:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {"platform": platform.platform(), "python": platform.python_version(), "cpu_model": _cpu_model(),
            "nproc": usable, "cpu_count": os.cpu_count(), "loadavg_start": loadavg()}


def torch_info() -> dict:
    return {"version": torch.__version__, "threads": torch.get_num_threads(),
            "interop_threads": torch.get_num_interop_threads(),
            "mkldnn": bool(torch.backends.mkldnn.is_available()),
            "env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY",
                                               "GOMP_SPINCOUNT", "KMP_BLOCKTIME") if k in os.environ}}


def peak_rss_kib() -> int:
    """Process peak resident set size (``ru_maxrss``: KiB on Linux)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def _rss_kib() -> int | None:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024
    except (OSError, ValueError, IndexError):
        return None


def _release_free_memory() -> None:
    """gc, then hand the heap's free pages back to the OS (glibc), so an RSS increase measures new memory."""
    gc.collect()
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def rss_increase_kib(fn: Callable[[], object], interval: float = 0.0005) -> int | None:
    """Largest RSS above the starting RSS while ``fn()`` runs, sampled from /proc/self/statm by a thread
    (torch releases the GIL inside its operators).  None where /proc is unavailable."""
    _release_free_memory()
    start = _rss_kib()
    if start is None:
        return None
    peak = [start]
    done = threading.Event()

    def sample():
        while not done.is_set():
            v = _rss_kib()
            if v is not None and v > peak[0]:
                peak[0] = v
            time.sleep(interval)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        fn()
    finally:
        done.set()
        t.join()
    end = _rss_kib() or start
    return max(peak[0], end) - start


def throughput(fn: Callable[[], object], n_images: int, seconds: float, min_calls: int = 2) -> float:
    """Images per second of ``fn`` (which handles ``n_images``): one warm-up call, then calls until
    ``seconds`` have passed and at least ``min_calls`` were made."""
    fn()
    calls = 0
    t0 = time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds and calls >= min_calls:
            return calls * n_images / elapsed


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default), q in [0, 100]."""
    s = sorted(values)
    if not s:
        return math.nan
    pos = (len(s) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def latencies_ms(fns: dict[str, Callable[[torch.Tensor], object]], xs: torch.Tensor, calls: int) -> dict:
    """Per pipeline p50/p99/mean latency (ms) of single-image calls, pipelines interleaved call by call."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for f in fns.values():
        f(xs[:1])                                       # warm-up
    for i in range(calls):
        x1 = xs[i % len(xs)][None]
        for k, f in fns.items():
            t0 = time.perf_counter()
            f(x1)
            times[k].append((time.perf_counter() - t0) * 1e3)
    return {k: {"p50": percentile(v, 50), "p99": percentile(v, 99), "mean": statistics.fmean(v),
                "calls": len(v)} for k, v in times.items()}


__all__ = ["loadavg", "machine_info", "torch_info", "peak_rss_kib", "rss_increase_kib", "throughput", "percentile",
           "latencies_ms"]
