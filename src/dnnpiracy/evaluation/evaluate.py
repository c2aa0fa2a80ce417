"""Evaluate a pirated classifier: detection (FPR on clean evaluation inputs, FNR on trigger inputs), accuracy
(target vs pirated) and the owner's verification verdict against both."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dnnpiracy.attack import Detector, Inspection, PiratedClassifier
from dnnpiracy.evaluation.metrics import auroc, fnr, fpr, tpr_at_fpr, wilson_interval
from dnnpiracy.watermark import TriggerSet, verify


@dataclass
class Inspected:
    """Inputs with their labels and the detector's view of them (computed once, reused by every metric)."""

    x: torch.Tensor
    y: torch.Tensor
    inspection: Inspection

    @property
    def margins(self) -> torch.Tensor:
        """score - threshold (> 0 means flagged), comparable across classes for ROC analysis.  Where a threshold is
        infinite (a calibrated rule asked for a quantile the surrogate set cannot give, or a class with no surrogate
        input) the raw score stands in, so the ranking is not lost in ties."""
        thr = self.inspection.thresholds
        return torch.where(torch.isfinite(thr), self.inspection.scores - thr, self.inspection.scores)


def inspect(detector: Detector, x: torch.Tensor, y: torch.Tensor, probe=None) -> Inspected:
    return Inspected(x, y, detector.inspect(x, probe, heatmaps=True))     # the reports show the heatmaps


def evaluate(detector: Detector, clean: Inspected, triggers: Inspected, fresh: Inspected | None,
             trigger_label: int, strategy: str = "uniform", seed: int = 0, significance: float = 0.01,
             chance: float | None = None) -> dict:
    """All metrics of one (target, detector) pair.  Rates are fractions; FNR over the embedded triggers is the
    paper's metric (a multiple of 1/15 for 15 triggers).  Each trigger is judged against its own label
    (``triggers.y``): one trigger label for most schemes, a random label per trigger for ``abstract``;
    ``trigger_label`` is kept for callers and reports."""
    pirated = PiratedClassifier(detector, strategy, seed)
    clean_ans = pirated.answer(clean.x, clean.inspection)
    trig_ans = pirated.answer(triggers.x, triggers.inspection)
    n_clean, n_trig = len(clean.y), len(triggers.y)
    k_fp, k_fn = int(clean_ans.flags.sum()), int((~trig_ans.flags).sum())
    target_acc = float((clean_ans.target_labels == clean.y).float().mean())
    pirated_acc = float((clean_ans.labels == clean.y).float().mean())
    out = {
        "n_clean": n_clean, "n_triggers": n_trig,
        "fpr": fpr(clean_ans.flags), "fpr_ci95": wilson_interval(k_fp, n_clean),
        "fnr": fnr(trig_ans.flags), "fnr_ci95": wilson_interval(k_fn, n_trig),
        "auroc": auroc(clean.margins, triggers.margins),
        "tpr_at_1pct_fpr": tpr_at_fpr(clean.margins, triggers.margins, 0.01),
        "target_test_accuracy": target_acc, "pirated_test_accuracy": pirated_acc,
        "accuracy_loss": target_acc - pirated_acc,
        "target_trigger_accuracy": float((trig_ans.target_labels == triggers.y).float().mean()),
        "pirated_trigger_accuracy": float((trig_ans.labels == triggers.y).float().mean()),
    }
    if fresh is not None:
        hit = fresh.inspection.predictions == fresh.y   # fresh triggers that actually carry the watermark
        out["n_fresh_effective"] = int(hit.sum())
        out["fresh_trigger_accuracy"] = float(hit.float().mean())
        out["fnr_fresh"] = fnr(fresh.inspection.flags[hit]) if hit.any() else float("nan")
        out["auroc_fresh"] = auroc(clean.margins, fresh.margins[hit]) if hit.any() else float("nan")
    # the owner's black-box verification, replayed on the answers computed above (same labels as querying)
    v_target = verify(lambda _x: trig_ans.target_labels, triggers.x, triggers.y, significance=significance,
                      chance=chance)
    v_pirated = verify(lambda _x: trig_ans.labels, triggers.x, triggers.y, significance=significance, chance=chance)
    out["verification_target"] = v_target.to_dict()
    out["verification_pirated"] = v_pirated.to_dict()
    return out


def inspect_sets(detector: Detector, clean_x, clean_y, triggers: TriggerSet, fresh: TriggerSet | None,
                 probes: dict | None = None) -> tuple[Inspected, Inspected, Inspected | None]:
    probes = probes or {}
    c = inspect(detector, clean_x, clean_y, probes.get("clean"))
    t = inspect(detector, triggers.images, triggers.labels, probes.get("triggers"))
    f = inspect(detector, fresh.images, fresh.labels, probes.get("fresh")) if fresh is not None else None
    return c, t, f
