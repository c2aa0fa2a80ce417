"""Fitted detectors as artifacts: a folder the pirate fits once and serves from (``dnnpiracy fit-detector``,
``dnnpiracy serve``).

The fitted scorer is stored by walking the object generically, never by pickling it
(:mod:`dnnpiracy.attack.artifact_codec`): tensors go into one safetensors file (``tensors.safetensors``), everything
else into JSON (``detector.json``); scorer, module and config classes are rebuilt from allow-lists.

Beside the scorer: the thresholds, the spec, ``fit_info``, the calibration scores and labels, the CAM's layers, and
``meta.json``: format version, detector name, the model's arch / stem / dataset / num_classes, the SHA-256 of the
model's safetensors file and of its weights' content, and the SHA-256 of the two other files.  Loading checks all of
it and refuses a mismatch with an :class:`~dnnpiracy.io.ArtifactError` naming the problem.

The folder is written atomically: into a temporary folder beside ``out_dir``, then renamed; a failed save leaves
neither a partial nor an empty folder behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from dnnpiracy.attack.artifact_codec import SCORER_CLASSES, Decoder, Encoder
from dnnpiracy.attack.detector import Detector, DetectorSpec, make_cam
from dnnpiracy.attack.scorers import Scorer, bind_model
from dnnpiracy.io import ArtifactError, atomic_write_text, git_commit, read_json, sha256_file
from dnnpiracy.models import ArchInfo

FORMAT = "dnnpiracy-detector/1"
META_FILE, DETECTOR_FILE, TENSORS_FILE = "meta.json", "detector.json", "tensors.safetensors"
MODEL_KEYS = ("arch", "stem", "dataset", "num_classes")


# --------------------------------------------------------------------------------------------------- hashes
def model_state_sha256(model: nn.Module) -> str:
    """SHA-256 of a model's weights (state_dict: names, dtypes, shapes, bytes, in name order): what the detector
    was fitted on, whatever file the model came from."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        # reshape(-1) first: a 0-dim tensor (BatchNorm's num_batches_tracked) cannot be viewed as bytes
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def model_meta_for(model_path: str | Path, model: nn.Module | None = None) -> dict:
    """The model facts a detector artifact records and checks: arch, stem, dataset, num_classes (from the model's
    metadata file), the SHA-256 of its safetensors file and, with ``model``, of its weights."""
    path = Path(model_path)
    path = path / "model.safetensors" if path.is_dir() else path
    if not path.exists():
        raise ArtifactError(f"missing file: {path}")
    meta = read_json(path.with_suffix(".json"))
    out = {k: meta.get(k) for k in MODEL_KEYS}
    out["stem"] = out["stem"] or "imagenet"
    out["num_classes"] = out["num_classes"] or 10
    out["model_sha256"] = sha256_file(path)
    if model is not None:
        out["model_state_sha256"] = model_state_sha256(model)
    return out


# ------------------------------------------------------------------------------------------------ save / load
def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _is_detector_dir(path: Path) -> bool:
    meta = path / META_FILE
    if not meta.is_file():
        return False
    try:
        return json.loads(meta.read_text()).get("format", "").startswith("dnnpiracy-detector/")
    except (OSError, ValueError, AttributeError):
        return False


