"""Removal-attack cells of a benchmark grid: each (target, removal attack, attacker data) is one cell, a JSON file in
``<cache>/removal_cells/`` written atomically, computed beside the target's detector cells (``benchmark.run_target``).

A cell records the new classifier's clean accuracy on the evaluation split (the split every detector column is scored
on), its accuracy on the embedded and fresh triggers, and the owner's verification (binomial, alpha 0.01) with its
p-value; the settings are those of docs/peers_protocol.md (``attack/removal.py``)."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from dnnpiracy.attack.removal import REMOVALS
from dnnpiracy.experiments.runner import config_key
from dnnpiracy.io import git_commit, read_json, write_json
from dnnpiracy.training import accuracy, predict_labels
from dnnpiracy.watermark.schemes import verification_chance
from dnnpiracy.watermark.verify import verify

REMOVAL_DIR = "removal_cells"
ATTACKER_DATA = {"surrogate": "the attacker's labelled surrogate images (the paper's threat model)",
                 "train10": "10 % of the training set, drawn by the seed, true labels (a stronger attacker)"}


@dataclass(frozen=True)
class RemovalCell:
    target: object            # a benchmark.SchemeTarget
    removal: str              # a key of attack.removal.REMOVALS
    data: str = "surrogate"   # a key of ATTACKER_DATA

    def __post_init__(self) -> None:
        if self.removal not in REMOVALS:
            raise ValueError(f"unknown removal {self.removal!r}; choose one of {', '.join(REMOVALS)}")
        if self.data not in ATTACKER_DATA:
            raise ValueError(f"unknown attacker data {self.data!r}; choose one of {', '.join(ATTACKER_DATA)}")

    def key(self) -> str:
        d = {**asdict(self.target), "removal": self.removal, "data": self.data, "v": 1}
        del d["gan_epochs"]
        return config_key(d)


def removal_path(cache_dir: Path, cell: RemovalCell) -> Path:
    return Path(cache_dir) / REMOVAL_DIR / f"{cell.key()}.json"


def attacker_data(cell: RemovalCell, ds, splits) -> tuple[torch.Tensor, torch.Tensor]:
    """The images (and true labels) the removal trains on."""
    if cell.data == "surrogate":
        sur = splits.surrogate_idx
        return ds.test_x[sur], ds.test_y[sur]
    gen = torch.Generator().manual_seed(cell.target.seed)
    idx = torch.randperm(len(ds.train_x), generator=gen)[: len(ds.train_x) // 10]
    return ds.train_x[idx], ds.train_y[idx]


def run_removal_cell(cell: RemovalCell, ds, target, fresh, splits) -> dict:
    """Remove, then measure what the owner and the users of the new classifier see."""
    t = cell.target
    t0 = time.perf_counter()
    x, y = attacker_data(cell, ds, splits)
    attack = REMOVALS[cell.removal]()
    result = attack.remove(target.model, x, y if attack.reads_labels else None, seed=t.seed, arch=t.train.arch,
                           stem=t.train.stem, num_classes=ds.num_classes)
    ev = splits.evaluation_idx
    ex, ey = ds.test_x[ev], ds.test_y[ev]
    before, after = accuracy(target.model, ex, ey), accuracy(result.model, ex, ey)
    trig = target.triggers
    chance = verification_chance(trig.config, ds.num_classes)
    v = verify(lambda q: predict_labels(result.model, q), trig.images, trig.labels, chance=chance)
    v_before = verify(lambda q: predict_labels(target.model, q), trig.images, trig.labels, chance=chance)
    metrics = {"target_test_accuracy": before, "removed_test_accuracy": after, "accuracy_loss": before - after,
               "target_trigger_accuracy": accuracy(target.model, trig.images, trig.labels),
               "removed_trigger_accuracy": accuracy(result.model, trig.images, trig.labels),
               "removed_fresh_trigger_accuracy": accuracy(result.model, fresh.images, fresh.labels),
               "verification_target": v_before.to_dict(), "verification_removed": v.to_dict()}
    return {"cell": {**asdict(t), "removal": cell.removal, "data": cell.data}, "metrics": metrics,
            "info": result.info, "seconds": time.perf_counter() - t0, "device": "cpu" if not torch.cuda.is_available()
            else str(next(target.model.parameters()).device), "git_commit": git_commit(), "dataset_note": ds.note}


def run_removals(cells: list[RemovalCell], ds, target, fresh, splits, cache_dir: Path) -> list[dict]:
    for c in cells:
        p = removal_path(cache_dir, c)
        if not p.exists():
            write_json(p, run_removal_cell(c, ds, target, fresh, splits))
    return [read_json(removal_path(cache_dir, c)) for c in cells]


__all__ = ["RemovalCell", "REMOVAL_DIR", "ATTACKER_DATA", "removal_path", "attacker_data", "run_removal_cell",
           "run_removals"]
