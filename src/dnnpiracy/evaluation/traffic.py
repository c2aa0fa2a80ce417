"""Calibrating the detector's threshold on unlabelled deployment traffic instead of the surrogate set.

The calibrated detectors need labels only to *fit* their scorers; the threshold needs only clean scores.  The
surrogate set gives a few hundred of them at most (100 with 5 % of mnist-10k), so its split-conformal 99 % quantile is
one of their largest and the realised FPR scatters widely around the 1 % target; where it lands low, triggers are
missed.  A pirate serving the model sees
many unlabelled queries: calibrating on the first ``n_traffic`` of them (``Detector.calibrate_on_traffic``) pins the
quantile.  Evaluated here from a cell's stored scores: a random ``n_traffic`` of the clean evaluation inputs play the
traffic, FPR is measured on the remaining clean inputs, FNR on the trigger inputs, over ``repeats`` random draws.

``contaminated=True`` puts the owner's trigger queries into the calibration traffic too (the owner verified while the
pirate was calibrating): the quantile then lands on trigger scores, which is why the pirate must calibrate before
serving, or on traffic it trusts.

``traffic_fit`` goes one step further: the scorer itself is fitted on the surrogate set plus the traffic (each traffic
query standing in for the label the target predicts for it), so the per-class reference sets and covariances grow
from ~10 to ~60 inputs per class, and the threshold is the conformal quantile of all their out-of-fold scores.  It
needs the evidence (probes) of every input, not only stored scores.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

import torch

from dnnpiracy.attack.scorers import Evidence, Scorer
from dnnpiracy.attack.thresholds import conformal_threshold
from dnnpiracy.config import DetectorConfig
from dnnpiracy.evaluation.metrics import auroc


def traffic_calibration(clean_scores: torch.Tensor, trigger_scores: torch.Tensor, target_fpr: float = 0.01,
                        n_traffic: int = 500, repeats: int = 50, seed: int = 0, contaminated: bool = False,
                        confidence: float | None = DetectorConfig.fpr_confidence) -> dict:
    """Mean/std of held-out FPR and trigger FNR when the threshold is the conformal quantile of ``n_traffic`` random
    clean scores (plus every trigger score if ``contaminated``)."""
    clean, trig = torch.as_tensor(clean_scores).double(), torch.as_tensor(trigger_scores).double()
    if not 0 < target_fpr < 1:
        raise ValueError(f"target_fpr must be in (0, 1), got {target_fpr}")
    if not 0 < n_traffic < len(clean):
        raise ValueError(f"n_traffic must be in [1, {len(clean) - 1}] (there are {len(clean)} clean scores), "
                         f"got {n_traffic}")
    gen = torch.Generator().manual_seed(seed)
    fprs, fnrs, thresholds = [], [], []
    for _ in range(repeats):
        perm = torch.randperm(len(clean), generator=gen)
        cal, held = clean[perm[:n_traffic]], clean[perm[n_traffic:]]
        thr = conformal_threshold(torch.cat([cal, trig]) if contaminated else cal, target_fpr, confidence)
        fprs.append(float((held > thr).double().mean()))
        fnrs.append(float((trig <= thr).double().mean()))
        thresholds.append(thr)
    return {"target_fpr": target_fpr, "fpr_confidence": confidence, "n_traffic": n_traffic, "repeats": repeats,
            "contaminated": contaminated,
            "n_heldout": len(clean) - n_traffic, "n_triggers": len(trig),
            "fpr_mean": statistics.fmean(fprs), "fpr_std": _sd(fprs),
            "fnr_mean": statistics.fmean(fnrs), "fnr_std": _sd(fnrs),
            "threshold_mean": statistics.fmean(thresholds)}


def traffic_fit(make_scorer: Callable[[], Scorer], surrogate: Evidence, surrogate_y: torch.Tensor,
                surrogate_pred: torch.Tensor, clean: Evidence, clean_pred: torch.Tensor, triggers: Evidence,
                trigger_pred: torch.Tensor, target_fpr: float = 0.01, n_traffic: int = 500, repeats: int = 10,
                seed: int = 0, folds: int = 0, confidence: float | None = DetectorConfig.fpr_confidence) -> dict:
    """Over ``repeats`` draws of ``n_traffic`` clean inputs as unlabelled traffic, held-out FPR / trigger FNR / AUROC
    of three thresholdings of the same scorer design, paired on the draw:

    - ``surrogate``: fitted and thresholded on the surrogate set alone (the tables' rule);
    - ``threshold``: fitted on the surrogate set, thresholded on the traffic's scores;
    - ``fit``: fitted and thresholded (out-of-fold) on surrogate + traffic, traffic labelled by ``clean_pred``.

    ``make_scorer`` returns a fresh, unfitted scorer.  The surrogate-only fit does not depend on the draw and runs
    once."""
    if not 0 < n_traffic < len(clean_pred):
        raise ValueError(f"n_traffic must be in [1, {len(clean_pred) - 1}] (there are {len(clean_pred)} clean "
                         f"inputs), got {n_traffic}")
    base = make_scorer()
    base_oof = base.oof_scores(surrogate, surrogate_y, surrogate_pred, folds, seed)
    base.fit(surrogate, surrogate_y, surrogate_pred)
    base_clean, base_trig = base.score(clean, clean_pred), base.score(triggers, trigger_pred)
    base_thr = conformal_threshold(base_oof, target_fpr, confidence)
    gen = torch.Generator().manual_seed(seed)
    rates: dict[str, dict[str, list[float]]] = {m: {"fpr": [], "fnr": [], "auroc": []}
                                                for m in ("surrogate", "threshold", "fit")}

    def record(mode: str, held: torch.Tensor, trig: torch.Tensor, thr: float) -> None:
        rates[mode]["fpr"].append(float((held > thr).double().mean()))
        rates[mode]["fnr"].append(float((trig <= thr).double().mean()))
        rates[mode]["auroc"].append(auroc(held, trig))

    for _ in range(repeats):
        perm = torch.randperm(len(clean_pred), generator=gen)
        tr, held = perm[:n_traffic], perm[n_traffic:]
        record("surrogate", base_clean[held], base_trig, base_thr)
        record("threshold", base_clean[held], base_trig, conformal_threshold(base_clean[tr], target_fpr, confidence))
        ev = Evidence.cat([surrogate, clean.take(tr)])
        y = torch.cat([surrogate_y, clean_pred[tr]])
        y_pred = torch.cat([surrogate_pred, clean_pred[tr]])
        sc = make_scorer()
        oof = sc.oof_scores(ev, y, y_pred, folds, seed)
        sc.fit(ev, y, y_pred)
        record("fit", sc.score(clean.take(held), clean_pred[held]), sc.score(triggers, trigger_pred),
               conformal_threshold(oof, target_fpr, confidence))
    out = {"target_fpr": target_fpr, "fpr_confidence": confidence, "n_traffic": n_traffic,
           "repeats": repeats, "folds": folds,
           "n_surrogate": len(surrogate_y), "n_heldout": len(clean_pred) - n_traffic, "n_triggers": len(trigger_pred)}
    for mode, r in rates.items():
        for k, v in r.items():
            out[f"{mode}_{k}_mean"], out[f"{mode}_{k}_std"] = statistics.fmean(v), _sd(v)
    return out


def _sd(xs: list[float]) -> float:
    return statistics.stdev(xs) if len(xs) > 1 else 0.0


__all__ = ["traffic_calibration", "traffic_fit"]
