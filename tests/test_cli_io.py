"""Command-line behaviour and artifact safety (issue 2's acceptance checks, on small generated data)."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from dnnpiracy.cli import main
from dnnpiracy.data import write_idx
from dnnpiracy.io import ArtifactError, load_tensors, safe_torch_load, save_tensors
from dnnpiracy.models import build_model
from dnnpiracy.training import load_model, save_model


def _idx_folder(root: Path, n_train: int = 40, n_test: int = 20) -> Path:
    rng = np.random.default_rng(0)
    d = root / "mnist"
    for split, n in (("train", n_train), ("t10k", n_test)):
        write_idx(d / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(d / f"{split}-labels-idx1-ubyte.gz", (np.arange(n) % 10).astype(np.uint8))
    return d


def test_data_command_json_counts(tmp_path):
    res = CliRunner().invoke(main, ["data", "digits-tiny", "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    assert summary["counts"]["train"] == 600 and summary["counts"]["test"] == 200
    assert summary["counts"]["surrogate"] + summary["counts"]["evaluation"] == 200


def test_corrupt_dataset_file_exits_nonzero_naming_it(tmp_path, monkeypatch):
    d = _idx_folder(tmp_path)
    bad = d / "t10k-images-idx3-ubyte.gz"
    bad.write_bytes(bad.read_bytes()[:100])            # truncated gzip
    import dnnpiracy.data.sources as sources
    hashes = {f.name: __import__("hashlib").sha256(f.read_bytes()).hexdigest() for f in d.iterdir()}
    monkeypatch.setitem(sources.PINNED_SHA256, "mnist", hashes)
    res = CliRunner().invoke(main, ["data", "mnist", "--no-download", "--data-dir", str(tmp_path)])
    assert res.exit_code != 0
    assert "t10k-images-idx3-ubyte.gz" in res.output


def test_checksum_mismatch_exits_nonzero(tmp_path):
    _idx_folder(tmp_path)          # generated files cannot match the official hashes
    res = CliRunner().invoke(main, ["data", "mnist", "--no-download", "--data-dir", str(tmp_path)])
    assert res.exit_code == 2
    assert "ubyte.gz" in res.output and "expected" in res.output.lower()


class _Boom:
    def __reduce__(self):
        return (os.system, ("touch /tmp/dnnpiracy_pwned_marker",))


def test_pickle_payload_checkpoint_is_refused(tmp_path):
    marker = Path("/tmp/dnnpiracy_pwned_marker")
    marker.unlink(missing_ok=True)
    path = tmp_path / "checkpoint.pt"
    with open(path, "wb") as fh:
        pickle.dump({"model": _Boom()}, fh)
    with pytest.raises(ArtifactError, match="checkpoint.pt"):
        safe_torch_load(path)
    torch_file = tmp_path / "evil.pt"
    torch.save({"x": _Boom()}, torch_file)
    with pytest.raises(ArtifactError, match="evil.pt"):
        safe_torch_load(torch_file)
    assert not marker.exists()


def test_model_artifact_roundtrip_and_mismatch(tmp_path):
    model = build_model("small-cnn").eval()
    save_model(tmp_path / "m.safetensors", model, {"arch": "small-cnn", "stem": "imagenet", "dataset": "x",
                                                   "num_classes": 10})
    assert not list(tmp_path.glob("*.tmp"))                  # written atomically, nothing left over
    back, meta = load_model(tmp_path / "m.safetensors", arch="small-cnn", dataset="x")
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(back(x), model(x))
    with pytest.raises(ArtifactError, match="arch='small-cnn'.*'resnet18'"):
        load_model(tmp_path / "m.safetensors", arch="resnet18")
    with pytest.raises(ArtifactError, match="missing"):
        load_model(tmp_path / "nope.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ArtifactError, match="junk.safetensors"):
        load_tensors(tmp_path / "junk.safetensors")
    save_tensors(tmp_path / "t.safetensors", {"a": torch.ones(2)}, {"k": 1})
    assert load_tensors(tmp_path / "t.safetensors", {"k": 1})[0]["a"].sum() == 2


def test_out_of_range_options_are_clear_errors():
    r = CliRunner()
    res = r.invoke(main, ["run", "--trigger-label", "12"])
    assert res.exit_code == 2 and "trigger-label" in res.output
    res = r.invoke(main, ["run", "--detector", "nope", "--quick", "--dataset", "digits-tiny"])
    assert res.exit_code == 2 and "unknown detector" in res.output
    res = r.invoke(main, ["reproduce", "--table", "2", "--detector", "nope", "--cached-only"])
    assert res.exit_code == 2 and "unknown detector" in res.output and "--detector" in res.output


def test_watermark_and_verify_commands(tmp_path):
    out = tmp_path / "wm"
    r = CliRunner()
    res = r.invoke(main, ["watermark", "--dataset", "digits-tiny", "--arch", "small-cnn", "--epochs", "3",
                          "--lr", "0.001", "--batch-size", "64", "--oversample", "10", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert (out / "model.safetensors").exists() and (out / "triggers.png").exists()
    res = r.invoke(main, ["verify", "--model", str(out), "--triggers", str(out / "triggers.safetensors"),
                          "--json"])
    assert res.exit_code == 0, res.output
    v = json.loads(res.output)
    assert v["verdict"] == "pirated" and v["p_value"] < 1e-6


def test_run_with_traffic_calibrated_threshold(tmp_path):
    r = CliRunner()
    base = ["run", "--quick", "--dataset", "digits-tiny", "--detector", "knn-input", "--surrogate-fraction", "0.2",
            "--cache-dir", str(tmp_path / "cache")]
    res = r.invoke(main, [*base, "--traffic", "100000", "--out", str(tmp_path / "bad")])
    assert res.exit_code == 2 and "traffic must be in" in res.output
    assert not (tmp_path / "cache" / "targets").exists()          # rejected before any training
    res = r.invoke(main, [*base, "--traffic", "40", "--target-fpr", "0.05", "--out", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    rep = json.loads((tmp_path / "run" / "report.json").read_text())
    assert rep["traffic_size"] == 40 and rep["detector_spec"]["threshold_source"] == "traffic"
    assert rep["detector_spec"]["n_traffic"] == 40 and rep["n_clean"] == rep["evaluation_size"]
    assert rep["surrogate_size"] == 40 and rep["evaluation_size"] + 40 + 40 == 200   # digits-tiny: 200 test images
    # a second run into the same folder is refused before anything is computed; the first run's report stays
    before = (tmp_path / "run" / "report.json").read_bytes()
    res = r.invoke(main, [*base, "--traffic", "40", "--target-fpr", "0.05", "--out", str(tmp_path / "run")])
    assert res.exit_code == 2 and "already holds a run" in res.output
    assert (tmp_path / "run" / "report.json").read_bytes() == before
    res = r.invoke(main, [*base, "--traffic", "40", "--traffic-use", "fit", "--target-fpr", "0.05", "--out",
                          str(tmp_path / "fit")])
    assert res.exit_code == 0, res.output
    rep = json.loads((tmp_path / "fit" / "report.json").read_text())
    assert rep["detector_spec"]["fit_source"] == "surrogate+traffic"
    assert rep["detector_spec"]["n_calibration"] == rep["surrogate_size"] + 40
    res = r.invoke(main, ["run", "--quick", "--dataset", "digits-tiny", "--detector", "paper", "--traffic", "40",
                          "--traffic-use", "fit", "--cache-dir", str(tmp_path / "cache2"),
                          "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "calibrated detector" in res.output
    assert not (tmp_path / "cache2" / "targets").exists()          # rejected before any training


def test_run_without_out_writes_a_new_folder_and_links_latest(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = ["run", "--quick", "--dataset", "digits-tiny", "--detector", "knn-input", "--surrogate-fraction", "0.2",
            "--cache-dir", str(tmp_path / "cache"), "--seed", "3"]
    res = CliRunner().invoke(main, base)
    assert res.exit_code == 0, res.output
    runs = [p for p in (tmp_path / "runs").iterdir() if p.name != "latest"]
    assert len(runs) == 1 and runs[0].name.startswith("digits-tiny-content-label0-")
    assert (tmp_path / "runs" / "latest").resolve() == runs[0].resolve()
    assert (tmp_path / "runs" / "latest" / "report.json").exists()
    # the run folder stands for its target: the pirate fits a detector artifact for it, the owner has its triggers
    assert (tmp_path / "runs" / "latest" / "triggers.safetensors").exists()
    res = CliRunner().invoke(main, ["fit-detector", "--model", "runs/latest", "--detector", "knn-input",
                                    "--surrogate-fraction", "0.2", "--out", "runs/latest/detector"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "runs" / "latest" / "detector" / "meta.json").exists()


def test_calibrated_rule_with_one_surrogate_input_per_class_is_rejected_before_training(tmp_path):
    # digits-tiny at the paper's 5 %: 10 surrogate inputs, 1 per class, nothing to cross-fit a class on
    res = CliRunner().invoke(main, ["run", "--quick", "--dataset", "digits-tiny", "--cache-dir", str(tmp_path),
                                    "--out", str(tmp_path / "run")])
    assert res.exit_code == 2 and "at least 2 inputs per class" in res.output and "--surrogate-fraction" in res.output
    assert not (tmp_path / "targets").exists()


def test_traffic_studies_reject_bad_tables(tmp_path):
    r = CliRunner()
    for cmd in ("traffic-calibration", "traffic-fit"):
        res = r.invoke(main, [cmd, "--tables", "1,5", "--cache-dir", str(tmp_path)])
        assert res.exit_code == 2 and "tables must be among 1,2,3,4" in res.output


def test_artifacts_get_the_usual_file_mode(tmp_path):
    import os
    import stat

    from dnnpiracy.io import atomic_write_text, save_tensors
    old = os.umask(0o022)
    try:
        a = atomic_write_text(tmp_path / "a.txt", "x")
        b = save_tensors(tmp_path / "t.safetensors", {"x": torch.zeros(2)}, {"k": 1})
    finally:
        os.umask(old)
    for p in (a, b, b.with_suffix(".json")):
        assert stat.S_IMODE(p.stat().st_mode) == 0o644, p
