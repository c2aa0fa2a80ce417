"""Trigger sets and their primitives: the :class:`TriggerSet` record, disc and pattern stamping, and the trigger
artifacts (safetensors + JSON).  Which trigger a watermark uses is a *scheme* (``watermark/schemes.py``); the
paper's (§V-A-2, after Zhang et al. 2018) is ``content``: m training images, each with k white round blocks (filled
discs of radius r), all relabelled to the trigger label."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from dnnpiracy.config import TriggerConfig
from dnnpiracy.io import ArtifactError, git_commit, load_tensors, save_tensors


@dataclass(frozen=True)
class TriggerSet:
    images: torch.Tensor        # float32 (m,1,H,W) in [0,1]
    labels: torch.Tensor        # int64 (m,), the label each trigger must get
    source_idx: torch.Tensor    # int64 (m,), indices of the source images in their split
    source_labels: torch.Tensor  # int64 (m,), the source images' true labels (-1: none)
    config: TriggerConfig

    def __len__(self) -> int:
        return len(self.labels)


def disc_mask(h: int, w: int, cy: int, cx: int, radius: int) -> torch.Tensor:
    """Boolean (h, w) mask of the filled disc {(i, j): (i-cy)^2 + (j-cx)^2 <= radius^2}."""
    ii, jj = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return (ii - cy) ** 2 + (jj - cx) ** 2 <= radius ** 2


def stamp_discs(image: torch.Tensor, blocks: int, radius: int, gen: torch.Generator,
                value: float = 1.0) -> torch.Tensor:
    """Return a copy of ``image`` (C,H,W) with ``blocks`` discs at uniform random centres entirely inside it."""
    _, h, w = image.shape
    out = image.clone()
    for _ in range(blocks):
        cy = int(torch.randint(radius, h - radius, (1,), generator=gen))
        cx = int(torch.randint(radius, w - radius, (1,), generator=gen))
        out[:, disc_mask(h, w, cy, cx, radius)] = value
    return out


def load_pattern(path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """A PNG pattern -> (pattern, mask), both float (h, w) in [0, 1].  The mask is the alpha channel when there is
    one, else the pixels that are not black."""
    import matplotlib.image as mpimg

    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"trigger pattern not found: {path}")
    try:
        arr = np.asarray(mpimg.imread(str(path)), dtype=np.float32)
    except Exception as exc:
        raise ArtifactError(f"cannot read trigger pattern {path} as PNG: {exc}") from exc
    if arr.max() > 1.0:
        arr = arr / 255.0
    if arr.ndim == 2:
        gray, mask = arr, (arr > 0).astype(np.float32)
    else:
        gray = arr[..., :3].mean(-1) if arr.shape[-1] >= 3 else arr[..., 0]
        mask = arr[..., 3] if arr.shape[-1] == 4 else (gray > 0).astype(np.float32)
    return torch.from_numpy(gray.copy()), torch.from_numpy(mask.copy())


def stamp_pattern(image: torch.Tensor, pattern: torch.Tensor, mask: torch.Tensor,
                  position: tuple[int, int] | None, gen: torch.Generator) -> torch.Tensor:
    """Blend ``pattern`` into ``image`` (C,H,W) where ``mask`` is set, at ``position`` (top-left) or a random one."""
    _, h, w = image.shape
    ph, pw = pattern.shape
    if ph > h or pw > w:
        raise ArtifactError(f"trigger pattern of size {ph}x{pw} does not fit a {h}x{w} image")
    if position is None:
        top = int(torch.randint(0, h - ph + 1, (1,), generator=gen))
        left = int(torch.randint(0, w - pw + 1, (1,), generator=gen))
    else:
        top, left = position
    out = image.clone()
    region = out[:, top:top + ph, left:left + pw]
    out[:, top:top + ph, left:left + pw] = region * (1 - mask) + pattern * mask
    return out


# ---------------------------------------------------------------------------------------------------- artifacts
def save_trigger_set(path: str | Path, ts: TriggerSet, extra_meta: dict | None = None) -> Path:
    meta = {"format": "dnnpiracy-triggers/1", "config": asdict(ts.config), "git_commit": git_commit(),
            **(extra_meta or {})}
    return save_tensors(path, {"images": ts.images, "labels": ts.labels, "source_idx": ts.source_idx,
                               "source_labels": ts.source_labels}, meta)


def load_trigger_set(path: str | Path) -> TriggerSet:
    tensors, meta = load_tensors(path)
    missing = {"images", "labels", "source_idx", "source_labels"} - set(tensors)
    if missing or "config" not in meta:
        raise ArtifactError(f"{path} is not a trigger set (missing {sorted(missing) or 'config metadata'})")
    images = tensors["images"]
    if images.ndim != 4 or images.shape[0] != len(tensors["labels"]):
        raise ArtifactError(f"{path}: trigger images have shape {tuple(images.shape)}, expected (m, C, H, W)")
    return TriggerSet(images.float(), tensors["labels"].long(), tensors["source_idx"].long(),
                      tensors["source_labels"].long(), TriggerConfig(**meta["config"]))


def save_trigger_grid(path: str | Path, ts: TriggerSet, class_names: tuple[str, ...] | None = None) -> Path:
    """A PNG grid of the trigger inputs, titled 'true -> trigger label'."""
    import io as _io

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dnnpiracy.io import atomic_write_bytes

    m = len(ts)
    cols = min(m, 5)
    rows = (m + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(1.8 * cols, 2.0 * rows), squeeze=False)
    name = (lambda c: class_names[c] if c >= 0 else "none") if class_names else str
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k < m:
            ax.imshow(ts.images[k, 0].numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_title(f"{name(int(ts.source_labels[k]))} -> {name(int(ts.labels[k]))}", fontsize=7)
    fig.suptitle(f"{m} trigger inputs, scheme {ts.config.scheme!r} (source -> label)", fontsize=9)
    fig.tight_layout()
    buf = _io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())
