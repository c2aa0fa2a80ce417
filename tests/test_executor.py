"""Grids on Ray: the same cells as the local executor; an interrupted driver resumes without recomputing a cell."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from dnnpiracy.experiments.benchmark import load_grid, run_grid
from dnnpiracy.experiments.executor import RayOptions, map_jobs

TINY = """
title = "tiny"
datasets = ["digits-tiny"]
schemes = ["content", "noise"]
development = ["content"]
seeds = [0, 1]
trigger_labels = [3, 4]
detectors = ["mahalanobis-stages", "knn-input"]
arch = "small-cnn"
lr = 0.001
epochs = {digits-tiny = 2}
surrogate_fraction = {digits-tiny = 0.3}
"""
VOLATILE = {"seconds", "fit_seconds", "probe_seconds", "target_seconds", "git_commit", "device"}


def _stable(cell: dict) -> dict:
    return {k: v for k, v in cell.items() if k not in VOLATILE and k != "target_report"} | {
        "target_report": {k: v for k, v in cell["target_report"].items() if k != "wall_seconds"}}


def _cells(cache) -> dict:
    return {p.name: json.loads(p.read_text()) for p in sorted((cache / "bench_cells").glob("*.json"))}


def _boom(x):
    if x == 2:
        raise RuntimeError("planted failure")
    return x * 10


def test_local_executor_reports_a_failed_job_and_keeps_the_others():
    res, failed = map_jobs(_boom, [1, 2, 3], progress=False, log=lambda _m: None)
    assert res == [10, 30] and len(failed) == 1 and "planted failure" in failed[0]["error"]
    with pytest.raises(ValueError, match="unknown executor"):
        map_jobs(_boom, [1], executor="slurm")


def test_ray_gives_the_local_executors_cells(tmp_path):
    ray = pytest.importorskip("ray")
    p = tmp_path / "tiny.toml"
    p.write_text(TINY)
    grid = load_grid(str(p))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)          # CPU training is bit-for-bit repeatable for a given thread count
    try:
        local = run_grid(grid, tmp_path / "local", progress=False, log=lambda _m: None)
    finally:
        torch.set_num_threads(threads)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        remote = run_grid(grid, tmp_path / "ray", progress=False, log=lambda _m: None, executor="ray",
                          ray_options=RayOptions(cpus_per_job=1))
        # a failing job on Ray is reported, the others finish (a nested function travels by value)
        def boom(x):
            if x == 2:
                raise RuntimeError("planted failure")
            return x * 10
        res, failed = map_jobs(boom, [1, 2, 3], "ray", RayOptions(), progress=False, log=lambda _m: None)
    finally:
        ray.shutdown()
    assert not local["failed"] and not remote["failed"]
    a, b = _cells(tmp_path / "local"), _cells(tmp_path / "ray")
    assert len(a) == 8 and a.keys() == b.keys()
    for k in a:
        assert _stable(a[k]) == _stable(b[k]), k
    assert sorted(res) == [10, 30] and "planted failure" in failed[0]["error"]


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_an_interrupted_driver_resumes_without_recomputing_a_cell(tmp_path, executor):
    if executor == "ray":
        pytest.importorskip("ray")
    p = tmp_path / "tiny.toml"
    p.write_text(TINY)
    cache = tmp_path / "cache"
    cmd = [sys.executable, "-m", "dnnpiracy", "--threads", "1", "benchmark", "--grid", str(p), "--out",
           str(tmp_path / "out"), "--cache-dir", str(cache), "--executor", executor, "--ray-num-cpus", "1"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                            start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and len(list((cache / "bench_cells").glob("*.json"))) < 2:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)      # the driver and everything it started
    proc.wait()
    first = {n: (cache / "bench_cells" / n).stat().st_mtime_ns for n in _cells(cache)}
    assert 2 <= len(first) < 8, "the run should have been interrupted mid-grid"
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=400)
    assert done.returncode == 0, done.stderr[-2000:]
    after = _cells(cache)
    assert len(after) == 8
    assert {n: (cache / "bench_cells" / n).stat().st_mtime_ns for n in first} == first   # none computed twice


def test_reproduce_on_ray_renders_the_local_executors_table(tmp_path):
    ray = pytest.importorskip("ray")
    from dnnpiracy.experiments.reproduce import Profile, reproduce_spec
    spec = {"id": "1", "title": "tiny", "dataset": "digits-tiny", "trigger_labels": [0, 1], "archs": ["small-cnn"],
            "blocks": [4], "taus": [2.0], "detectors": ["knn-input", "mahalanobis-stages"], "seeds": [0],
            "target_fprs": [0.1]}
    prof = Profile("test", {"digits-tiny": 2}, {"digits-tiny": 2}, {}, True, "tiny test profile", {"digits-tiny": 0.2})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        local = reproduce_spec(spec, prof, tmp_path / "a", tmp_path / "ca", progress=False, log=lambda m: None)
    finally:
        torch.set_num_threads(threads)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        remote = reproduce_spec(spec, prof, tmp_path / "b", tmp_path / "cb", progress=False, log=lambda m: None,
                                executor="ray", ray_options=RayOptions(cpus_per_job=1))
    finally:
        ray.shutdown()
    strip = ("wall_seconds", "compute_seconds", "cell_seconds", "devices", "command", "git_commit")
    assert local["rows"] == remote["rows"]
    assert {k: v for k, v in local["meta"].items() if k not in strip} == \
        {k: v for k, v in remote["meta"].items() if k not in strip}
