"""Deep k-nearest-neighbour scorers: label disagreement among the nearest surrogate images, stage by stage, and its
confidence-weighted variant."""

from __future__ import annotations

import torch

from dnnpiracy.attack.scorers.base import Evidence, Scorer


class DkNNScorer(Scorer):
    """Label disagreement among the nearest surrogate images, stage by stage (Deep k-Nearest Neighbors, Papernot &
    McDaniel 2018).  In each chosen stage of the target (its spatially pooled activations, standardised by the
    surrogate's per-channel mean and spread, compared by cosine), the ``k`` surrogate images nearest to the query
    vote with their true labels; the score is the number of votes, summed over the stages, for a label other than
    the one the target predicts.  A trigger input is answered with the trigger label because the target memorised
    it, yet in the early stages it still looks like its source class (a sneaker with discs is near sneakers), while
    a clean input's neighbours mostly share its predicted label.  Unlike a distance to the predicted class, it reads
    what the other classes say.

    ``stages`` indexes the architecture's feature stages in order (``ArchInfo.feature_layers``: for a ResNet
    layer1..layer4, avgpool; (1, 2) is layer2 and layer3), so the same detector runs on every architecture."""

    name = "dknn"
    evidence = "stages"       # the per-stage kinds ("stage:<layer>") that Evidence.from_probe sets beside it
    eps = 1e-6

    def __init__(self, stages: tuple[int, ...] = (1, 2), k: int = 25):
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if not stages:
            raise ValueError("dknn needs at least one stage")
        self.stages, self.k = tuple(stages), k
        self.refs: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}   # kind -> (mean, spread, Z)
        self.labels = torch.empty(0, dtype=torch.long)

    def _kinds(self, ev: Evidence) -> list[str]:
        kinds = [k for k in ev if k.startswith("stage:")]
        bad = [i for i in self.stages if not -len(kinds) <= i < len(kinds)]
        if bad:
            raise KeyError(f"dknn reads feature stages {list(self.stages)}, but the probe collected "
                           f"{len(kinds)} ({', '.join(kinds) or 'none'})")
        return [kinds[i] for i in self.stages]

    def _standardise(self, X: torch.Tensor, mean: torch.Tensor, spread: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize((X.double() - mean) / spread, dim=-1)

    def _votes(self, sims: torch.Tensor, ref_labels: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(B, n) similarities to the references -> (B,) number of the k nearest whose label is not ``y``."""
        nn = sims.topk(min(self.k, sims.shape[1]), 1).indices
        return (ref_labels[nn] != y[:, None]).sum(1).double()

    def fit(self, ev, y, y_pred=None):
        self.refs = {}
        for kind in self._kinds(ev):
            X = ev.need(kind).flatten(1).double()
            mean, spread = X.mean(0), X.var(0, unbiased=False).sqrt() + self.eps
            self.refs[kind] = (mean, spread, self._standardise(X, mean, spread))
        self.labels = y.clone()
        return self

    def score(self, ev, y):
        out = torch.zeros(len(ev), dtype=torch.float64)
        for kind, (mean, spread, Z) in self.refs.items():
            out += self._votes(self._standardise(ev.need(kind).flatten(1), mean, spread) @ Z.T, self.labels, y)
        return out.float()

    def loo_scores(self, ev, y_true, y_pred):
        """Exact leave-one-out: for each sample, the mean and spread of the other n - 1 (one downdate each), every
        reference re-standardised with them, and the sample's vote taken among the others."""
        n = len(ev)
        out = torch.zeros(n, dtype=torch.float64)
        for kind in self._kinds(ev):
            X = ev.need(kind).flatten(1).double()
            s1, s2 = X.sum(0), (X * X).sum(0)
            for chunk in torch.arange(n).split(max(1, (1 << 24) // max(1, n * X.shape[1]))):
                xi = X[chunk]
                mean = (s1 - xi) / (n - 1)                                         # (b, d) without sample i
                spread = ((s2 - xi * xi) / (n - 1) - mean * mean).clamp_min(0).sqrt() + self.eps
                Z = self._standardise(X[None], mean[:, None], spread[:, None])     # (b, n, d)
                q = self._standardise(xi, mean, spread)                            # (b, d)
                sims = torch.einsum("bd,bnd->bn", q, Z)
                sims[torch.arange(len(chunk)), chunk] = -float("inf")             # not its own neighbour
                out[chunk] += self._votes(sims, y_true, y_pred[chunk])
        return out.float()


class ConfidentDkNNScorer(DkNNScorer):
    """Deep-kNN label disagreement weighted by the target's confidence: the votes against the predicted label y
    times the softmax margin p_y - max_{c != y} p_c (0 when y is not the target's answer).  In DkNN's terms, a query
    whose softmax is confident while its early-stage neighbours disagree (low credibility) is suspicious.  A trigger
    the target memorised is answered with near certainty; a clean input that the target confuses with a neighbouring
    class (a shirt answered "T-shirt") has disagreeing neighbours too, but a small margin, so it no longer looks like
    one.  The weight is the query's own, so leave-one-out stays exact."""

    name = "dknn-margin"

    @staticmethod
    def margin(ev: Evidence, y: torch.Tensor) -> torch.Tensor:
        p = ev.need("logits").double().softmax(1)
        own = p.gather(1, y[:, None]).squeeze(1)
        other = p.scatter(1, y[:, None], -1.0).amax(1)
        return (own - other).clamp_min(0)

    def reads(self) -> set[str]:
        return {self.evidence, "logits"}

    def score(self, ev, y):
        return (super().score(ev, y).double() * self.margin(ev, y)).float()

    def loo_scores(self, ev, y_true, y_pred):
        return (super().loo_scores(ev, y_true, y_pred).double() * self.margin(ev, y_pred)).float()
