"""Datasets (Fashion-MNIST, MNIST, mnist-10k, digits-tiny), their provenance checks, and stratified splits."""

from dnnpiracy.data.datasets import (
    DATASETS,
    Dataset,
    dataset_summary,
    default_data_dir,
    load_dataset,
    make_digits_tiny,
)
from dnnpiracy.data.idx import DataError, read_idx, write_idx
from dnnpiracy.data.splits import Splits, make_splits, stratified_split

__all__ = [
    "DATASETS",
    "DataError",
    "Dataset",
    "Splits",
    "dataset_summary",
    "default_data_dir",
    "load_dataset",
    "make_digits_tiny",
    "make_splits",
    "read_idx",
    "stratified_split",
    "write_idx",
]
