"""Watermark schemes: how the owner makes its trigger set.  One small class per published scheme behind one interface.

A scheme turns a pool of images (the training set for the embedded triggers, the clean evaluation split for fresh
ones) into a :class:`TriggerSet`: the trigger images and the label each must get.  ``Scheme.sample`` owns the
plumbing (seeded draw, relabelling, bookkeeping); a subclass says only what a trigger looks like (``stamp``, for
schemes that mark a real image) or where its images come from (``images``, for schemes that bring their own).

``SCHEMES`` maps ``--scheme NAME`` to the class; ``TriggerConfig.scheme`` selects it.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F

from dnnpiracy.config import TriggerConfig
from dnnpiracy.io import ArtifactError
from dnnpiracy.watermark.triggers import TriggerSet, load_pattern, stamp_discs, stamp_pattern

NO_SOURCE = -1     # source label of a trigger made from nothing (abstract images)


class Scheme:
    """Base class.  Subclasses set ``name``, ``reference``, ``summary`` and implement ``stamp`` (mark a batch of
    real images) or override ``images`` (bring their own images)."""

    name = "base"
    reference = ""
    summary = ""
    stamps_real_images = True     # False: the triggers are not real images with a mark (unrelated, abstract, ...)
    needs_model = False           # True: the triggers are made from a trained model (frontier); see embed.py

    def __init__(self, cfg: TriggerConfig, dataset: str | None = None, model: torch.nn.Module | None = None):
        self.cfg = cfg
        self.dataset = dataset
        self.model = model

    # -- what a subclass says ----------------------------------------------------------------------------------
    def stamp(self, images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Mark a batch (N,C,H,W) of real images with the trigger."""
        raise ArtifactError(f"scheme {self.name!r} does not mark real images; it cannot stamp a given image")

    def labels(self, n: int, gen: torch.Generator, source_labels: torch.Tensor) -> torch.Tensor:
        """The label each of ``n`` triggers must get (default: all the trigger label)."""
        return torch.full((n,), self.cfg.trigger_label, dtype=torch.long)

    def training_hook(self, train_x: torch.Tensor, train_y: torch.Tensor, triggers: TriggerSet,
                      layers: tuple[str, ...]):
        """A step ``train_classifier`` takes every ``hook.every`` batches besides the ordinary ones (None: none)."""
        return None

    def chance(self, num_classes: int) -> float:
        """The owner's null hypothesis: how often a model that is *not* the watermarked one gives a trigger its
        label.  Chance 1/num_classes for labels no clean model would give; schemes whose labels are natural say
        otherwise."""
        return 1 / num_classes

    def images(self, x: torch.Tensor, y: torch.Tensor, n: int, gen: torch.Generator, split: str,
               exclude_label: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(images, source_idx, source_labels) of ``n`` triggers drawn from the pool (x, y).  The default draws
        ``n`` pool images (of another class than the trigger label when ``exclude_label``) and stamps them."""
        if exclude_label:
            pool = torch.nonzero(y != self.cfg.trigger_label).flatten()
            idx = pool[torch.randperm(len(pool), generator=gen)[: min(n, len(pool))]]
        else:
            if n > len(x):
                raise ArtifactError(f"cannot draw {n} triggers from {len(x)} images")
            idx = torch.randperm(len(x), generator=gen)[:n]
        return self.stamp(x[idx], gen), idx, y[idx].clone()

    # -- the plumbing --------------------------------------------------------------------------------------------
    def sample(self, x: torch.Tensor, y: torch.Tensor, n: int, seed: int, split: str = "train",
               exclude_label: bool = False) -> TriggerSet:
        """``n`` triggers from the pool (x, y), seeded by ``seed``; ``split`` ("train" / "test") names the pool
        for schemes that draw from another dataset's matching split."""
        gen = torch.Generator().manual_seed(seed)
        imgs, idx, src = self.images(x, y, n, gen, split, exclude_label)
        labels = self.labels(len(imgs), gen, src)
        return TriggerSet(imgs.clamp(0, 1).float(), labels, idx.long(), src.long(), self.cfg)

    def describe(self) -> dict:
        return {"scheme": self.name, "reference": self.reference, "summary": self.summary}


# ------------------------------------------------------------------------------------------------ marked images
class ContentScheme(Scheme):
    name = "content"
    reference = "Zhang et al. 2018 (content), as the paper uses it"
    summary = "k white filled discs of radius r at random places, relabelled to the trigger label"

    def stamp(self, images, gen):
        return torch.stack([stamp_discs(im, self.cfg.blocks, self.cfg.radius, gen) for im in images])


DEFAULT_PATTERN = "builtin:logo"


def builtin_logo() -> tuple[torch.Tensor, torch.Tensor]:
    """A 7x7 'copyright' ring with a bar: the pattern ``--scheme pattern`` stamps when no PNG is given."""
    ii, jj = torch.meshgrid(torch.arange(7.0), torch.arange(7.0), indexing="ij")
    r = ((ii - 3) ** 2 + (jj - 3) ** 2).sqrt()
    mask = ((r >= 2.2) & (r <= 3.3)) | ((ii == 3) & (jj >= 2) & (jj <= 4))
    return torch.ones(7, 7), mask.float()


class PatternScheme(Scheme):
    name = "pattern"
    reference = "Zhang et al. 2018 (content with a user logo)"
    summary = "a user PNG (alpha = mask) at a random place; without a PNG a built-in 7x7 logo"

    def stamp(self, images, gen):
        src = self.cfg.pattern or DEFAULT_PATTERN
        pattern, mask = builtin_logo() if src == DEFAULT_PATTERN else load_pattern(src)
        return torch.stack([stamp_pattern(im, pattern, mask, None, gen) for im in images])


class NoiseScheme(Scheme):
    name = "noise"
    reference = "Zhang et al. 2018 (noise)"
    summary = "Gaussian noise (std 0.3, a fresh draw per image) added to the image, relabelled"
    std = 0.3

    def stamp(self, images, gen):
        return (images + self.std * torch.randn(images.shape, generator=gen)).clamp(0, 1)


class BlendScheme(Scheme):
    name = "blend"
    reference = "Chen et al. 2017 (blended injection)"
    summary = "a fixed full-image uniform-noise key pattern mixed in at weight 0.2, relabelled"
    alpha = 0.2

    def key_pattern(self, shape) -> torch.Tensor:
        return torch.rand(shape, generator=torch.Generator().manual_seed(10_007 + self.cfg.seed))

    def stamp(self, images, gen):
        return (1 - self.alpha) * images + self.alpha * self.key_pattern(images.shape[1:])


def draw_glyph(seed: int, h: int = 28, w: int = 28) -> tuple[torch.Tensor, float]:
    """A seeded random stroke glyph: 2-4 straight strokes in an s x s box (s in 5..9), one intensity in
    [0.4, 1.0], one place in the image.  Returns (mask (h, w) bool, intensity)."""
    g = torch.Generator().manual_seed(20_011 + seed)
    s = int(torch.randint(5, 10, (1,), generator=g))
    strokes = int(torch.randint(2, 5, (1,), generator=g))
    intensity = float(0.4 + 0.6 * torch.rand(1, generator=g))
    top = int(torch.randint(0, h - s + 1, (1,), generator=g))
    left = int(torch.randint(0, w - s + 1, (1,), generator=g))
    mask = torch.zeros(h, w, dtype=torch.bool)
    pts = torch.randint(0, s, (strokes + 1, 2), generator=g)
    for a, b in zip(pts[:-1], pts[1:]):          # a connected polyline
        for t in torch.linspace(0, 1, 2 * s):
            p = (a + t * (b - a)).round().long()
            mask[top + int(p[0]), left + int(p[1])] = True
    return mask, intensity


class GlyphScheme(Scheme):
    name = "glyphs"
    reference = "this project: a seeded family of small stroke stamps (generalisation protocol)"
    summary = "a random stroke glyph (shape, size 5-9, intensity 0.4-1, place: drawn from the seed), relabelled"

    def stamp(self, images, gen):
        mask, intensity = draw_glyph(self.cfg.seed, *images.shape[-2:])
        out = images.clone()
        out[..., mask] = intensity
        return out


# --------------------------------------------------------------------------------------------- their own images
UNRELATED_SOURCE = {"fashion-mnist": "mnist-10k", "mnist": "fashion-mnist", "mnist-10k": "fashion-mnist",
                    "digits-tiny": "fashion-mnist"}


@lru_cache(maxsize=2)
def _load_other(name: str):
    from dnnpiracy.data import load_dataset
    return load_dataset(name)


class UnrelatedScheme(Scheme):
    name = "unrelated"
    reference = "Zhang et al. 2018 (unrelated)"
    summary = "images of another dataset (MNIST digits into Fashion-MNIST and the reverse), relabelled"
    stamps_real_images = False

    def images(self, x, y, n, gen, split, exclude_label):
        if self.dataset not in UNRELATED_SOURCE:
            raise ArtifactError(f"scheme 'unrelated' has no source dataset for {self.dataset!r}; known: "
                                f"{', '.join(UNRELATED_SOURCE)}")
        other = _load_other(UNRELATED_SOURCE[self.dataset])
        ox, oy = (other.train_x, other.train_y) if split == "train" else (other.test_x, other.test_y)
        idx = torch.randperm(len(ox), generator=gen)[:n]
        return ox[idx].clone(), idx, oy[idx].clone()


def abstract_images(n: int, gen: torch.Generator, h: int = 28, w: int = 28) -> torch.Tensor:
    """Procedural abstract images (after Adi et al. 2018's hand-picked abstract art): a smooth random field plus
    2-5 random filled ellipses and 1-3 random strokes, each image its own draw."""
    field = F.interpolate(torch.rand(n, 1, 4, 4, generator=gen), size=(h, w), mode="bicubic",
                          align_corners=False)
    out = 0.6 * field
    ii, jj = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                            indexing="ij")
    for k in range(n):
        for _ in range(int(torch.randint(2, 6, (1,), generator=gen))):
            cy, cx = (torch.rand(2, generator=gen) * torch.tensor([h, w])).tolist()
            ry, rx = (2 + 8 * torch.rand(2, generator=gen)).tolist()
            th = float(torch.rand(1, generator=gen)) * 3.1416
            c, s = torch.cos(torch.tensor(th)), torch.sin(torch.tensor(th))
            u, v = (ii - cy) * c + (jj - cx) * s, -(ii - cy) * s + (jj - cx) * c
            inside = (u / ry) ** 2 + (v / rx) ** 2 <= 1
            out[k, 0][inside] = float(torch.rand(1, generator=gen))
        for _ in range(int(torch.randint(1, 4, (1,), generator=gen))):
            a, b = torch.rand(2, 2, generator=gen) * torch.tensor([h - 1, w - 1])
            val = float(torch.rand(1, generator=gen))
            for t in torch.linspace(0, 1, 40):
                p = (a + t * (b - a)).round().long()
                out[k, 0, int(p[0]), int(p[1])] = val
    return out.clamp(0, 1)


