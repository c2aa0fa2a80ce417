"""Profiles (the paper's hyperparameters, or what fits a 2-core CPU) and the tables' specs (``experiments/tables/
table<N>.toml``): what a reproduced table runs, before any cell is computed."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from importlib import resources

from dnnpiracy.config import DetectorConfig
from dnnpiracy.data import DataError, Dataset, load_dataset

TABLES = ("1", "2", "3", "4", "5")


@dataclass(frozen=True)
class Profile:
    name: str
    epochs: dict[str, int]            # dataset -> target training epochs
    gan_epochs: dict[str, int]        # dataset -> DCGAN epochs
    arch_map: dict[str, str]          # the paper's arch -> the arch used (tables other than III)
    keep_archs: bool                  # Table III keeps its architectures
    note: str
    # dataset -> the attacker's labelled share of the test set; unlisted datasets take the paper's 5 %
    surrogate_fractions: dict[str, float] = field(default_factory=dict)
    fpr_confidence: float | None = DetectorConfig.fpr_confidence     # the calibrated rule's (None: on average only)

    def surrogate_fraction(self, dataset: str) -> float:
        return self.surrogate_fractions.get(dataset, DetectorConfig.surrogate_fraction)


# The paper's attacker holds 500 labelled test images (5 % of a 10,000-image test set); on mnist-10k that is 25 %.
PAPER_SURROGATE = {"mnist-10k": 0.25}
_PAPER_SURROGATE_NOTE = ("surrogate set = the paper's 500 images (25 % of mnist-10k's 2,000-image test split, 5 % of a "
                         "10,000-image test set)")

PROFILES = {
    "paper": Profile("paper", {"mnist": 15, "mnist-10k": 15, "fashion-mnist": 15},
                     {"mnist": 200, "mnist-10k": 200, "fashion-mnist": 200}, {}, True,
                     "the paper's hyperparameters: ResNet-34 (101/152 in Table III), 15 epochs, batch 128, "
                     "lr 1e-4, DCGAN 200 epochs; triggers oversampled x20 per epoch; " + _PAPER_SURROGATE_NOTE,
                     PAPER_SURROGATE),
    "cpu": Profile("cpu", {"mnist": 2, "mnist-10k": 3, "fashion-mnist": 2},
                   {"mnist": 10, "mnist-10k": 10, "fashion-mnist": 25}, {"resnet34": "resnet18"}, True,
                   "reduced to fit 2 CPU cores: ResNet-18 instead of ResNet-34 (Table III keeps ResNet-34/101/152), "
                   "3 epochs on mnist-10k / 2 on Fashion-MNIST instead of 15, DCGAN 10 epochs on MNIST / 25 on "
                   "Fashion-MNIST instead of 200; "
                   "triggers oversampled x20 per epoch; batch 128, lr 1e-4, tau as the paper; " + _PAPER_SURROGATE_NOTE,
                   PAPER_SURROGATE),
}


def load_table(table: str) -> dict:
    if table not in TABLES:
        raise ValueError(f"unknown table {table!r}; choose one of {', '.join(TABLES)} or all")
    text = resources.files("dnnpiracy.experiments.tables").joinpath(f"table{table}.toml").read_text()
    spec = tomllib.loads(text)
    spec["id"] = table
    return spec


def resolve_dataset(name: str, data_dir: str | None) -> Dataset:
    """'mnist' means the full MNIST when its files are present or downloadable, else mnist-10k (and says so)."""
    if name == "mnist":
        try:
            return load_dataset("mnist", data_dir, download=True)
        except DataError:
            return load_dataset("mnist-10k", data_dir)
    return load_dataset(name, data_dir)


def table_stem(spec: dict) -> str:
    """The file stem of a table's outputs: ``table<N>``, or ``table<N>-<scheme>`` for another watermark scheme."""
    scheme = spec.get("scheme", "content")
    return f"table{spec['id']}" + ("" if scheme == "content" else f"-{scheme}")
