"""Scorers that query the target on transformed copies of the input: the published input-filtering defences STRIP
(Gao et al. 2019) and SCALE-UP (Guo et al. 2023).  They need the model at scoring time, so the detector ``bind``s it
before fitting; a saved detector binds the served model again when it is loaded.

:class:`ModelQueryScorer` owns the plumbing (the bound model, images back from the flattened input evidence, chunked
softmax); a subclass says how it transforms a query and what it reads off the answers."""

from __future__ import annotations

import torch
from torch import nn

from dnnpiracy.attack.scorers.base import Evidence, Scorer


class ModelQueryScorer(Scorer):
    evidence = "input"
    queries_model = True

    def bind(self, model: nn.Module, input_shape: tuple[int, ...]) -> "ModelQueryScorer":
        """Attach the target (queried at scoring time) and the shape of one input image."""
        self._model = model
        self.input_shape = tuple(int(s) for s in input_shape)
        return self

    def images(self, ev: Evidence) -> torch.Tensor:
        if getattr(self, "_model", None) is None:
            raise RuntimeError(f"scorer {self.name!r} queries the target: bind(model, input_shape) first")
        return ev.need("input").float().view(-1, *self.input_shape)

    @torch.inference_mode()
    def probs(self, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
        model = self._model.eval()
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        return torch.cat([model(x[i:i + batch_size].to(device)).float().softmax(1).cpu()
                          for i in range(0, len(x), batch_size)])


class STRIPScorer(ModelQueryScorer):
    """STRIP: superimpose the query on ``n`` surrogate images (pixel sum clipped to [0, 1], as the published code's
    ``addWeighted(x, 1, overlay, 1)``) and take the mean Shannon entropy (bits) of the target's answers.  A trigger
    dominates every blend, so its entropy is low: score = minus the mean entropy."""

    name = "strip"

    def __init__(self, n: int = 20, seed: int = 0, chunk: int = 128):
        self.n, self.seed, self.chunk = n, seed, chunk
        self.pool: torch.Tensor | None = None

    def fit(self, ev, y, y_pred=None):
        self.pool = self.images(ev).clone()
        return self

    @staticmethod
    def entropy_bits(p: torch.Tensor) -> torch.Tensor:
        return -(p * torch.log2(p.clamp_min(1e-12))).sum(-1)

    def mean_entropy(self, x: torch.Tensor, overlay_idx: torch.Tensor, pool: torch.Tensor) -> torch.Tensor:
        """Mean entropy of each query's blends with ``pool[overlay_idx[i]]`` (overlay_idx: (B, n))."""
        out = []
        for i in range(0, len(x), self.chunk):
            xb, ib = x[i:i + self.chunk], overlay_idx[i:i + self.chunk]
            blends = (xb[:, None] + pool[ib]).clamp(0, 1).flatten(0, 1)
            p = self.probs(blends).view(len(xb), ib.shape[1], -1)
            out.append(self.entropy_bits(p).mean(1))
        return torch.cat(out) if out else torch.zeros(0)

    def score(self, ev, y):
        if self.pool is None:
            raise RuntimeError("STRIPScorer.score before fit")
        x = self.images(ev)
        gen = torch.Generator().manual_seed(self.seed)
        idx = torch.randint(len(self.pool), (len(x), self.n), generator=gen)
        return -self.mean_entropy(x, idx, self.pool)

    def loo_scores(self, ev, y_true, y_pred):
        """Each surrogate image blended with ``n`` other surrogate images (never itself)."""
        x = self.images(ev)
        if len(x) < 2:
            raise ValueError("STRIP needs at least 2 surrogate images")
        gen = torch.Generator().manual_seed(self.seed)
        idx = torch.randint(len(x) - 1, (len(x), self.n), generator=gen)
        idx = idx + (idx >= torch.arange(len(x))[:, None]).long()      # skip the image itself
        return -self.mean_entropy(x, idx, x)


class ScaleUpScorer(ModelQueryScorer):
    """SCALE-UP (data-free): the query's pixels multiplied by each of ``scales`` and clipped to [0, 1]; the scaled
    prediction consistency SPC is the share of scaled copies that keep the query's predicted label (a trigger's
    answer survives amplification).  Score = SPC + ``tie_break`` x the mean probability of that label over the
    scaled copies: SPC alone takes len(scales) + 1 values, and a conformal threshold needs an order."""

    name = "scale-up"

    def __init__(self, scales: tuple[float, ...] = (3, 5, 7, 9, 11), tie_break: float = 1e-3):
        self.scales, self.tie_break = tuple(scales), tie_break

    def fit(self, ev, y, y_pred=None):
        return self

    def spc(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        keep = torch.zeros(len(x))
        soft = torch.zeros(len(x))
        for s in self.scales:
            p = self.probs((x * s).clamp(0, 1))
            keep += (p.argmax(1) == y).float()
            soft += p.gather(1, y[:, None]).squeeze(1)
        return keep / len(self.scales), soft / len(self.scales)

    def score(self, ev, y):
        spc, soft = self.spc(self.images(ev), y)
        return spc + self.tie_break * soft

    def loo_scores(self, ev, y_true, y_pred):   # nothing is fitted: a surrogate image's score is its own
        return self.score(ev, y_pred)


def bind_model(scorer: Scorer, model: nn.Module, input_shape: tuple[int, ...] | None = None) -> Scorer:
    """Bind the target to every scorer in ``scorer`` that queries it (an ensemble's components included).  Without
    ``input_shape``, each keeps the shape it was fitted with (a detector loaded from disk)."""
    for s in [scorer, *getattr(scorer, "components", []), *([scorer.base] if hasattr(scorer, "base") else [])]:
        if getattr(s, "queries_model", False):
            s.bind(model, input_shape if input_shape is not None else tuple(s.input_shape))
    return scorer


__all__ = ["ModelQueryScorer", "STRIPScorer", "ScaleUpScorer", "bind_model"]
