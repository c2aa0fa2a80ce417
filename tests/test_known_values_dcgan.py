"""The paper's DCGAN detector (attack/dcgan.py) against known values: PyTorch-GAN's dcgan.py architecture and
training loop (transcribed independently below), the -log D score, and the direction of training (a discriminator
trained on real heatmaps must call them real).  `mutmut` runs these against dcgan.py (docs/mutation.md)."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dnnpiracy.attack.dcgan import (
    Discriminator,
    Generator,
    _init_weights,
    discriminator_score,
    to_gan_input,
    train_dcgan,
)
from dnnpiracy.config import GanConfig


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These models are tiny: one intra-op thread is faster than two fighting for the cores (and the comparisons
    below are within one run, so the thread count does not change what they check)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

# ---------------------------------------------------------------- architecture: PyTorch-GAN implementations/dcgan


def describe(module: nn.Module) -> list[tuple]:
    """The layers of a Sequential as plain tuples (independent of how a torch version prints them)."""
    out = []
    for m in module:
        if isinstance(m, nn.Linear):
            out.append(("Linear", m.in_features, m.out_features, m.bias is not None))
        elif isinstance(m, nn.Conv2d):
            out.append(("Conv2d", m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding))
        elif isinstance(m, nn.BatchNorm2d):
            out.append(("BatchNorm2d", m.num_features, m.eps, m.momentum, m.affine))
        elif isinstance(m, nn.LeakyReLU):
            out.append(("LeakyReLU", m.negative_slope, m.inplace))
        elif isinstance(m, nn.Dropout2d):
            out.append(("Dropout2d", m.p))
        elif isinstance(m, nn.Upsample):
            out.append(("Upsample", m.scale_factor, m.mode))
        else:
            out.append((type(m).__name__,))
    return out


def test_generator_is_pytorch_gans_dcgan_generator():
    g = Generator(GanConfig(img_size=32, latent_dim=100))
    assert g.init_size == 8                                         # img_size // 4
    assert describe([g.l1]) == [("Linear", 100, 128 * 8 * 8, True)]
    assert describe(g.conv_blocks) == [
        ("BatchNorm2d", 128, 1e-5, 0.1, True),                      # nn.BatchNorm2d(128): default eps
        ("Upsample", 2.0, "nearest"),
        ("Conv2d", 128, 128, (3, 3), (1, 1), (1, 1)),
        ("BatchNorm2d", 128, 0.8, 0.1, True),                       # BatchNorm2d(128, 0.8): eps = 0.8
        ("LeakyReLU", 0.2, True),
        ("Upsample", 2.0, "nearest"),
        ("Conv2d", 128, 64, (3, 3), (1, 1), (1, 1)),
        ("BatchNorm2d", 64, 0.8, 0.1, True),
        ("LeakyReLU", 0.2, True),
        ("Conv2d", 64, 1, (3, 3), (1, 1), (1, 1)),
        ("Tanh",),
    ]
    g16 = Generator(GanConfig(img_size=16, latent_dim=7, bn_eps=0.5))
    assert g16.init_size == 4 and describe([g16.l1]) == [("Linear", 7, 128 * 16, True)]
    assert [m.eps for m in g16.conv_blocks if isinstance(m, nn.BatchNorm2d)] == [1e-5, 0.5, 0.5]


def test_discriminator_is_pytorch_gans_dcgan_discriminator():
    d = Discriminator(GanConfig(img_size=32))
    block = [("LeakyReLU", 0.2, True), ("Dropout2d", 0.25)]
    assert describe(d.model) == [
        ("Conv2d", 1, 16, (3, 3), (2, 2), (1, 1)), *block,          # the first block has no BatchNorm
        ("Conv2d", 16, 32, (3, 3), (2, 2), (1, 1)), *block, ("BatchNorm2d", 32, 0.8, 0.1, True),
        ("Conv2d", 32, 64, (3, 3), (2, 2), (1, 1)), *block, ("BatchNorm2d", 64, 0.8, 0.1, True),
        ("Conv2d", 64, 128, (3, 3), (2, 2), (1, 1)), *block, ("BatchNorm2d", 128, 0.8, 0.1, True),
    ]
    # four stride-2 convolutions: 32 -> 2, so the head sees 128 * 2 * 2 features
    assert describe(d.adv_layer) == [("Linear", 128 * 2 * 2, 1, True), ("Sigmoid",)]
    assert describe(Discriminator(GanConfig(img_size=64)).adv_layer)[0] == ("Linear", 128 * 4 * 4, 1, True)
    d16 = Discriminator(GanConfig(img_size=16, bn_eps=0.3))
    assert describe(d16.adv_layer)[0] == ("Linear", 128, 1, True)
    assert [m.eps for m in d16.model if isinstance(m, nn.BatchNorm2d)] == [0.3, 0.3, 0.3]


def test_forward_shapes_and_ranges():
    torch.manual_seed(0)
    cfg = GanConfig(img_size=32, latent_dim=12)
    g, d = Generator(cfg).eval(), Discriminator(cfg).eval()
    img = g(torch.randn(3, 12))
    assert img.shape == (3, 1, 32, 32) and img.abs().max() < 1          # Tanh
    p = d(img)
    assert p.shape == (3, 1) and ((p > 0) & (p < 1)).all()              # Sigmoid
    cfg16 = GanConfig(img_size=16, latent_dim=5)
    assert Generator(cfg16).eval()(torch.randn(2, 5)).shape == (2, 1, 16, 16)
    assert Discriminator(cfg16).eval()(torch.zeros(2, 1, 16, 16)).shape == (2, 1)


def test_init_weights_is_dcgans_normal_init():
    torch.manual_seed(0)
    conv, bn, lin = nn.Conv2d(128, 128, 3), nn.BatchNorm2d(4096), nn.Linear(8, 8)
    conv_bias, lin_w = conv.bias.detach().clone(), lin.weight.detach().clone()
    nn.Sequential(conv, bn, lin).apply(_init_weights)
    w = conv.weight.detach()
    assert abs(float(w.mean())) < 3e-4 and float(w.std()) == pytest.approx(0.02, rel=0.02)   # N(0, 0.02)
    assert torch.equal(conv.bias, conv_bias)                            # conv bias: left as it was
    b = bn.weight.detach()
    assert float(b.mean()) == pytest.approx(1.0, abs=2e-3) and float(b.std()) == pytest.approx(0.02, rel=0.1)
    assert torch.equal(bn.bias.detach(), torch.zeros(4096))
    assert torch.equal(lin.weight, lin_w)                               # Linear: not touched


# ---------------------------------------------------------------- heatmaps -> GAN input


def test_to_gan_input_resizes_bilinearly_and_maps_0_1_to_minus_1_1():
    h = torch.tensor([[[[0.0, 1.0], [0.0, 1.0]]]])
    x = to_gan_input(h, 4)
    # bilinear, align_corners=False, 2 -> 4: samples at -0.25 (clamped), 0.25, 0.75, 1.25 (clamped) of a pixel
    # -> 0, 0.25, 0.75, 1 -> times 2 minus 1
    assert x.shape == (1, 1, 4, 4)
    assert torch.equal(x, torch.tensor([-1.0, -0.5, 0.5, 1.0]).expand(1, 1, 4, 4))
    assert torch.equal(to_gan_input(torch.full((2, 1, 8, 8), 0.25), 4), torch.full((2, 1, 4, 4), -0.5))
    assert torch.equal(to_gan_input(torch.full((1, 1, 2, 2), 0.75), 3), torch.full((1, 1, 3, 3), 0.5))
    assert torch.equal(to_gan_input(torch.zeros(1, 1, 5, 7), 3), -torch.ones(1, 1, 3, 3))
    assert torch.equal(to_gan_input(torch.ones(1, 1, 5, 7), 3), torch.ones(1, 1, 3, 3))


# ---------------------------------------------------------------- the score: -log D(h)


def pinned(bias: float, img_size: int = 32) -> Discriminator:
    """A discriminator whose output is sigmoid(bias) for every input."""
    d = Discriminator(GanConfig(img_size=img_size))
    with torch.no_grad():
        d.adv_layer[0].weight.zero_()
        d.adv_layer[0].bias.fill_(bias)
    return d


def test_discriminator_score_known_values():
    h = torch.rand(5, 1, 28, 28)
    # D = 1/2 -> log 2; D = 1/4 -> log 4 (-log(1 - D) would be log(4/3)); D = 3/4 -> log(4/3)
    assert torch.allclose(discriminator_score(pinned(0.0), h, 32), torch.full((5,), math.log(2)), atol=1e-6)
    assert torch.allclose(discriminator_score(pinned(-math.log(3)), h, 32), torch.full((5,), math.log(4)), atol=1e-6)
    assert torch.allclose(discriminator_score(pinned(math.log(3), 16), h, 16), torch.full((5,), math.log(4 / 3)),
                          atol=1e-6)
    # D = 0 (sigmoid underflows): clamped at 1e-12 -> -log(1e-12) = 27.631
    s = discriminator_score(pinned(-1e4), h[:2], 32)
    assert s.shape == (2,) and torch.allclose(s, torch.full((2,), 12 * math.log(10)), atol=1e-4)
    # D = 1: a perfectly real-looking heatmap scores 0
    assert torch.equal(discriminator_score(pinned(1e4), h[:1], 32), torch.zeros(1))


def test_discriminator_score_is_lower_for_what_d_calls_real():
    d = pinned(0.0)
    with torch.no_grad():
        d.adv_layer[0].weight.fill_(0.0)
        d.adv_layer[0].weight[0, 0] = 1.0                                  # D reads one feature only
    d.eval()
    h = torch.rand(4, 1, 32, 32)
    with torch.no_grad():
        p = d(to_gan_input(h, 32)).flatten()
    s = discriminator_score(d, h, 32)
    assert torch.allclose(s, -torch.log(p), atol=1e-6)
    assert torch.equal(torch.argsort(s), torch.argsort(-p))                # higher D -> lower score


# ---------------------------------------------------------------- training: PyTorch-GAN's loop, transcribed


def weights_init_normal(m):
    """PyTorch-GAN dcgan.py's init, by class name."""
    name = m.__class__.__name__
    if name.find("Conv") != -1:
        torch.nn.init.normal_(m.weight.data, 0.0, 0.02)
    elif name.find("BatchNorm2d") != -1:
        torch.nn.init.normal_(m.weight.data, 1.0, 0.02)
        torch.nn.init.constant_(m.bias.data, 0.0)


