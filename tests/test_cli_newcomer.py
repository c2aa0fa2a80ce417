"""What a newcomer meets first: `dnnpiracy data` output, the offline MNIST error, a failed `watermark` leaving no
empty folder behind, and progress output that stays clean in a log file."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
from click.testing import CliRunner

from dnnpiracy.cli import main
from dnnpiracy.progress import PlainProgress, is_terminal, progress_bar


def test_data_names_the_dataset_once():
    res = CliRunner().invoke(main, ["data", "digits-tiny"])
    assert res.exit_code == 0, res.output
    first = res.output.splitlines()[0]
    assert first.startswith("digits-tiny: ") and first.count("digits-tiny") == 1, first


def test_offline_mnist_points_to_mnist_10k(tmp_path, monkeypatch):
    def offline(*_a, **_k):
        raise urllib.error.URLError("Name or service not known")
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    r = CliRunner()
    res = r.invoke(main, ["data", "mnist", "--data-dir", str(tmp_path)])
    assert res.exit_code == 2 and "download of" in res.output and "mnist-10k" in res.output, res.output
    res = r.invoke(main, ["data", "mnist", "--no-download", "--data-dir", str(tmp_path)])
    assert res.exit_code == 2 and "download=False" in res.output and "mnist-10k" in res.output, res.output


WATERMARK = ["watermark", "--dataset", "digits-tiny", "--arch", "small-cnn", "--epochs", "1", "--batch-size", "64"]


def test_failed_watermark_leaves_no_folder(tmp_path, monkeypatch):
    r = CliRunner()
    out = tmp_path / "new" / "owner"
    res = r.invoke(main, [*WATERMARK, "--arch", "nope", "--out", str(out)])       # refused before any file
    assert res.exit_code == 2 and "unknown architecture" in res.output
    assert not (tmp_path / "new").exists()

    def broken(*_a, **_k):
        raise ValueError("training failed")
    monkeypatch.setattr("dnnpiracy.watermark.embed.train_classifier", broken)
    res = r.invoke(main, [*WATERMARK, "--out", str(out)])       # fails after the trigger set was written
    assert res.exit_code == 2 and "training failed" in res.output
    assert not (tmp_path / "new").exists()
    mine = tmp_path / "mine"                                     # a folder that was there before is left alone
    mine.mkdir()
    (mine / "notes.txt").write_text("x")
    res = r.invoke(main, [*WATERMARK, "--out", str(mine)])
    assert res.exit_code == 2 and (mine / "notes.txt").exists()


def test_interrupted_watermark_keeps_its_checkpoint(tmp_path):
    from dnnpiracy.cli.owner import created_on_success
    out = tmp_path / "a" / "b"
    with pytest.raises(KeyboardInterrupt), created_on_success(out):
        out.mkdir(parents=True)
        (out / "checkpoint.pt").write_bytes(b"x")               # training got somewhere: resumable
        raise KeyboardInterrupt
    assert (out / "checkpoint.pt").exists()
    with created_on_success(tmp_path / "c"):                     # success: nothing removed
        (tmp_path / "c").mkdir()
    assert (tmp_path / "c").is_dir()


def test_plain_progress_writes_lines_not_carriage_returns():
    buf = io.StringIO()
    assert not is_terminal(buf)
    bar = progress_bar(range(8), desc="epoch 1/1", unit="batch", file=buf)
    assert isinstance(bar, PlainProgress)
    for _ in bar:
        bar.set_postfix(loss="0.5")
    lines = buf.getvalue().splitlines()
    assert "\r" not in buf.getvalue()
    assert [ln.split(",")[0] for ln in lines] == [f"epoch 1/1: {k}/8 batch ({p} %)" for k, p in
                                                  ((2, 25), (4, 50), (6, 75), (8, 100))]
    assert lines[-1].endswith("loss=0.5")
    quiet = io.StringIO()
    list(progress_bar(range(8), file=quiet, disable=True))
    assert quiet.getvalue() == ""
    stopped = io.StringIO()                                      # stopped early: one last line says where
    with progress_bar(total=10, desc="jobs", file=stopped) as b:
        b.update(1)
    assert stopped.getvalue() == stopped.getvalue().replace("\r", "") and "jobs: 1/10" in stopped.getvalue()


def test_a_run_logged_to_a_file_has_no_carriage_returns(tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", "dnnpiracy", *WATERMARK, "--out", str(tmp_path / "wm")],
                          capture_output=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    out = proc.stdout + proc.stderr
    assert b"\r" not in out
    assert b"epoch 1/1: " in out and b"(100 %)" in out
