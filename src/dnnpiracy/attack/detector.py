"""The attacker's trigger-input detector (paper §IV-B): heatmap of the query for the predicted label, a per-class
scorer fitted on the surrogate set, and a threshold rule.

``DETECTORS`` (attack/registry.py) names the ready-made ones; ``ensemble:a,b,c`` composes scorers of ``SCORERS``
(each standardised by its out-of-fold surrogate scores, then summed). ``paper`` is the method as published (one
DCGAN per label, alpha_y + tau). ``default`` is ``ensemble-mahalanobis-stages-input-knn-patch-window`` on every
dataset: the sum of the Mahalanobis distance of all pooled stage activations, the Mahalanobis distance of the raw
input, its nearest-neighbour distance, its most unusual patch (``PatchKNNScorer``) and its most unusual window
(``WindowStatsScorer``), chosen among eight candidates on development watermark schemes only
(docs/heldout_protocol.md, results/selection/selection.md) and judged on held-out ones
(results/schemes/schemes.md).

Calibrated detectors are thresholded by cross-fitted split conformal calibration at a 1 % target FPR, held with 90 %
confidence over the surrogate draw (``DetectorConfig.fpr_confidence``; attack/thresholds.py). Earlier defaults
(``ensemble-patch-dknn-window`` for Fashion-MNIST, ``ensemble-mahalanobis-stages-input-knn-patch``, ...) stay
selectable; docs/detector_selection.md tells how each was chosen.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace

import torch
from torch import nn

from dnnpiracy.attack.heatmaps import CAM, CAM_METHODS, Probe
from dnnpiracy.attack.registry import (
    DEFAULT_BY_DATASET,
    DEFAULT_DETECTOR,
    DETECTORS,
    SCORERS,
    USER_DETECTORS,
    DetectorSpec,
    build_scorer,
    default_detector,
    ensemble_parts,
    resolve_spec,
)
from dnnpiracy.attack.scorers import LEAVE_ONE_OUT, DCGANScorer, Evidence, Scorer, bind_model
from dnnpiracy.attack.thresholds import calibrated_thresholds, exceed_probability, paper_thresholds, threshold_rank
from dnnpiracy.config import DetectorConfig, GanConfig
from dnnpiracy.models import ArchInfo

HEATMAP_KINDS = frozenset({"heatmap", "cam"})   # the evidence only Grad-CAM's backward pass gives


@dataclass
class Inspection:
    """The detector's view of a batch of queries."""

    probe: Probe
    scores: torch.Tensor      # (B,) anomaly scores against the predicted labels
    thresholds: torch.Tensor  # (B,) the threshold each query was held to
    flags: torch.Tensor       # (B,) bool: treated as a trigger input

    @property
    def predictions(self) -> torch.Tensor:
        return self.probe.predictions


