"""Per-class anomaly scorers.  Each is fitted on the surrogate set grouped by *ground-truth* label (the paper's T_l)
and scores a query against the class the target *predicted* for it; higher = more anomalous.

A scorer reads one kind of evidence from a :class:`~dnnpiracy.attack.heatmaps.Probe` (``heatmap``, ``cam``,
``features`` = penultimate layer, ``stages`` = every pooled stage, ``stages-max`` = every stage's per-channel
spatial maximum, ``input``), and is a few lines on top of
:class:`Scorer`: ``fit`` stores per-class statistics, ``score`` groups a batch by label (no per-image loop).

One file per family: ``base`` (the interface and the cross-fitting folds), ``distance`` (k-NN, Mahalanobis),
``local`` (patch and window scorers), ``neighbours`` (Deep k-NN), ``paper`` (the paper's DCGAN, heatmap mass),
``logits`` (energy), ``combine`` (ensembles, class normalisation), ``lof`` (scikit-learn's Local Outlier Factor),
``ood`` (Lee et al.'s Mahalanobis, Sun et al.'s k-th neighbour), ``query`` (STRIP and SCALE-UP, which query the target).
"""

from dnnpiracy.attack.scorers.base import LEAVE_ONE_OUT, Evidence, Scorer, class_groups, stratified_folds
from dnnpiracy.attack.scorers.combine import ClassNormalizedScorer, EnsembleScorer
from dnnpiracy.attack.scorers.distance import KNNScorer, MahalanobisScorer
from dnnpiracy.attack.scorers.local import PatchKNNScorer, WindowStatsScorer
from dnnpiracy.attack.scorers.lof import LOFScorer
from dnnpiracy.attack.scorers.logits import EnergyScorer
from dnnpiracy.attack.scorers.neighbours import ConfidentDkNNScorer, DkNNScorer
from dnnpiracy.attack.scorers.ood import KthNeighbourScorer, TiedMahalanobisScorer
from dnnpiracy.attack.scorers.paper import DCGANScorer, HeatmapMassScorer
from dnnpiracy.attack.scorers.query import ModelQueryScorer, ScaleUpScorer, STRIPScorer, bind_model

__all__ = ["LEAVE_ONE_OUT", "Evidence", "Scorer", "class_groups", "stratified_folds", "ClassNormalizedScorer",
           "EnsembleScorer", "KNNScorer", "MahalanobisScorer", "PatchKNNScorer", "WindowStatsScorer", "LOFScorer",
           "EnergyScorer", "ConfidentDkNNScorer", "DkNNScorer", "DCGANScorer", "HeatmapMassScorer",
           "TiedMahalanobisScorer", "KthNeighbourScorer", "ModelQueryScorer", "STRIPScorer", "ScaleUpScorer",
           "bind_model"]
