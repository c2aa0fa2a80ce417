"""The paper's generative detector: one DCGAN per label, trained on that label's surrogate heatmaps; the
discriminator scores a query's heatmap by its loss as a real sample, -log D_y(h).  Architecture and training follow
PyTorch-GAN's implementations/dcgan/dcgan.py (facts.md §3), including its BatchNorm2d(n, 0.8) quirk: the 0.8 is the
*eps* argument (documented in GanConfig.bn_eps)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dnnpiracy.config import GanConfig


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Conv2d):
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


class Generator(nn.Module):
    def __init__(self, cfg: GanConfig):
        super().__init__()
        self.init_size = cfg.img_size // 4
        self.l1 = nn.Linear(cfg.latent_dim, 128 * self.init_size ** 2)
        eps = cfg.bn_eps
        self.conv_blocks = nn.Sequential(
            nn.BatchNorm2d(128), nn.Upsample(scale_factor=2),
            nn.Conv2d(128, 128, 3, 1, 1), nn.BatchNorm2d(128, eps), nn.LeakyReLU(0.2, inplace=True),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(128, 64, 3, 1, 1), nn.BatchNorm2d(64, eps), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(64, 1, 3, 1, 1), nn.Tanh())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.conv_blocks(self.l1(z).view(len(z), 128, self.init_size, self.init_size))


class Discriminator(nn.Module):
    def __init__(self, cfg: GanConfig):
        super().__init__()

        def block(cin: int, cout: int, bn: bool = True) -> list[nn.Module]:
            layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, 2, 1), nn.LeakyReLU(0.2, inplace=True),
                                       nn.Dropout2d(0.25)]
            return layers + ([nn.BatchNorm2d(cout, cfg.bn_eps)] if bn else [])

        self.model = nn.Sequential(*block(1, 16, bn=False), *block(16, 32), *block(32, 64), *block(64, 128))
        ds = cfg.img_size // 2 ** 4
        self.adv_layer = nn.Sequential(nn.Linear(128 * ds ** 2, 1), nn.Sigmoid())

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        return self.adv_layer(self.model(img).flatten(1))


def to_gan_input(heatmaps: torch.Tensor, img_size: int) -> torch.Tensor:
    """[0,1] heatmaps (B,1,H,W) -> (B,1,img_size,img_size) in [-1,1], as dcgan.py's Resize + Normalize([0.5],[0.5])."""
    x = F.interpolate(heatmaps, size=(img_size, img_size), mode="bilinear", align_corners=False)
    return x * 2 - 1


def train_dcgan(heatmaps: torch.Tensor, cfg: GanConfig, seed: int = 0,
                device: torch.device | str | None = None, d_steps: int = 1) -> Discriminator:
    """Train one DCGAN on ``heatmaps`` ([0,1], (N,1,H,W)); return its discriminator on the CPU, in eval mode.
    ``d_steps`` discriminator updates follow each generator update (1 = PyTorch-GAN's loop).

    Trains on ``device`` (default: CUDA when available). Shuffles and latents are drawn on the CPU from one
    seeded generator, so a CPU run is bit-for-bit what it was before devices were supported."""
    device = torch.device(device) if device is not None else torch.device(
        "cuda" if torch.cuda.is_available() else "cpu")
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    G, D = Generator(cfg), Discriminator(cfg)
    G.apply(_init_weights)
    D.apply(_init_weights)
    G, D = G.to(device), D.to(device)
    opt_g = torch.optim.Adam(G.parameters(), lr=cfg.lr, betas=cfg.betas)
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg.lr, betas=cfg.betas)
    real_all = to_gan_input(heatmaps.cpu(), cfg.img_size).to(device)
    n = len(real_all)
    for _epoch in range(cfg.epochs):
        order = torch.randperm(n, generator=gen)
        for start in range(0, n, cfg.batch_size):
            real = real_all[order[start:start + cfg.batch_size].to(device)]
            if len(real) < 2:   # BatchNorm needs >= 2 samples in training mode
                continue
            ones = torch.ones(len(real), 1, device=device)
            zeros = torch.zeros(len(real), 1, device=device)
            z = torch.randn(len(real), cfg.latent_dim, generator=gen).to(device)
            opt_g.zero_grad()
            fake = G(z)
            F.binary_cross_entropy(D(fake), ones).backward()
            opt_g.step()
            for _ in range(d_steps):
                opt_d.zero_grad()
                d_loss = (F.binary_cross_entropy(D(real), ones) + F.binary_cross_entropy(D(fake.detach()), zeros)) / 2
                d_loss.backward()
                opt_d.step()
    return D.cpu().eval()


@torch.inference_mode()
def discriminator_score(D: Discriminator, heatmaps: torch.Tensor, img_size: int) -> torch.Tensor:
    """-log D(h): the discriminator's BCE loss on h taken as real (higher = less like the training heatmaps)."""
    p = D.eval()(to_gan_input(heatmaps, img_size)).flatten().clamp_min(1e-12)
    return -torch.log(p)