@dataclass
class Detector:
    name: str
    spec: DetectorSpec
    cam: CAM
    scorer: Scorer
    thresholds: torch.Tensor          # (num_classes,)
    num_classes: int
    penultimate: str
    fit_info: dict = field(default_factory=dict)
    calibration_scores: torch.Tensor | None = None   # paper: in-sample scores of T_y; calibrated: out-of-fold
    calibration_labels: torch.Tensor | None = None   # the surrogate set's true labels
    always_heatmaps: bool = False     # compute the Grad-CAM heatmap even where the scorer reads none (the bench's
    #                                   like-for-like comparison with Captum)

    @property
    def needs_heatmaps(self) -> bool:
        """Whether scoring a query needs its heatmap, i.e. Grad-CAM's backward pass.  A detector that reads only
        the input, the logits or pooled activations (the defaults) serves from the forward pass alone."""
        return self.always_heatmaps or bool(self.scorer.reads() & HEATMAP_KINDS)

    def probe(self, x: torch.Tensor) -> Probe:
        return self.cam(x)

    def inspect(self, x: torch.Tensor, probe: Probe | None = None, heatmaps: bool | None = None) -> Inspection:
        """Score a batch.  Without ``probe``, the target is probed here, with the heatmap only if the scorer
        needs it (``heatmaps=True`` forces it, e.g. to show the heatmaps beside the verdicts)."""
        if probe is None:
            probe = self.cam(x, heatmaps=self.needs_heatmaps if heatmaps is None else heatmaps)
        ev = Evidence.from_probe(probe, x, self.penultimate)
        y = probe.predictions
        scores = self.scorer.score(ev, y)
        thr = self.thresholds[y]
        return Inspection(probe, scores, thr, scores > thr)

    def with_tau(self, tau: float) -> "Detector":
        """The same fitted detector under the paper's rule with another tau (alpha_y unchanged)."""
        if self.spec.rule != "paper":
            raise ValueError(f"detector {self.name!r} uses the {self.spec.rule} rule; tau applies to the paper rule")
        thr = paper_thresholds(self.calibration_scores, self.calibration_labels, tau, self.num_classes,
                               self.spec.alpha_of)
        return replace(self, thresholds=thr, fit_info={**self.fit_info, "tau": tau})

    def with_target_fpr(self, target_fpr: float) -> "Detector":
        """The same fitted detector with the calibrated threshold for another target FPR."""
        if self.spec.rule != "calibrated":
            raise ValueError(f"detector {self.name!r} uses the {self.spec.rule} rule, not the calibrated one")
        thr = calibrated_thresholds(self.calibration_scores, target_fpr, self.num_classes,
                                    self.fit_info.get("fpr_confidence"))
        return replace(self, thresholds=thr, fit_info={**self.fit_info, "target_fpr": target_fpr})

    def calibrate_on_traffic(self, x: torch.Tensor, target_fpr: float = 0.01, probe: Probe | None = None) -> "Detector":
        """The same fitted scorer, with one threshold for all classes set to the split-conformal (1 - target_fpr)
        quantile of the scores of ``x``: unlabelled queries the pirate trusts to be clean (e.g. its first traffic,
        before anyone verifies).  Labels are never read; a few hundred queries pin a 1 % quantile that ~100
        surrogate inputs cannot (evaluation/traffic.py measures the effect)."""
        if not 0 < target_fpr < 1:
            raise ValueError(f"target_fpr must be in (0, 1), got {target_fpr}")
        scores = self.inspect(x, probe).scores
        thr = calibrated_thresholds(scores, target_fpr, self.num_classes, self.fit_info.get("fpr_confidence"))
        if not torch.isfinite(thr).all():
            raise ValueError(f"{len(x)} traffic queries cannot pin a {target_fpr:g} quantile: need at least "
                             f"{math.ceil(1 / target_fpr)}")
        return replace(self, thresholds=thr, fit_info={**self.fit_info, "target_fpr": target_fpr,
                                                        "threshold_source": "traffic", "n_traffic": len(x)})

    def describe(self) -> dict:
        return {"name": self.name, **asdict(self.spec), "heatmap_layer": self.cam.layer,
                "thresholds": self.thresholds.tolist(), **self.fit_info}


def make_cam(model: nn.Module, info: ArchInfo, layer: str | None = None, method: str = "gradcam",
             batch_size: int = 256) -> CAM:
    if method not in CAM_METHODS:
        raise ValueError(f"unknown CAM method {method!r}; choose one of {', '.join(CAM_METHODS)}")
    return CAM_METHODS[method](model, layer or info.heatmap_layer, info.feature_layers, batch_size)


def check_cross_fitting(surrogate_y: torch.Tensor) -> None:
    """The calibrated rule scores each surrogate input by a scorer fitted without it, against the inputs of its own
    class: that needs at least 2 labelled inputs in every class present.  Raises ValueError naming the classes."""
    labels, counts = torch.unique(surrogate_y, return_counts=True)
    thin = [int(c) for c, n in zip(labels, counts) if n < 2]
    if thin:
        raise ValueError(
            f"the calibrated rule cross-fits on the surrogate set and needs at least 2 inputs per class; class(es) "
            f"{thin} have 1 ({len(surrogate_y)} surrogate inputs in all): raise the surrogate fraction "
            "(run --surrogate-fraction) or use the paper rule (--detector paper)")


