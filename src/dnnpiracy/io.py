"""Safe, atomic artifacts.

Every file this project writes goes through :func:`atomic_write_bytes` (write to a temporary file in the same
folder, fsync, ``os.replace``), so an interrupted run never leaves a half-written artifact behind.  Model weights are
stored as safetensors (plain tensors, no pickle) next to a JSON metadata file; loading checks that metadata against
what the caller asked for.  Checkpoints that carry optimizer state use ``torch.load(weights_only=True)``, which refuses
any pickle payload that would execute code.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file


class ArtifactError(RuntimeError):
    """A missing, corrupt or mismatched artifact."""


def _umask_mode() -> int:
    """The mode a plain ``open(..., "w")`` would give a new file (0o666 less the umask)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _publish(tmp: str, path: Path) -> None:
    """Give the temporary file the usual mode (mkstemp makes it 0600), then rename it into place."""
    os.chmod(tmp, _umask_mode())
    os.replace(tmp, path)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        _publish(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"missing file: {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"corrupt JSON in {path}: {exc}") from exc


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def git_commit() -> str:
    """The commit of the working tree this code runs from ("unknown" outside git; "+dirty" if the code -- src/,
    scripts/, pyproject.toml -- differs from it; results written by the run itself do not count).
    ``$DNNPIRACY_GIT_COMMIT``, when set, is reported instead: a copy of the tree sent to another machine (a lent GPU)
    may carry a stale .git, so the sender names the commit it sent."""
    fallback = os.environ.get("DNNPIRACY_GIT_COMMIT", "unknown")
    if "DNNPIRACY_GIT_COMMIT" in os.environ:
        return fallback
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=10)
        if rev.returncode != 0:
            return fallback
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=here, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "src", "scripts",
                                "pyproject.toml"], cwd=top or here, capture_output=True, text=True, timeout=10)
        return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return fallback


# --------------------------------------------------------------------------------------------- tensors + metadata
def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> Path:
    """Write ``path`` (safetensors) and ``path.with_suffix('.json')`` (metadata), both atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp)
        _publish(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    write_json(path.with_suffix(".json"), metadata)
    return path


def load_tensors(path: str | Path, expect: dict[str, Any] | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """Load a safetensors file and its JSON metadata; refuse if any ``expect`` key differs from the metadata."""
    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"missing artifact: {path}")
    meta_path = path.with_suffix(".json")
    meta = read_json(meta_path) if meta_path.exists() else {}
    for key, want in (expect or {}).items():
        have = meta.get(key)
        if have != want:
            raise ArtifactError(f"artifact {path} has {key}={have!r}, but {want!r} was requested")
    try:
        tensors = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types
        raise ArtifactError(f"cannot read {path} as safetensors: {exc}") from exc
    return tensors, meta


def safe_torch_load(path: str | Path) -> Any:
    """``torch.load`` that never executes code from the file (weights_only=True) and names the file on failure."""
    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"missing checkpoint: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ArtifactError(f"refusing to load {path}: not a plain-tensor checkpoint ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else ''})") from exc


def atomic_torch_save(path: str | Path, obj: Any) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        _publish(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
