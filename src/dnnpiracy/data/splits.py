"""Deterministic stratified splits (the attacker's surrogate set, and mnist-10k's train/test split)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from dnnpiracy.data.idx import DataError


@dataclass(frozen=True, eq=False)
class Splits:
    """The test set cut into the attacker's surrogate part and the evaluation part (both sorted indices)."""

    surrogate_idx: torch.Tensor
    evaluation_idx: torch.Tensor
    fraction: float
    seed: int


def _check_labels(labels: torch.Tensor) -> torch.Tensor:
    labels = torch.as_tensor(labels)
    if labels.ndim != 1 or labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise DataError(f"labels must be a 1-D integer tensor, got {labels.dtype} with shape {tuple(labels.shape)}")
    return labels.to(torch.int64)


def _fraction_counts(sizes: list[int], fraction: float) -> list[int]:
    """Per class ``round(fraction * n_c)`` (Python rounding), at least 1 if ``fraction > 0``, at most ``n_c``."""
    if not 0.0 <= fraction <= 1.0:
        raise DataError(f"fraction must be in [0, 1], got {fraction}")
    floor = 1 if fraction > 0 else 0
    return [min(n, max(floor, round(fraction * n))) for n in sizes]


def largest_remainder(sizes: list[int], total: int) -> list[int]:
    """Split ``total`` over classes proportionally to ``sizes``; the parts sum to exactly ``total``.

    Ties in the remainder go to the lower class index.
    """
    n = sum(sizes)
    if not 0 <= total <= n:
        raise DataError(f"cannot take {total} items from {n}")
    quotas = [total * s / n for s in sizes] if n else [0.0] * len(sizes)
    counts = [math.floor(q) for q in quotas]
    order = sorted(range(len(sizes)), key=lambda c: (-(quotas[c] - counts[c]), c))
    for c in order[: total - sum(counts)]:
        counts[c] += 1
    return counts


def stratified_split(labels: torch.Tensor, n_first: int | None = None, fraction: float | None = None,
                     seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Split indices per class into (first, second), both sorted int64.

    Give exactly one of ``n_first`` (first part has exactly that many items, allocated per class by largest
    remainder) or ``fraction`` (per class ``round(fraction * n_c)``, at least 1).  Members of the first part are
    drawn per class with a ``torch.Generator`` seeded with ``seed``.
    """
    labels = _check_labels(labels)
    if (n_first is None) == (fraction is None):
        raise DataError("stratified_split needs exactly one of n_first or fraction")
    classes = torch.unique(labels).tolist()
    members = [torch.nonzero(labels == c).flatten() for c in classes]
    sizes = [len(m) for m in members]
    if n_first is not None:
        counts = largest_remainder(sizes, n_first)
    else:
        assert fraction is not None
        counts = _fraction_counts(sizes, fraction)
    gen = torch.Generator().manual_seed(seed)
    chosen = [idx[torch.randperm(len(idx), generator=gen)[:k]] for idx, k in zip(members, counts, strict=True)]
    first = torch.sort(torch.cat(chosen)).values if chosen else torch.empty(0, dtype=torch.int64)
    mask = torch.ones(len(labels), dtype=torch.bool)
    mask[first] = False
    return first, torch.nonzero(mask).flatten()


def make_splits(test_y: torch.Tensor, surrogate_fraction: float = 0.05, seed: int = 0) -> Splits:
    """Stratified surrogate / evaluation split of the test set (per class ``round(fraction * n_c)``)."""
    if not 0.0 < surrogate_fraction < 1.0:
        raise DataError(f"surrogate_fraction must be in (0, 1), got {surrogate_fraction}")
    surrogate, evaluation = stratified_split(test_y, fraction=surrogate_fraction, seed=seed)
    return Splits(surrogate_idx=surrogate, evaluation_idx=evaluation, fraction=surrogate_fraction, seed=seed)
