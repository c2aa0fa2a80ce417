"""A fitted scorer as a JSON tree plus named tensors, walked generically, never pickled (the detector artifact's
``detector.json`` and ``tensors.safetensors``, :mod:`dnnpiracy.attack.artifact`):

- tensors go to the tensor dict under path-like keys (``scorer.components.3.refs.7``);
- ints, floats (``inf``/``nan`` spelled out), strings, bools, None, lists and tuples go into JSON;
- a nested scorer (``EnsembleScorer.components``, ``ClassNormalizedScorer.base``) is walked the same way, and is
  rebuilt from an allow-list of scorer classes (an unknown class name is refused, nothing is imported by name);
- a dict keyed by class ints (or by strings) keeps its keys as strings, with the key type recorded;
- a torch module (the DCGAN scorer's discriminators) is stored as its state_dict plus the constructor arguments,
  rebuilt from an allow-list and loaded strictly;
- scikit-learn's ``LocalOutlierFactor`` (the ``lof`` scorer) cannot be stored as tensors: its parameters and the
  reference features it was fitted on are stored, and it is refitted on load (deterministic);
- the few config dataclasses a scorer holds (``GanConfig``) are stored field by field.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dnnpiracy.attack.dcgan import Discriminator
from dnnpiracy.attack.scorers import (
    ClassNormalizedScorer,
    ConfidentDkNNScorer,
    DCGANScorer,
    DkNNScorer,
    EnergyScorer,
    EnsembleScorer,
    HeatmapMassScorer,
    KNNScorer,
    KthNeighbourScorer,
    LOFScorer,
    MahalanobisScorer,
    PatchKNNScorer,
    ScaleUpScorer,
    Scorer,
    STRIPScorer,
    TiedMahalanobisScorer,
    WindowStatsScorer,
)
from dnnpiracy.config import GanConfig
from dnnpiracy.io import ArtifactError

# the only classes an artifact may name (nothing is imported or constructed by a name read from a file)
SCORER_CLASSES: dict[str, type[Scorer]] = {cls.__name__: cls for cls in (
    KNNScorer, MahalanobisScorer, PatchKNNScorer, WindowStatsScorer, DkNNScorer, ConfidentDkNNScorer, DCGANScorer,
    HeatmapMassScorer, EnergyScorer, EnsembleScorer, ClassNormalizedScorer, LOFScorer, STRIPScorer, ScaleUpScorer,
    TiedMahalanobisScorer, KthNeighbourScorer)}
DATACLASSES: dict[str, type] = {"GanConfig": GanConfig}
# module class -> (the class, its constructor arguments taken from the scorer that holds it)
MODULES: dict[str, tuple[type[nn.Module], Any]] = {
    "Discriminator": (Discriminator, lambda owner: {"cfg": owner.cfg}),
}


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


class Encoder:
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
            if k == "_model":      # the target a query scorer is bound to: the served model, bound again on load
                continue
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


class Decoder:
    """Rebuild what :class:`Encoder` walked, from the JSON tree and the loaded tensors."""

    def __init__(self, tensors: dict[str, torch.Tensor], where: Path, tensors_file: str) -> None:
        self.tensors, self.where, self.tensors_file = tensors, where, tensors_file

    def fail(self, msg: str) -> ArtifactError:
        return ArtifactError(f"{self.where}: {msg}")

    def tensor(self, key: Any) -> torch.Tensor:
        if not isinstance(key, str) or key not in self.tensors:
            raise self.fail(f"tensor {key!r} is missing from {self.tensors_file}")
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


__all__ = ["SCORER_CLASSES", "DATACLASSES", "MODULES", "PACKED", "Encoder", "Decoder"]
