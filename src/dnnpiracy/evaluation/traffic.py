"""Calibrating the detector's threshold on unlabelled deployment traffic instead of the surrogate set.

The calibrated detectors need labels only to *fit* their scorers; the threshold needs only clean scores.  The
surrogate set gives ~100 of them (mnist-10k), so its split-conformal 99 % quantile is their maximum and the realised
FPR sits far below the 1 % target, which costs triggers (the misses of Tables I-IV).  A pirate serving the model sees
many unlabelled queries: calibrating on the first ``n_traffic`` of them (``Detector.calibrate_on_traffic``) pins the
quantile.  Evaluated here from a cell's stored scores: a random ``n_traffic`` of the clean evaluation inputs play the
traffic, FPR is measured on the remaining clean inputs, FNR on the trigger inputs, over ``repeats`` random draws.

``contaminated=True`` puts the owner's trigger queries into the calibration traffic too (the owner verified while the
pirate was calibrating): the quantile then lands on trigger scores, which is why the pirate must calibrate before
serving, or on traffic it trusts.
"""

from __future__ import annotations

import statistics

import torch

from dnnpiracy.attack.thresholds import conformal_threshold


def traffic_calibration(clean_scores: torch.Tensor, trigger_scores: torch.Tensor, target_fpr: float = 0.01,
                        n_traffic: int = 500, repeats: int = 50, seed: int = 0, contaminated: bool = False) -> dict:
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
        thr = conformal_threshold(torch.cat([cal, trig]) if contaminated else cal, target_fpr)
        fprs.append(float((held > thr).double().mean()))
        fnrs.append(float((trig <= thr).double().mean()))
        thresholds.append(thr)
    return {"target_fpr": target_fpr, "n_traffic": n_traffic, "repeats": repeats, "contaminated": contaminated,
            "n_heldout": len(clean) - n_traffic, "n_triggers": len(trig),
            "fpr_mean": statistics.fmean(fprs), "fpr_std": _sd(fprs),
            "fnr_mean": statistics.fmean(fnrs), "fnr_std": _sd(fnrs),
            "threshold_mean": statistics.fmean(thresholds)}


def _sd(xs: list[float]) -> float:
    return statistics.stdev(xs) if len(xs) > 1 else 0.0


__all__ = ["traffic_calibration"]
