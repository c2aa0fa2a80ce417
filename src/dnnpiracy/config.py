"""The paper's defaults, written once.  Every other module takes these dataclasses; the CLI only overrides fields."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any


@dataclass(frozen=True)
class TrainConfig:
    """Target training (paper §V-A-2: ResNet-34, Adam, lr 1e-4, batch 128, 15 epochs)."""

    arch: str = "resnet34"
    stem: str = "imagenet"
    epochs: int = 15
    batch_size: int = 128
    lr: float = 1e-4
    seed: int = 0
    trigger_oversample: int = 1   # how often each trigger appears per epoch (1 = plain mixing, as in the paper)
    device: str = "auto"

    def __post_init__(self) -> None:
        _check(self.epochs >= 1, "epochs must be >= 1")
        _check(self.batch_size >= 1, "batch_size must be >= 1")
        _check(self.lr > 0, "lr must be > 0")
        _check(self.trigger_oversample >= 1, "trigger_oversample must be >= 1")


@dataclass(frozen=True)
class TriggerConfig:
    """Zhang et al. content watermark as the paper uses it: m=15 images, k=4 white round blocks of radius 3."""

    num_triggers: int = 15
    blocks: int = 4
    radius: int = 3
    trigger_label: int = 0
    seed: int = 0
    pattern: str | None = None    # path to a PNG pattern (white = stamped) instead of discs
    scheme: str = "content"       # the watermark scheme (watermark/schemes.py); "content" = the paper's discs

    def key_dict(self) -> dict:
        """The fields that identify the watermark, as cache keys and reports record them.  ``scheme`` is left out
        at its default so that the paper's targets keep the keys they had before schemes existed."""
        d = asdict(self)
        if d["scheme"] == "content":
            del d["scheme"]
        return d

    def __post_init__(self) -> None:
        _check(1 <= self.num_triggers <= 10_000, "num_triggers must be in 1..10000")
        _check(1 <= self.blocks <= 16, "blocks must be in 1..16")
        _check(1 <= self.radius <= 13, "radius must be in 1..13 (a disc must fit in a 28x28 image)")
        _check(0 <= self.trigger_label <= 9, "trigger_label must be in 0..9")


@dataclass(frozen=True)
class GanConfig:
    """PyTorch-GAN's dcgan.py defaults (facts.md §3)."""

    latent_dim: int = 100
    img_size: int = 32
    lr: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    batch_size: int = 64
    epochs: int = 200
    bn_eps: float = 0.8           # dcgan.py's BatchNorm2d(n, 0.8) sets eps=0.8; kept for fidelity

    def __post_init__(self) -> None:
        _check(self.img_size % 16 == 0, "img_size must be a multiple of 16")
        _check(self.epochs >= 1, "GAN epochs must be >= 1")


@dataclass(frozen=True)
class DetectorConfig:
    """Attacker: surrogate = 5 % of test (stratified), Grad-CAM heatmaps, per-class scorer, threshold rule."""

    detector: str = "default"     # "default" (best found, see results/detectors.md) | "paper" | a scorer name
    surrogate_fraction: float = 0.05
    heatmap_layer: str | None = None   # None = the architecture's default (arch_info)
    tau: float | None = None      # paper rule: flag if score > alpha_y + tau (None = dataset default)
    target_fpr: float = 0.01      # calibrated rule: aim for this clean false-positive rate (conformal)
    fpr_confidence: float | None = 0.9   # calibrated rule: FPR <= target_fpr in this share of surrogate draws
    #                               (training-conditional conformal); None = only on average over draws
    calibration_folds: int = 0    # calibrated rule: cross-fitting on the surrogate set: 0 = leave-one-out (exact,
    #                               closed form for Mahalanobis / nearest neighbours), K >= 2 = K stratified folds;
    #                               the DCGAN scorer uses at most 5 folds (0 -> 5)
    traffic: int = 0              # > 0: this many unlabelled clean queries (held out of evaluation) serve the pirate
    traffic_use: str = "threshold"  # "threshold": re-set the threshold on them; "fit": also fit the scorer on them
    gan: GanConfig = field(default_factory=GanConfig)
    seed: int = 0

    def __post_init__(self) -> None:
        _check(0 < self.surrogate_fraction < 1, "surrogate_fraction must be in (0, 1)")
        _check(0 < self.target_fpr < 1, "target_fpr must be in (0, 1)")
        _check(self.fpr_confidence is None or 0 < self.fpr_confidence < 1, "fpr_confidence must be in (0, 1) or None")
        _check(self.calibration_folds == 0 or 2 <= self.calibration_folds <= 1000,
               "calibration_folds must be 0 (leave-one-out) or in 2..1000")
        _check(self.traffic >= 0, "traffic must be >= 0 (0 = threshold from the surrogate set)")
        _check(self.traffic_use in ("threshold", "fit"), f"traffic_use must be 'threshold' or 'fit', "
               f"got {self.traffic_use!r}")


PAPER_TAU = {"mnist": 2.0, "mnist-10k": 2.0, "fashion-mnist": 0.65, "digits-tiny": 2.0}
STRATEGIES = ("uniform", "uniform-other", "runner-up")


def paper_tau(dataset: str) -> float:
    return PAPER_TAU.get(dataset, 2.0)


class ConfigError(ValueError):
    """An out-of-range option."""


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def to_dict(cfg: Any) -> dict:
    return asdict(cfg)


__all__ = ["TrainConfig", "TriggerConfig", "GanConfig", "DetectorConfig", "ConfigError", "PAPER_TAU", "STRATEGIES",
           "paper_tau", "to_dict", "replace"]
