"""IDX files (the MNIST / Fashion-MNIST format), gzip-compressed or raw, read and written with strict checks."""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from dnnpiracy.io import atomic_write_bytes

IMAGES_MAGIC = 0x00000803   # uint8, 3 dims (N, rows, cols)
LABELS_MAGIC = 0x00000801   # uint8, 1 dim (N,)


class DataError(RuntimeError):
    """A missing, corrupt or inconsistent data file or dataset (the message names it)."""


def _read_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    if path.suffix != ".gz":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: not a valid gzip file ({exc})") from exc


def read_idx(path: str | Path) -> np.ndarray:
    """Read a uint8 IDX file (``.gz`` or raw) into an array of its declared shape."""
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise DataError(f"{path}: too short for an IDX header ({len(data)} bytes)")
    magic = struct.unpack(">I", data[:4])[0]
    if magic not in (IMAGES_MAGIC, LABELS_MAGIC):
        raise DataError(f"{path}: bad IDX magic 0x{magic:08x} (expected 0x{IMAGES_MAGIC:08x} for images or "
                        f"0x{LABELS_MAGIC:08x} for labels)")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: truncated IDX header ({len(data)} of {header} bytes)")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = math.prod(dims)
    actual = len(data) - header
    if actual != expected:
        raise DataError(f"{path}: IDX payload is {actual} bytes but dims {dims} need exactly {expected} bytes")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims).copy()


def encode_idx(array: np.ndarray) -> bytes:
    """Encode a uint8 array with 1 dim (labels) or 3 dims (images) as IDX bytes."""
    array = np.ascontiguousarray(array)
    if array.dtype != np.uint8 or array.ndim not in (1, 3):
        raise DataError(f"IDX needs a uint8 array with 1 or 3 dims, got {array.dtype} with {array.ndim} dims")
    magic = IMAGES_MAGIC if array.ndim == 3 else LABELS_MAGIC
    return struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.tobytes()


def write_idx(path: str | Path, array: np.ndarray) -> Path:
    """Write ``array`` as IDX, gzip-compressed when ``path`` ends in ``.gz`` (atomically)."""
    path = Path(path)
    payload = encode_idx(array)
    if path.suffix == ".gz":
        payload = gzip.compress(payload, mtime=0)
    return atomic_write_bytes(path, payload)


def read_idx_pair(images_path: str | Path, labels_path: str | Path,
                  num_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Read matching image (N, 28, 28) and label (N,) files and check they agree."""
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DataError(f"{images_path}: expected images of shape (N, 28, 28), got {images.shape}")
    if labels.ndim != 1:
        raise DataError(f"{labels_path}: expected a 1-D label file, got shape {labels.shape}")
    if len(images) != len(labels):
        raise DataError(f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels")
    if labels.size and int(labels.max()) >= num_classes:
        raise DataError(f"{labels_path}: label {int(labels.max())} outside 0..{num_classes - 1}")
    return images, labels
