"""Attacker side: heatmaps of queries, per-class trigger detectors, the pirated classifier."""

from dnnpiracy.attack.detector import (
                                       DEFAULT_BY_DATASET,
                                       DEFAULT_DETECTOR,
                                       DETECTORS,
                                       SCORERS,
                                       USER_DETECTORS,
                                       Detector,
                                       DetectorSpec,
                                       Inspection,
                                       build_scorer,
                                       check_cross_fitting,
                                       default_detector,
                                       fit_detector,
                                       make_cam,
                                       resolve_spec,
)
from dnnpiracy.attack.heatmaps import CAM, CAM_METHODS, GradCAM, GradCAMPlusPlus, Probe, minmax_scale
from dnnpiracy.attack.pirated import PiratedAnswer, PiratedClassifier, replacement_labels
from dnnpiracy.attack.scorers import (
                                       DCGANScorer,
                                       DkNNScorer,
                                       EnsembleScorer,
                                       Evidence,
                                       HeatmapMassScorer,
                                       KNNScorer,
                                       MahalanobisScorer,
                                       PatchKNNScorer,
                                       Scorer,
                                       WindowStatsScorer,
)

__all__ = ["USER_DETECTORS", "build_scorer", "DEFAULT_DETECTOR", "DEFAULT_BY_DATASET", "default_detector",
           "check_cross_fitting",
           "DETECTORS", "SCORERS", "Detector", "DetectorSpec", "Inspection", "fit_detector",
           "make_cam", "resolve_spec", "CAM", "CAM_METHODS", "GradCAM", "GradCAMPlusPlus", "Probe", "minmax_scale",
           "PiratedAnswer", "PiratedClassifier", "replacement_labels", "DCGANScorer", "DkNNScorer", "EnsembleScorer",
           "Evidence", "HeatmapMassScorer", "KNNScorer", "MahalanobisScorer", "PatchKNNScorer", "Scorer",
           "WindowStatsScorer"]