def reference_dcgan(heatmaps, cfg, seed):
    """PyTorch-GAN implementations/dcgan/dcgan.py's training loop; data as Resize + Normalize([0.5], [0.5]); the
    shuffle and the latents drawn from one CPU generator seeded ``seed`` (torch.manual_seed(seed) for the rest);
    batches of fewer than 2 skipped (BatchNorm)."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    generator, discriminator = Generator(cfg), Discriminator(cfg)
    generator.apply(weights_init_normal)
    discriminator.apply(weights_init_normal)
    adversarial_loss = torch.nn.BCELoss()
    optimizer_G = torch.optim.Adam(generator.parameters(), lr=cfg.lr, betas=cfg.betas)
    optimizer_D = torch.optim.Adam(discriminator.parameters(), lr=cfg.lr, betas=cfg.betas)
    data = F.interpolate(heatmaps, size=(cfg.img_size, cfg.img_size), mode="bilinear", align_corners=False)
    data = (data - 0.5) / 0.5
    for _epoch in range(cfg.epochs):
        for batch in torch.randperm(len(data), generator=gen).split(cfg.batch_size):
            imgs = data[batch]
            if imgs.shape[0] < 2:
                continue
            valid = torch.ones(imgs.shape[0], 1)
            fake = torch.zeros(imgs.shape[0], 1)
            optimizer_G.zero_grad()
            z = torch.randn(imgs.shape[0], cfg.latent_dim, generator=gen)
            gen_imgs = generator(z)
            g_loss = adversarial_loss(discriminator(gen_imgs), valid)
            g_loss.backward()
            optimizer_G.step()
            optimizer_D.zero_grad()
            real_loss = adversarial_loss(discriminator(imgs), valid)
            fake_loss = adversarial_loss(discriminator(gen_imgs.detach()), fake)
            d_loss = (real_loss + fake_loss) / 2
            d_loss.backward()
            optimizer_D.step()
    return discriminator.eval()


def assert_same_discriminator(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


# non-default lr and betas (so that dropping either falls back to Adam's defaults and shows); batches of 3, 3, 1
# (n = 7: the last one skipped) and 3, 3, 2 (n = 8: the last one trained)
CFG = GanConfig(img_size=16, latent_dim=8, batch_size=3, epochs=2, lr=3e-3, betas=(0.3, 0.9))


@pytest.mark.parametrize("n", [7, 8])
def test_train_dcgan_is_pytorch_gans_training_loop(n):
    h = torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(n))
    d = train_dcgan(h, CFG, seed=5, device="cpu")
    assert not d.training and next(d.parameters()).device.type == "cpu"
    assert_same_discriminator(d, reference_dcgan(h, CFG, seed=5))


def test_train_dcgan_default_seed_is_0_and_seeds_matter():
    h = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    d0 = train_dcgan(h, CFG, device="cpu")
    assert_same_discriminator(d0, reference_dcgan(h, CFG, seed=0))
    d1 = train_dcgan(h, CFG, seed=1, device="cpu")
    assert not torch.equal(d0.adv_layer[0].weight, d1.adv_layer[0].weight)


def test_train_dcgan_runs_every_epoch():
    h = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    cfg = GanConfig(img_size=16, latent_dim=8, batch_size=4, epochs=3, lr=3e-3, betas=(0.3, 0.9))
    assert_same_discriminator(train_dcgan(h, cfg, seed=2, device="cpu"), reference_dcgan(h, cfg, seed=2))


def test_train_dcgan_with_too_few_inputs_returns_the_initialised_discriminator():
    """One heatmap: every batch has 1 input and is skipped; D is the freshly initialised one."""
    h = torch.rand(1, 1, 8, 8)
    d = train_dcgan(h, CFG, seed=3, device="cpu")
    torch.manual_seed(3)
    g, ref = Generator(CFG), Discriminator(CFG)
    g.apply(weights_init_normal)
    ref.apply(weights_init_normal)
    assert_same_discriminator(d, ref)


def test_train_dcgan_default_device(monkeypatch):
    h = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    # no CUDA: the CPU, bit for bit the explicit-CPU run
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert_same_discriminator(train_dcgan(h, CFG, seed=4), train_dcgan(h, CFG, seed=4, device="cpu"))
    # CUDA available: the models are moved to "cuda" (stopped right there, so no GPU is needed)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    moved = []

    class Stop(Exception):
        pass

    def fake_to(self, *args, **kwargs):
        moved.append(args[0] if args else kwargs.get("device"))
        raise Stop

    monkeypatch.setattr(nn.Module, "to", fake_to)
    with pytest.raises(Stop):
        train_dcgan(h, CFG, seed=4)
    assert moved == [torch.device("cuda")]
    # an explicit device wins over the default, CUDA or not
    with pytest.raises(Stop):
        train_dcgan(h, CFG, seed=4, device="cpu")
    assert moved[1:] == [torch.device("cpu")]


def test_train_dcgan_keeps_every_tensor_on_the_requested_device():
    """On the meta device (shapes, no data) a run goes through every training step -- a tensor left on the CPU
    (the data, a batch, the labels, the latents, a model) fails there with a device mismatch -- and stops only at
    the final copy of D back to the CPU, which a meta tensor cannot do."""
    with pytest.raises(NotImplementedError, match="Cannot copy out of meta tensor"):
        train_dcgan(torch.rand(8, 1, 8, 8), CFG, seed=0, device="meta")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_train_dcgan_on_cuda_returns_a_cpu_discriminator():
    d = train_dcgan(torch.rand(8, 1, 8, 8), CFG, seed=0, device="cuda")
    assert not d.training and next(d.parameters()).device.type == "cpu"
    assert torch.isfinite(discriminator_score(d, torch.rand(3, 1, 8, 8), CFG.img_size)).all()


# ---------------------------------------------------------------- training direction: real -> 1, fake -> 0


def blobs(n: int, seed: int) -> torch.Tensor:
    """Grad-CAM-like heatmaps: one Gaussian blob near the centre of an 8x8 map, in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
    c = 3.5 + 0.5 * torch.randn(n, 2, generator=g)
    return torch.exp(-((yy - c[:, 0, None, None]) ** 2 + (xx - c[:, 1, None, None]) ** 2) / 4)[:, None]


def test_trained_discriminator_calls_its_training_heatmaps_real():
    """After 12 steps on 8 blob heatmaps, D scores them (and unseen blobs) below log 2 -- it takes them for real --
    and below a featureless grey map (what an untrained generator emits: tanh(~0) -> 0.5), and lower than the
    untrained D did.  With the labels of D's loss swapped (real -> 0, fake -> 1) the same run scores the blobs 3.2
    (measured), above the grey map: every assertion below fails."""
    cfg = GanConfig(img_size=32, latent_dim=16, batch_size=2, epochs=3, lr=2e-3)
    d = train_dcgan(blobs(8, 0), cfg, seed=1, device="cpu")
    real = discriminator_score(d, blobs(8, 0), 32).mean()              # measured: 0.591
    unseen = discriminator_score(d, blobs(32, 1), 32).mean()           # 0.596
    grey = discriminator_score(d, torch.full((8, 1, 8, 8), 0.5), 32).mean()   # 0.729
    assert real < math.log(2) and unseen < math.log(2)
    assert real < grey and unseen < grey
    untrained = train_dcgan(blobs(1, 0), cfg, seed=1, device="cpu")   # one input: no step taken
    assert real < discriminator_score(untrained, blobs(8, 0), 32).mean()