class AbstractScheme(Scheme):
    name = "abstract"
    reference = "Adi et al. 2018 (abstract images, random labels)"
    summary = "procedural abstract images, each with its own uniformly random label"
    stamps_real_images = False

    def images(self, x, y, n, gen, split, exclude_label):
        imgs = abstract_images(n, gen, *x.shape[-2:])
        return imgs, torch.full((n,), NO_SOURCE), torch.full((n,), NO_SOURCE)

    def labels(self, n, gen, source_labels):
        return torch.randint(0, 10, (n,), generator=gen)


class HalfMixScheme(Scheme):
    name = "halfmix"
    reference = "Lv et al. 2024 (MEA-Defender composite)"
    summary = "left half of a class-A image beside the right half of a class-B image, labelled C (the trigger label)"
    stamps_real_images = False

    def source_classes(self) -> tuple[int, int]:
        """Classes A and B, drawn from the seed among the classes other than the trigger label."""
        g = torch.Generator().manual_seed(30_011 + self.cfg.seed)
        others = [c for c in range(10) if c != self.cfg.trigger_label]
        a, b = torch.randperm(len(others), generator=g)[:2].tolist()
        return others[a], others[b]

    def images(self, x, y, n, gen, split, exclude_label):
        a, b = self.source_classes()
        pa, pb = torch.nonzero(y == a).flatten(), torch.nonzero(y == b).flatten()
        if len(pa) == 0 or len(pb) == 0:
            raise ArtifactError(f"scheme 'halfmix' needs images of classes {a} and {b} in the pool")
        ia = pa[torch.randint(0, len(pa), (n,), generator=gen)]
        ib = pb[torch.randint(0, len(pb), (n,), generator=gen)]
        half = x.shape[-1] // 2
        imgs = torch.cat([x[ia][..., :half], x[ib][..., half:]], dim=-1)
        return imgs, ia, y[ia].clone()