def fit_detector(model: nn.Module, info: ArchInfo, surrogate_x: torch.Tensor, surrogate_y: torch.Tensor,
                 cfg: DetectorConfig, tau: float, num_classes: int = 10, probe: Probe | None = None,
                 dataset: str | None = None, traffic_x: torch.Tensor | None = None) -> Detector:
    """Fit the detector named by ``cfg.detector`` on the labelled surrogate set (T_l = inputs with true label l);
    ``default`` resolves per ``dataset``.

    ``traffic_x``: unlabelled queries the pirate trusts to be clean.  A calibrated detector is then fitted *and*
    thresholded on the surrogate set plus these, each traffic query standing in T_l for the label l the target
    predicts for it (no true label is read).  ``probe``, when given, covers surrogate_x followed by traffic_x."""
    import time

    name = default_detector(dataset) if cfg.detector == "default" else cfg.detector
    spec = resolve_spec(name)
    cam = make_cam(model, info, cfg.heatmap_layer, spec.cam)
    t0 = time.perf_counter()
    x = surrogate_x
    if traffic_x is not None:
        if spec.rule != "calibrated":
            raise ValueError(f"detector {name!r} uses the {spec.rule} rule; only a calibrated detector can be fitted "
                             "on unlabelled traffic")
        if traffic_x.shape[1:] != surrogate_x.shape[1:]:
            raise ValueError(f"traffic inputs have shape {tuple(traffic_x.shape[1:])}, the surrogate set "
                             f"{tuple(surrogate_x.shape[1:])}")
        x = torch.cat([surrogate_x, traffic_x])
    probe = probe if probe is not None else cam(x)
    ev = Evidence.from_probe(probe, x, info.penultimate)
    y_pred = probe.predictions
    if traffic_x is not None:   # a traffic query's "label" is the target's prediction
        surrogate_y = torch.cat([surrogate_y, y_pred[len(surrogate_x):]])
    scorer = bind_model(build_scorer(spec.scorer, cfg), model, tuple(surrogate_x.shape[1:]))
    if spec.rule == "paper":
        scorer.fit(ev, surrogate_y, y_pred)
        in_sample = scorer.score(ev, surrogate_y)          # D_y on T_y, as the paper defines alpha_y
        thresholds = paper_thresholds(in_sample, surrogate_y, tau, num_classes, spec.alpha_of)
        info_extra = {"rule": "paper", "tau": tau, "alpha": (thresholds - tau).tolist(), "alpha_of": spec.alpha_of}
        calib = in_sample
    elif spec.rule == "calibrated":
        check_cross_fitting(surrogate_y)
        folds = cfg.calibration_folds
        if isinstance(scorer, DCGANScorer):    # one DCGAN per class per fold: leave-one-out would train n of them
            folds = 5 if folds == LEAVE_ONE_OUT else min(folds, 5)
        oof = scorer.oof_scores(ev, surrogate_y, y_pred, folds=folds, seed=cfg.seed)
        scorer.fit(ev, surrogate_y, y_pred)
        thresholds = calibrated_thresholds(oof, cfg.target_fpr, num_classes, cfg.fpr_confidence)
        n_cal = int(torch.isfinite(oof).sum())
        rank = threshold_rank(n_cal, cfg.target_fpr, cfg.fpr_confidence)
        info_extra = {"rule": "calibrated", "target_fpr": cfg.target_fpr, "fpr_confidence": cfg.fpr_confidence,
                      "n_calibration": int(len(oof)), "calibration_folds": folds, "threshold_rank": rank,
                      # P(clean FPR > target) over surrogate draws at this rank (exchangeability)
                      "fpr_exceed_probability": exceed_probability(n_cal, rank, cfg.target_fpr) if rank else None}
        if traffic_x is not None:
            info_extra.update(threshold_source="surrogate+traffic", fit_source="surrogate+traffic",
                              n_traffic=len(traffic_x))
        calib = oof
    else:
        raise ValueError(f"unknown threshold rule {spec.rule!r}")
    info_extra["fit_seconds"] = time.perf_counter() - t0
    return Detector(name, spec, cam, scorer, thresholds, num_classes, info.penultimate, info_extra, calib,
                    surrogate_y.clone())


__all__ = ["USER_DETECTORS", "DetectorSpec", "Detector", "Inspection", "DETECTORS", "SCORERS", "DEFAULT_DETECTOR",
           "DEFAULT_BY_DATASET", "default_detector", "resolve_spec", "build_scorer", "ensemble_parts",
           "check_cross_fitting",
           "make_cam", "fit_detector", "GanConfig"]
