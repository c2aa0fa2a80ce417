"""Fitted detectors as artifacts: a folder the pirate fits once and serves from (``dnnpiracy fit-detector``,
``dnnpiracy serve``).

The fitted scorer is stored by walking the object generically, never by pickling it:

- tensors go into one safetensors file (``tensors.safetensors``) under path-like keys (``scorer.components.3.refs.7``);
- ints, floats (``inf``/``nan`` spelled out), strings, bools, None, lists and tuples go into JSON (``detector.json``);
- a nested scorer (``EnsembleScorer.components``, ``ClassNormalizedScorer.base``) is walked the same way, and is
  rebuilt from an allow-list of scorer classes (an unknown class name is refused, nothing is imported by name);
- a dict keyed by class ints (or by strings) keeps its keys as strings, with the key type recorded;
- a torch module (the DCGAN scorer's discriminators) is stored as its state_dict plus the constructor arguments,
  rebuilt from an allow-list and loaded strictly;
- scikit-learn's ``LocalOutlierFactor`` (the ``lof`` scorer) cannot be stored as tensors: its parameters and the
  reference features it was fitted on are stored, and it is refitted on load (deterministic);
- the few config dataclasses a scorer holds (``GanConfig``) are stored field by field.

Beside the scorer: the thresholds, the spec, ``fit_info``, the calibration scores and labels, the CAM's layers, and
``meta.json``: format version, detector name, the model's arch / stem / dataset / num_classes, the SHA-256 of the
model's safetensors file and of its weights' content, and the SHA-256 of the two other files.  Loading checks all of
it and refuses a mismatch with an :class:`~dnnpiracy.io.ArtifactError` naming the problem.

The folder is written atomically: into a temporary folder beside ``out_dir``, then renamed; a failed save leaves
neither a partial nor an empty folder behind.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from dnnpiracy.attack.dcgan import Discriminator
from dnnpiracy.attack.detector import Detector, DetectorSpec, make_cam
from dnnpiracy.attack.scorers import (
    ClassNormalizedScorer,
    ConfidentDkNNScorer,
    DCGANScorer,
    DkNNScorer,
    EnergyScorer,
    EnsembleScorer,
    HeatmapMassScorer,
    KNNScorer,
    LOFScorer,
    MahalanobisScorer,
    PatchKNNScorer,
    Scorer,
    WindowStatsScorer,
)
from dnnpiracy.config import GanConfig
from dnnpiracy.io import ArtifactError, atomic_write_text, git_commit, read_json, sha256_file
from dnnpiracy.models import ArchInfo

FORMAT = "dnnpiracy-detector/1"
META_FILE, DETECTOR_FILE, TENSORS_FILE = "meta.json", "detector.json", "tensors.safetensors"

# the only classes an artifact may name (nothing is imported or constructed by a name read from a file)
SCORER_CLASSES: dict[str, type[Scorer]] = {cls.__name__: cls for cls in (
    KNNScorer, MahalanobisScorer, PatchKNNScorer, WindowStatsScorer, DkNNScorer, ConfidentDkNNScorer, DCGANScorer,
    HeatmapMassScorer, EnergyScorer, EnsembleScorer, ClassNormalizedScorer, LOFScorer)}
DATACLASSES: dict[str, type] = {"GanConfig": GanConfig}
# module class -> (the class, its constructor arguments taken from the scorer that holds it)
MODULES: dict[str, tuple[type[nn.Module], Any]] = {
    "Discriminator": (Discriminator, lambda owner: {"cfg": owner.cfg}),
}
MODEL_KEYS = ("arch", "stem", "dataset", "num_classes")


def _pack_patch_refs(scorer: PatchKNNScorer, cand: torch.Tensor) -> torch.Tensor | None:
    """PatchKNNScorer keeps, per class, every reference window repeated for each grid position within reach, in
    the (L, d + 1, n*m) layout of ``_candidates``: (2 reach + 1)^2 times the (n, L, d) windows themselves.  Those are
    read back from the centre column of each run (offset 0: the window at its own position; the factor -2 is
    exact) and the candidates are rebuilt from them on load; None (store the candidates whole) unless the rebuild
    gives the very same bits."""
    m = (2 * scorer.reach + 1) ** 2
    if cand.ndim != 3 or cand.shape[2] % m:
        return None
    windows = (cand[:, :-1, (m - 1) // 2::m] / -2.0).permute(2, 0, 1).contiguous()     # (n, L, d)
    return windows if torch.equal(scorer._candidates(windows), cand) else None


# scorer class -> {attribute: (pack, unpack)}: derived state stored compactly, rebuilt bit for bit on load
PACKED: dict[type, dict[str, tuple[Any, Any]]] = {
    PatchKNNScorer: {"refs": (_pack_patch_refs, lambda scorer, windows: scorer._candidates(windows))},
}


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


# ------------------------------------------------------------------------------------------------ encoding
class _Encoder:
    """Walk an object into a JSON tree, tensors going to ``self.tensors`` under path-like keys."""

    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}

    def tensor(self, t: torch.Tensor, path: str) -> dict:
        if path in self.tensors:
            raise ArtifactError(f"two tensors would be stored under {path!r}")
        # a copy: safetensors refuses tensors that share memory, and a view must not drag its whole storage along
        self.tensors[path] = t.detach().cpu().clone().contiguous()
        return {"__tensor__": path}

    def encode(self, obj: Any, path: str, owner: Any = None) -> Any:
        if obj is None or isinstance(obj, (bool, str)):
            return obj
        if isinstance(obj, int):
            return int(obj)
        if isinstance(obj, float):
            return obj if math.isfinite(obj) else {"__float__": repr(obj)}    # 'inf', '-inf', 'nan'
        if isinstance(obj, torch.Tensor):
            return self.tensor(obj, path)
        if isinstance(obj, np.generic):          # a numpy scalar: its Python value
            return self.encode(obj.item(), path, owner)
        if isinstance(obj, np.ndarray) and obj.dtype.kind in "biuf":
            return {"__ndarray__": self.tensor(torch.from_numpy(np.ascontiguousarray(obj)), path)["__tensor__"]}
        if isinstance(obj, tuple):
            return {"__tuple__": [self.encode(v, f"{path}.{i}", owner) for i, v in enumerate(obj)]}
        if isinstance(obj, list):
            return [self.encode(v, f"{path}.{i}", owner) for i, v in enumerate(obj)]
        if isinstance(obj, dict):
            kinds = {type(k) for k in obj}
            if not obj or kinds == {int}:
                key_type = "int"
            elif kinds == {str}:
                key_type = "str"
            else:
                raise ArtifactError(f"cannot store {path}: dict keys must all be ints or all strings, got "
                                    f"{sorted(t.__name__ for t in kinds)}")
            return {"__dict__": key_type,
                    "items": {str(k): self.encode(v, f"{path}.{k}", owner) for k, v in obj.items()}}
        if isinstance(obj, Scorer):
            return self.scorer(obj, path)
        if isinstance(obj, nn.Module):
            return self.module(obj, path, owner)
        if dataclasses.is_dataclass(obj) and type(obj).__name__ in DATACLASSES:
            return {"__dataclass__": type(obj).__name__,
                    "fields": {f.name: self.encode(getattr(obj, f.name), f"{path}.{f.name}", owner)
                               for f in dataclasses.fields(obj)}}
        if type(obj).__name__ == "LocalOutlierFactor":
            return self.lof(obj, path)
        raise ArtifactError(f"cannot store {path}: objects of type {type(obj).__module__}.{type(obj).__name__} "
                            "have no safe (non-pickle) representation")

    def scorer(self, obj: Scorer, path: str) -> dict:
        name = type(obj).__name__
        if SCORER_CLASSES.get(name) is not type(obj):
            raise ArtifactError(f"cannot store {path}: unknown scorer class {type(obj).__module__}.{name}")
        state = {}
        for k, v in vars(obj).items():
            packer = PACKED.get(type(obj), {}).get(k)
            if packer is not None and isinstance(v, dict) and all(isinstance(t, torch.Tensor) for t in v.values()):
                packed = {c: packer[0](obj, t) for c, t in v.items()}
                if all(p is not None for p in packed.values()):
                    state[k] = {"__packed__": self.encode(packed, f"{path}.{k}", obj)}
                    continue
            state[k] = self.encode(v, f"{path}.{k}", obj)
        return {"__scorer__": name, "state": state}

    def module(self, obj: nn.Module, path: str, owner: Any) -> dict:
        name = type(obj).__name__
        if name not in MODULES or MODULES[name][0] is not type(obj):
            raise ArtifactError(f"cannot store {path}: unknown module class {type(obj).__module__}.{name}")
        init = MODULES[name][1](owner)
        state = {k: self.tensor(v, f"{path}.{k}")["__tensor__"] for k, v in obj.state_dict().items()}
        return {"__module__": name, "init": self.encode(init, f"{path}.__init__", owner), "state": state}

    def lof(self, obj: Any, path: str) -> dict:
        if not hasattr(obj, "_fit_X"):
            raise ArtifactError(f"cannot store {path}: LocalOutlierFactor is not fitted")
        params = obj.get_params()
        bad = [k for k, v in params.items() if not (v is None or isinstance(v, (bool, int, float, str)))]
        if bad:
            raise ArtifactError(f"cannot store {path}: LocalOutlierFactor parameters {bad} are not plain values")
        return {"__sklearn__": "LocalOutlierFactor", "params": params,
                "fit_X": self.tensor(torch.from_numpy(obj._fit_X.copy()), f"{path}.fit_X")}


class _Decoder:
    """Rebuild what :class:`_Encoder` walked, from the JSON tree and the loaded tensors."""

    def __init__(self, tensors: dict[str, torch.Tensor], where: Path) -> None:
        self.tensors, self.where = tensors, where

    def fail(self, msg: str) -> ArtifactError:
        return ArtifactError(f"{self.where}: {msg}")

    def tensor(self, key: Any) -> torch.Tensor:
        if not isinstance(key, str) or key not in self.tensors:
            raise self.fail(f"tensor {key!r} is missing from {TENSORS_FILE}")
        return self.tensors[key]

    def decode(self, node: Any) -> Any:
        if node is None or isinstance(node, (bool, int, float, str)):
            return node
        if isinstance(node, list):
            return [self.decode(v) for v in node]
        if not isinstance(node, dict):
            raise self.fail(f"unexpected {type(node).__name__} in the scorer state")
        if "__tensor__" in node:
            return self.tensor(node["__tensor__"])
        if "__ndarray__" in node:
            return self.tensor(node["__ndarray__"]).numpy()
        if "__float__" in node:
            if node["__float__"] not in ("inf", "-inf", "nan"):
                raise self.fail(f"bad float {node['__float__']!r}")
            return float(node["__float__"])
        if "__tuple__" in node:
            return tuple(self.decode(v) for v in node["__tuple__"])
        if "__dict__" in node:
            key_type, items = node["__dict__"], node.get("items")
            if key_type not in ("int", "str") or not isinstance(items, dict):
                raise self.fail(f"bad dict node (keys {key_type!r})")
            try:
                return {(int(k) if key_type == "int" else k): self.decode(v) for k, v in items.items()}
            except ValueError as exc:
                raise self.fail(f"bad integer key: {exc}") from exc
        if "__scorer__" in node:
            return self.scorer(node)
        if "__module__" in node:
            return self.module(node)
        if "__dataclass__" in node:
            cls = DATACLASSES.get(node["__dataclass__"])
            if cls is None:
                raise self.fail(f"unknown config class {node['__dataclass__']!r}")
            try:
                return cls(**{k: self.decode(v) for k, v in node.get("fields", {}).items()})
            except (TypeError, ValueError) as exc:
                raise self.fail(f"bad {cls.__name__}: {exc}") from exc
        if "__sklearn__" in node:
            return self.lof(node)
        raise self.fail(f"unknown node with keys {sorted(node)}")

    def scorer(self, node: dict) -> Scorer:
        name = node["__scorer__"]
        cls = SCORER_CLASSES.get(name)
        if cls is None:
            raise self.fail(f"unknown scorer {name!r}; this version knows {', '.join(SCORER_CLASSES)}")
        obj = cls.__new__(cls)       # the state is set below, attribute by attribute, as it was when saved
        state = node.get("state")
        if not isinstance(state, dict):
            raise self.fail(f"scorer {name!r} has no state")
        packed = {k: v for k, v in state.items() if isinstance(v, dict) and "__packed__" in v}
        for k, v in state.items():
            if k not in packed:
                setattr(obj, k, self.decode(v))
        for k, v in packed.items():           # rebuilt once the plain attributes they depend on are set
            unpack = PACKED.get(cls, {}).get(k)
            if unpack is None:
                raise self.fail(f"scorer {name!r} has no packed attribute {k!r}")
            try:
                setattr(obj, k, {c: unpack[1](obj, t) for c, t in self.decode(v["__packed__"]).items()})
            except (TypeError, ValueError, RuntimeError, AttributeError) as exc:
                raise self.fail(f"cannot rebuild {name}.{k}: {exc}") from exc
        return obj

    def module(self, node: dict) -> nn.Module:
        name = node["__module__"]
        if name not in MODULES:
            raise self.fail(f"unknown module class {name!r}")
        init = self.decode(node.get("init", {}))
        try:
            mod = MODULES[name][0](**init)
            mod.load_state_dict({k: self.tensor(v) for k, v in node.get("state", {}).items()}, strict=True)
        except (TypeError, RuntimeError) as exc:
            raise self.fail(f"cannot rebuild {name}: {str(exc).splitlines()[0]}") from exc
        return mod.eval()

    def lof(self, node: dict) -> Any:
        if node["__sklearn__"] != "LocalOutlierFactor":
            raise self.fail(f"unknown scikit-learn class {node['__sklearn__']!r}")
        from sklearn.neighbors import LocalOutlierFactor
        try:
            return LocalOutlierFactor(**node["params"]).fit(self.decode(node["fit_X"]).numpy())
        except (TypeError, ValueError, KeyError) as exc:
            raise self.fail(f"cannot refit LocalOutlierFactor: {exc}") from exc


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

    enc = _Encoder()
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
    dec = _Decoder(tensors, path)
    try:
        spec = DetectorSpec(**body["spec"])
        cam_info = body["cam"]
        scorer = dec.decode(body["scorer"])
        if not isinstance(scorer, Scorer):
            raise dec.fail("the stored scorer is not a scorer")
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