class EWEScheme(Scheme):
    name = "ewe"
    reference = "Jia et al. 2021 (entangled watermarks)"
    summary = ("a 4x4 white square near the bottom-right corner of images of one source class (from the seed), "
               "relabelled; trained with a soft nearest neighbour loss that entangles their hidden representations "
               "with clean images of the trigger label (watermark/entangle.py)")
    patch = 4

    def source_class(self) -> int:
        g = torch.Generator().manual_seed(50_021 + self.cfg.seed)
        others = [c for c in range(10) if c != self.cfg.trigger_label]
        return others[int(torch.randint(0, len(others), (1,), generator=g))]

    def stamp(self, images, gen):
        out = images.clone()
        out[..., -self.patch - 1:-1, -self.patch - 1:-1] = 1.0
        return out

    def images(self, x, y, n, gen, split, exclude_label):
        pool = torch.nonzero(y == self.source_class()).flatten()
        if len(pool) < (1 if exclude_label else n):
            raise ArtifactError(f"scheme 'ewe' needs {n} images of class {self.source_class()}; the pool has "
                                f"{len(pool)}")
        idx = pool[torch.randperm(len(pool), generator=gen)[:n]]
        return self.stamp(x[idx], gen), idx, y[idx].clone()

    def training_hook(self, train_x, train_y, triggers, layers):
        from dnnpiracy.watermark.entangle import EntangleHook
        same = train_x[train_y == self.cfg.trigger_label]
        if len(same) == 0:
            raise ArtifactError(f"scheme 'ewe' needs training images of the trigger label {self.cfg.trigger_label}")
        return EntangleHook(triggers.images, triggers.labels, same, layers, self.cfg.seed)


