"""The pirated classifier (paper §IV): the stolen target, deployed unchanged, behind the trigger-input detector.
An unflagged query gets exactly the target's label; a flagged one gets a label chosen by a strategy:

- ``uniform``: a uniformly random label (the paper's choice; may coincide with the target's label)
- ``uniform-other``: a uniformly random label other than the target's
- ``runner-up``: the target's second most likely label
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dnnpiracy.attack.detector import Detector, Inspection
from dnnpiracy.config import STRATEGIES


@dataclass
class PiratedAnswer:
    labels: torch.Tensor         # what the pirated classifier returns
    target_labels: torch.Tensor  # what the stolen target alone would return
    scores: torch.Tensor
    flags: torch.Tensor


def replacement_labels(logits: torch.Tensor, strategy: str, gen: torch.Generator) -> torch.Tensor:
    n, c = logits.shape
    pred = logits.argmax(1)
    if strategy == "uniform":
        return torch.randint(0, c, (n,), generator=gen)
    if strategy == "uniform-other":
        return (pred + torch.randint(1, c, (n,), generator=gen)) % c
    if strategy == "runner-up":
        return logits.topk(2, dim=1).indices[:, 1]
    raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")


class PiratedClassifier:
    """``predict(images) -> labels``: a black box the owner can query."""

    def __init__(self, detector: Detector, strategy: str = "uniform", seed: int = 0):
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
        self.detector, self.strategy = detector, strategy
        self._gen = torch.Generator().manual_seed(seed)

    def answer(self, images: torch.Tensor, inspection: Inspection | None = None) -> PiratedAnswer:
        ins = inspection if inspection is not None else self.detector.inspect(images)
        target = ins.predictions
        labels = target.clone()
        if ins.flags.any():
            logits = ins.probe.logits[ins.flags]
            labels[ins.flags] = replacement_labels(logits, self.strategy, self._gen)
        return PiratedAnswer(labels, target, ins.scores, ins.flags)

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return self.answer(images).labels

    __call__ = predict