def check_out_dir(out_dir: str | Path) -> None:
    """Refuse to write a detector artifact over anything but nothing, an empty folder or an earlier artifact."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not (out_dir.is_dir() and (not any(out_dir.iterdir()) or _is_detector_dir(out_dir))):
        raise ArtifactError(f"{out_dir} exists and is not a detector artifact: refusing to replace it")


def save_detector(detector: Detector, out_dir: str | Path, model_meta: dict, model: nn.Module | None = None) -> Path:
    """Write the fitted ``detector`` into the folder ``out_dir`` (replacing a detector artifact already there).

    ``model_meta``: the facts of the model it was fitted on, as :func:`model_meta_for` gives them (arch, stem,
    dataset, num_classes, model_sha256; model_state_sha256, or pass ``model`` to compute it)."""
    out_dir = Path(out_dir)
    missing = [k for k in ("arch", "dataset", "num_classes", "model_sha256") if model_meta.get(k) is None]
    if missing:
        raise ArtifactError(f"model_meta lacks {', '.join(missing)} (use model_meta_for(model_path, model))")
    check_out_dir(out_dir)
    model_facts = {k: model_meta.get(k) for k in (*MODEL_KEYS, "model_sha256", "model_state_sha256")}
    if model is not None:
        model_facts["model_state_sha256"] = model_state_sha256(model)

    enc = Encoder()
    cam = detector.cam
    body = {
        "name": detector.name,
        "spec": asdict(detector.spec),
        "num_classes": detector.num_classes,
        "penultimate": detector.penultimate,
        "always_heatmaps": detector.always_heatmaps,
        "cam": {"method": detector.spec.cam, "class": type(cam).__name__, "layer": cam.layer,
                "feature_layers": list(cam.feature_layers), "batch_size": cam.batch_size},
        "fit_info": enc.encode(detector.fit_info, "fit_info"),
        "thresholds": enc.tensor(detector.thresholds, "thresholds"),
        "calibration_scores": None if detector.calibration_scores is None
        else enc.tensor(detector.calibration_scores, "calibration_scores"),
        "calibration_labels": None if detector.calibration_labels is None
        else enc.tensor(detector.calibration_labels, "calibration_labels"),
        "scorer": enc.encode(detector.scorer, "scorer"),
    }
    text = json.dumps(body, indent=1, allow_nan=False) + "\n"

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.", suffix=".tmp"))
    old: Path | None = None
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)         # mkdtemp's 0700 would outlive the rename: a plain folder instead
        save_file(enc.tensors, str(tmp / TENSORS_FILE), metadata={"format": FORMAT})
        atomic_write_text(tmp / DETECTOR_FILE, text)
        meta = {"format": FORMAT, "detector": detector.name, "scorer": type(detector.scorer).__name__,
                "rule": detector.spec.rule, "model": model_facts,
                "files": {DETECTOR_FILE: sha256_file(tmp / DETECTOR_FILE),
                          TENSORS_FILE: sha256_file(tmp / TENSORS_FILE)},
                "n_tensors": len(enc.tensors), "git_commit": git_commit(), "torch_version": torch.__version__}
        atomic_write_text(tmp / META_FILE, json.dumps(meta, indent=2, allow_nan=False) + "\n")
        with open(tmp / TENSORS_FILE, "rb") as fh:
            os.fsync(fh.fileno())
        _fsync_dir(tmp)
        if out_dir.exists():            # an earlier artifact (or an empty folder): moved aside, then removed
            old = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.", suffix=".old"))
            os.rmdir(old)
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        _fsync_dir(out_dir.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and old.exists() and not out_dir.exists():
            os.replace(old, out_dir)    # put the previous artifact back
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return out_dir


def read_detector_meta(path: str | Path) -> dict:
    """The ``meta.json`` of a detector artifact (format checked)."""
    path = Path(path)
    if not path.is_dir():
        raise ArtifactError(f"missing detector artifact: {path} is not a folder")
    meta = read_json(path / META_FILE)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        have = meta.get("format") if isinstance(meta, dict) else None
        raise ArtifactError(f"{path / META_FILE}: format {have!r}, this version reads {FORMAT!r}")
    return meta


def check_model(meta: dict, path: Path, model: nn.Module | None = None, model_meta: dict | None = None) -> None:
    """Refuse a model other than the one the detector at ``path`` was fitted on."""
    fitted = meta.get("model") or {}
    for key in MODEL_KEYS:
        if model_meta is not None and model_meta.get(key) is not None and fitted.get(key) != model_meta.get(key):
            raise ArtifactError(f"detector {path} was fitted on a model with {key}={fitted.get(key)!r}, not "
                                f"{model_meta.get(key)!r}")
    if model_meta is not None and model_meta.get("model_sha256") and \
            fitted.get("model_sha256") != model_meta["model_sha256"]:
        raise ArtifactError(f"detector {path} was fitted on another model: model file SHA-256 "
                            f"{str(fitted.get('model_sha256'))[:16]}..., this model's is "
                            f"{model_meta['model_sha256'][:16]}...")
    if model is not None and fitted.get("model_state_sha256"):
        have = model_state_sha256(model)
        if have != fitted["model_state_sha256"]:
            raise ArtifactError(f"detector {path} was fitted on another model: weights SHA-256 "
                                f"{fitted['model_state_sha256'][:16]}..., this model's are {have[:16]}...")


def load_detector(path: str | Path, model: nn.Module, info: ArchInfo, model_meta: dict | None = None) -> Detector:
    """Load the detector artifact at ``path`` for ``model`` (whose :class:`ArchInfo` is ``info``).

    Refuses (ArtifactError, naming the problem) a missing or corrupt file, another format version, an unknown
    scorer, and a model other than the one the detector was fitted on: the weights' hash is always checked, and with
    ``model_meta`` (:func:`model_meta_for`) also the model file's hash, arch, stem, dataset and num_classes."""
    path = Path(path)
    meta = read_detector_meta(path)
    check_model(meta, path, model, model_meta)
    files = meta.get("files") or {}
    for name in (DETECTOR_FILE, TENSORS_FILE):
        f = path / name
        if not f.is_file():
            raise ArtifactError(f"missing file: {f}")
        if files.get(name) != sha256_file(f):
            raise ArtifactError(f"corrupt file: {f} does not match the SHA-256 recorded in {path / META_FILE}")
    body = read_json(path / DETECTOR_FILE)
    try:
        tensors = load_file(str(path / TENSORS_FILE))
    except Exception as exc:      # safetensors raises its own error types
        raise ArtifactError(f"corrupt file: cannot read {path / TENSORS_FILE} as safetensors: {exc}") from exc
    dec = Decoder(tensors, path, TENSORS_FILE)
    try:
        spec = DetectorSpec(**body["spec"])
        cam_info = body["cam"]
        scorer = dec.decode(body["scorer"])
        if not isinstance(scorer, Scorer):
            raise dec.fail("the stored scorer is not a scorer")
        bind_model(scorer, model)       # STRIP / SCALE-UP query the served model
        thresholds = dec.decode(body["thresholds"])
        num_classes = int(body["num_classes"])
        fit_info = dec.decode(body["fit_info"])
        calib_scores = dec.decode(body["calibration_scores"])
        calib_labels = dec.decode(body["calibration_labels"])
    except (KeyError, TypeError) as exc:
        raise ArtifactError(f"corrupt file: {path / DETECTOR_FILE} lacks or garbles {exc}") from exc
    if thresholds.shape != (num_classes,):
        raise dec.fail(f"thresholds have shape {tuple(thresholds.shape)} for {num_classes} classes")
    if model_meta is not None and model_meta.get("num_classes") not in (None, num_classes):
        raise ArtifactError(f"detector {path} has {num_classes} classes, the model {model_meta['num_classes']}")
    try:
        cam = make_cam(model, info, cam_info["layer"], cam_info["method"], int(cam_info.get("batch_size", 256)))
        if tuple(cam_info.get("feature_layers", cam.feature_layers)) != cam.feature_layers:
            cam = type(cam)(model, cam_info["layer"], tuple(cam_info["feature_layers"]), cam.batch_size)
    except ValueError as exc:
        raise ArtifactError(f"detector {path} does not fit this model: {exc}") from exc
    return Detector(str(body["name"]), spec, cam, scorer, thresholds, num_classes, str(body["penultimate"]),
                    fit_info, calib_scores, calib_labels, bool(body.get("always_heatmaps", False)))


__all__ = ["save_detector", "load_detector", "model_meta_for", "model_state_sha256", "read_detector_meta",
           "check_model", "check_out_dir", "FORMAT", "SCORER_CLASSES"]