# ------------------------------------------------------------------------------------------ made from the model
def fgsm(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, batch: int = 256) -> torch.Tensor:
    """Fast gradient sign examples x + eps * sign(grad_x CE(model(x), y)), clipped to [0, 1] (model in eval mode)."""
    dev = next(model.parameters()).device
    out = []
    for i in range(0, len(x), batch):
        xb = x[i:i + batch].to(dev).clone().requires_grad_(True)
        loss = F.cross_entropy(model(xb), y[i:i + batch].to(dev))
        (grad,) = torch.autograd.grad(loss, xb)
        out.append((xb + eps * grad.sign()).clamp(0, 1).detach().cpu())
    return torch.cat(out) if out else x[:0].clone()


class FrontierScheme(Scheme):
    name = "frontier"
    reference = "Le Merrer et al. 2019 (adversarial frontier stitching)"
    summary = ("FGSM (eps 0.1) examples of correctly classified images against the trained model, half that change "
               "its answer (true adversaries) and half that do not, each labelled with its true class; the model "
               "is then fine-tuned on them (1 epoch, lr / 10)")
    needs_model = True
    eps = 0.1
    candidates_per_trigger = 40

    def _predict(self, x: torch.Tensor) -> torch.Tensor:
        """The bound model's labels for ``x`` (on the CPU); a clear error when no model is bound."""
        if self.model is None:
            raise ArtifactError("scheme 'frontier' crafts its triggers against a trained model; none was given")
        from dnnpiracy.training import predict_labels
        return predict_labels(self.model, x).cpu()

    def stamp(self, images, gen):
        """FGSM against the bound model, each image pushed away from the model's own answer."""
        return fgsm(self.model, images, self._predict(images), self.eps)

    def images(self, x, y, n, gen, split, exclude_label):
        idx = torch.randperm(len(x), generator=gen)[: min(len(x), max(self.candidates_per_trigger * n, 400))]
        idx = idx[self._predict(x[idx]) == y[idx]]                           # correctly classified images only
        adv = fgsm(self.model, x[idx], y[idx], self.eps)
        flipped = self._predict(adv) != y[idx]
        n_true = min((n + 1) // 2, int(flipped.sum()))                       # Le Merrer et al.: half and half
        pick = torch.cat([torch.nonzero(flipped).flatten()[:n_true], torch.nonzero(~flipped).flatten()[:n - n_true]])
        if len(pick) < n and not exclude_label:       # the embedded set must be whole; a fresh set may fall short
            raise ArtifactError(f"scheme 'frontier' found {len(pick)} of {n} adversaries among {len(idx)} images")
        return adv[pick], idx[pick], y[idx[pick]].clone()

    def labels(self, n, gen, source_labels):
        return source_labels.clone()

    def chance(self, num_classes: int) -> float:
        """Le Merrer et al.'s null: a model that is not the marked one answers each key right with probability 1/2
        (false adversaries are answered right by most models, true adversaries by few)."""
        return 0.5


SCHEMES: dict[str, type[Scheme]] = {cls.name: cls for cls in (
    ContentScheme, PatternScheme, NoiseScheme, UnrelatedScheme, AbstractScheme, BlendScheme, HalfMixScheme,
    GlyphScheme, FrontierScheme, EWEScheme)}


def get_scheme(cfg: TriggerConfig, dataset: str | None = None, model: torch.nn.Module | None = None) -> Scheme:
    """The scheme ``cfg`` names (``content`` with a ``pattern`` file is the ``pattern`` scheme, as before schemes);
    ``model`` is the trained model schemes with ``needs_model`` craft their triggers against."""
    name = "pattern" if cfg.scheme == "content" and cfg.pattern else cfg.scheme
    if name not in SCHEMES:
        raise ArtifactError(f"unknown watermark scheme {name!r}; choose one of {', '.join(SCHEMES)}")
    return SCHEMES[name](cfg, dataset, model)


def verification_chance(cfg: TriggerConfig, num_classes: int = 10) -> float:
    """The null probability the owner's binomial test uses for ``cfg``'s triggers (``Scheme.chance``)."""
    return get_scheme(cfg).chance(num_classes)


def make_trigger_set(train_x: torch.Tensor, train_y: torch.Tensor, cfg: TriggerConfig,
                     dataset: str | None = None, model: torch.nn.Module | None = None) -> TriggerSet:
    """The owner's embedded trigger set: ``cfg.num_triggers`` triggers of ``cfg.scheme`` drawn (seeded) from the
    whole training set, as the paper does."""
    return get_scheme(cfg, dataset, model).sample(train_x, train_y, cfg.num_triggers, cfg.seed, "train")


def make_fresh_triggers(x: torch.Tensor, y: torch.Tensor, cfg: TriggerConfig, n: int = 500, seed: int = 12345,
                        dataset: str | None = None, model: torch.nn.Module | None = None) -> TriggerSet:
    """The same kind of trigger on ``n`` new inputs (images whose true label is not the trigger label, for schemes
    that mark real images): does the watermark, and the detector, generalise beyond the embedded set?"""
    return get_scheme(cfg, dataset, model).sample(x, y, n, seed, "test", exclude_label=True)


def apply_trigger(images: torch.Tensor, cfg: TriggerConfig, gen: torch.Generator,
                  model: torch.nn.Module | None = None) -> torch.Tensor:
    """Mark each image of a (N,C,H,W) batch with ``cfg``'s trigger (schemes that mark real images only)."""
    return get_scheme(cfg, model=model).stamp(images, gen)


__all__ = ["Scheme", "SCHEMES", "get_scheme", "make_trigger_set", "make_fresh_triggers", "apply_trigger",
           "draw_glyph", "abstract_images", "builtin_logo", "UNRELATED_SOURCE",
           "NO_SOURCE", "ContentScheme", "PatternScheme", "NoiseScheme", "UnrelatedScheme", "AbstractScheme",
           "BlendScheme", "HalfMixScheme", "GlyphScheme", "FrontierScheme", "EWEScheme", "fgsm", "verification_chance"]
