"""Where a grid's jobs run: in this process (``local``, the default) or as Ray tasks (``ray``, an optional extra).

A *job* is everything one target needs (train or reuse it, then its cells), so no two jobs ever build the same
target.  Jobs write their results into the content-addressed cache themselves (atomic files), which stays the single
source of truth: a job finds its finished cells there and skips them, a worker killed mid-job loses only the cell it
was computing, and a driver killed and restarted resubmits the grid and recomputes nothing that was finished.

``map_jobs(fn, payloads, ...)`` calls the module-level function ``fn(payload)`` once per payload and returns
``(results, failures)``: a failing job is reported with its error and the others go on.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from dnnpiracy.progress import progress_bar

EXECUTORS = ("local", "ray")


@dataclass(frozen=True)
class RayOptions:
    address: str | None = None      # None: start a local Ray instance; "auto" or "ray://host:port": join a cluster
    cpus_per_job: float = 1.0
    gpus_per_job: float = 0.0       # fractional GPUs are allowed (0.5: two jobs share one GPU)
    num_cpus: int | None = None     # for a local instance only: how many CPUs it may use (None: all)

    def __post_init__(self) -> None:
        if self.cpus_per_job <= 0 or self.gpus_per_job < 0:
            raise ValueError(f"cpus per cell must be > 0 and GPUs per cell >= 0, got {self.cpus_per_job}, "
                             f"{self.gpus_per_job}")


def map_jobs(fn: Callable, payloads: list, executor: str = "local", ray_options: RayOptions | None = None,
             progress: bool = True, desc: str = "grid", label: Callable = str, log=print) -> tuple[list, list]:
    if executor not in EXECUTORS:
        raise ValueError(f"unknown executor {executor!r}; choose one of {', '.join(EXECUTORS)}")
    if executor == "ray":
        return _map_ray(fn, payloads, ray_options or RayOptions(), progress, desc, label, log)
    results, failures = [], []
    bar = progress_bar(payloads, desc=desc, unit="job", disable=not progress, mininterval=5)
    for p in bar:
        bar.set_postfix_str(label(p), refresh=False)
        try:
            results.append(fn(p))
        except Exception as exc:   # noqa: BLE001 - one failed job must not lose the grid
            failures.append({"job": label(p), "error": f"{type(exc).__name__}: {exc}"})
            log(f"FAILED {label(p)}: {type(exc).__name__}: {exc}")
    return results, failures


def _map_ray(fn, payloads, opts: RayOptions, progress, desc, label, log) -> tuple[list, list]:
    try:
        import ray
    except ImportError as exc:
        raise ValueError("--executor ray needs Ray: pip install -e '.[ray]'") from exc
    started_here = not ray.is_initialized()
    if started_here:
        kw = {"address": opts.address} if opts.address else {"num_cpus": opts.num_cpus}
        ray.init(**kw, include_dashboard=False, log_to_driver=False, configure_logging=False)
    remote = ray.remote(num_cpus=opts.cpus_per_job, num_gpus=opts.gpus_per_job, max_retries=0)(_with_threads)
    pending = {remote.remote(fn, p, opts.cpus_per_job): p for p in payloads}
    results, failures = [], []
    t0 = time.perf_counter()
    bar = progress_bar(total=len(payloads), desc=f"{desc} (ray)", unit="job", disable=not progress, mininterval=5)
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                p = pending.pop(ref)
                try:
                    results.append(ray.get(ref))
                except Exception as exc:   # noqa: BLE001 - a task's error (or a dead worker) loses that job only
                    failures.append({"job": label(p), "error": f"{type(exc).__name__}: {exc}"})
                    log(f"FAILED {label(p)}: {type(exc).__name__}: {exc}")
                bar.update(1)
            n_done = len(results) + len(failures)
            eta = (time.perf_counter() - t0) / max(n_done, 1) * len(pending)
            bar.set_postfix_str(f"done {len(results)}, failed {len(failures)}, pending {len(pending)}, "
                                f"eta {eta / 60:.0f} min", refresh=False)
    finally:
        bar.close()
        if started_here:
            ray.shutdown()
    return results, failures


def _with_threads(fn, payload, cpus: float):
    """Run one job inside a Ray worker with torch using as many threads as the job was given CPUs."""
    import torch
    torch.set_num_threads(max(1, int(cpus)))
    return fn(payload)


__all__ = ["EXECUTORS", "RayOptions", "map_jobs"]
