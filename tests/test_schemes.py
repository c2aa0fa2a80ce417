"""Watermark schemes: what each trigger is, that it is deterministic, and that the paper's scheme is unchanged."""

from dataclasses import asdict

import pytest
import torch

from dnnpiracy.config import TriggerConfig
from dnnpiracy.data import Dataset
from dnnpiracy.io import ArtifactError
from dnnpiracy.watermark import SCHEMES, make_fresh_triggers, make_trigger_set, stamp_discs, verify
from dnnpiracy.watermark import schemes as sch


def test_content_scheme_draws_exactly_as_before_schemes(tiny):
    """The paper's triggers (and so every cached target) are the seeded draw they always were: randperm of the
    training set, then k discs per image from the same generator."""
    cfg = TriggerConfig(trigger_label=4, seed=11, blocks=3, radius=2)
    gen = torch.Generator().manual_seed(11)
    idx = torch.randperm(len(tiny.train_x), generator=gen)[:15]
    ref = torch.stack([stamp_discs(im, 3, 2, gen) for im in tiny.train_x[idx]])
    ts = make_trigger_set(tiny.train_x, tiny.train_y, cfg)
    assert torch.equal(ts.images, ref) and torch.equal(ts.source_idx, idx)
    assert (ts.labels == 4).all()


def test_scheme_field_is_left_out_of_keys_at_its_default():
    assert "scheme" not in TriggerConfig().key_dict()
    assert TriggerConfig(scheme="noise").key_dict()["scheme"] == "noise"
    d = asdict(TriggerConfig())
    del d["scheme"]
    assert TriggerConfig().key_dict() == d


@pytest.mark.parametrize("name", [n for n in SCHEMES if n != "unrelated" and not SCHEMES[n].needs_model])
def test_every_scheme_is_deterministic_and_well_formed(tiny, name):
    cfg = TriggerConfig(trigger_label=2, seed=5, scheme=name)
    a = make_trigger_set(tiny.train_x, tiny.train_y, cfg, "digits-tiny")
    b = make_trigger_set(tiny.train_x, tiny.train_y, cfg, "digits-tiny")
    c = make_trigger_set(tiny.train_x, tiny.train_y, TriggerConfig(trigger_label=2, seed=6, scheme=name),
                         "digits-tiny")
    assert a.images.shape == (15, 1, 28, 28) and a.labels.shape == (15,)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, c.images)
    assert a.images.min() >= 0 and a.images.max() <= 1
    assert a.config.scheme == name


def test_marking_schemes_change_only_what_they_claim(tiny):
    x = tiny.train_x[:6]
    gen = torch.Generator().manual_seed(0)
    blend = sch.BlendScheme(TriggerConfig(scheme="blend", seed=3))
    key = blend.key_pattern(x.shape[1:])
    assert torch.allclose(blend.stamp(x, gen), 0.8 * x + 0.2 * key)
    glyph = sch.GlyphScheme(TriggerConfig(scheme="glyphs", seed=9))
    mask, intensity = sch.draw_glyph(9)
    out = glyph.stamp(x, gen)
    assert 0.4 <= intensity <= 1.0 and mask.sum() >= 5
    assert torch.equal(out[..., ~mask], x[..., ~mask]) and (out[..., mask] == intensity).all()
    assert not torch.equal(sch.draw_glyph(9)[0], sch.draw_glyph(10)[0])   # another seed, another glyph
    noisy = sch.NoiseScheme(TriggerConfig(scheme="noise")).stamp(x, torch.Generator().manual_seed(4))
    ref = (x + 0.3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(4))).clamp(0, 1)
    assert torch.equal(noisy, ref)


def test_halfmix_stitches_two_source_classes_and_labels_a_third(tiny):
    cfg = TriggerConfig(trigger_label=7, seed=1, scheme="halfmix")
    s = sch.HalfMixScheme(cfg)
    a, b = s.source_classes()
    assert len({a, b, 7}) == 3
    ts = make_trigger_set(tiny.train_x, tiny.train_y, cfg)
    assert (ts.labels == 7).all() and (ts.source_labels == a).all()
    assert torch.equal(ts.images[..., :14], tiny.train_x[ts.source_idx][..., :14])
    right = ts.images[..., 14:]
    pool = tiny.train_x[tiny.train_y == b][..., 14:]
    assert all(any(torch.equal(r, p) for p in pool) for r in right)     # every right half is a class-b image's


def test_abstract_triggers_carry_their_own_random_labels(tiny):
    cfg = TriggerConfig(trigger_label=0, seed=2, scheme="abstract", num_triggers=100)
    ts = make_trigger_set(tiny.train_x, tiny.train_y, cfg)
    assert len(set(ts.labels.tolist())) >= 8        # random labels, not one trigger label
    assert (ts.source_labels == sch.NO_SOURCE).all()
    # verification reads each trigger's own label: a model that answers them exactly is pirated, one that answers
    # the constant trigger label is not
    assert verify(lambda _x: ts.labels, ts.images, ts.labels).pirated
    assert not verify(lambda _x: torch.zeros(100, dtype=torch.long), ts.images, ts.labels).pirated


def test_unrelated_draws_the_other_datasets_images(tiny, monkeypatch):
    other = Dataset("other", torch.rand(50, 1, 28, 28), torch.arange(50) % 10, torch.rand(20, 1, 28, 28),
                    torch.arange(20) % 10, tuple("0123456789"), "", {}, "")
    monkeypatch.setattr(sch, "_load_other", lambda name: other)
    cfg = TriggerConfig(trigger_label=3, seed=0, scheme="unrelated")
    emb = make_trigger_set(tiny.train_x, tiny.train_y, cfg, "fashion-mnist")
    fresh = make_fresh_triggers(tiny.test_x, tiny.test_y, cfg, 10, 1, "fashion-mnist")
    assert torch.equal(emb.images, other.train_x[emb.source_idx]) and (emb.labels == 3).all()
    assert torch.equal(fresh.images, other.test_x[fresh.source_idx])
    with pytest.raises(ArtifactError, match="no source dataset"):
        make_trigger_set(tiny.train_x, tiny.train_y, cfg, "nowhere")


def test_unknown_scheme_is_a_clear_error(tiny):
    with pytest.raises(ArtifactError, match="unknown watermark scheme 'nope'"):
        make_trigger_set(tiny.train_x, tiny.train_y, TriggerConfig(scheme="nope"))


def test_fresh_triggers_of_marking_schemes_avoid_the_trigger_label(tiny):
    for name in ("content", "noise", "blend", "glyphs", "pattern"):
        fr = make_fresh_triggers(tiny.test_x, tiny.test_y, TriggerConfig(trigger_label=4, scheme=name), 50, 1)
        assert (fr.source_labels != 4).all() and len(fr) == 50


def test_committed_table_cells_keep_their_keys_and_another_scheme_gets_its_own():
    """Every committed cell of Tables I and V is found again under the key its configuration gives now (schemes
    did not move the paper's cache), and the same cell with another scheme has another key and trigger."""
    import json
    from dataclasses import replace
    from pathlib import Path

    from dnnpiracy.config import TrainConfig
    from dnnpiracy.experiments.reproduce import Cell
    root = Path(__file__).resolve().parents[1] / "results" / "cells"
    files = sorted((root / "table1").glob("*.json"))[:20] + sorted((root / "table5").glob("*.json"))[:5]
    assert files
    for f in files:
        c = dict(json.loads(f.read_text())["cell"])
        c["train"] = TrainConfig(**c["train"])
        for k in ("taus", "target_fprs"):
            c[k] = tuple(c[k])
        cell = Cell(**c)
        assert cell.key() == f.stem
        noise = replace(cell, scheme="noise")
        assert noise.key() != f.stem and noise.trigger_config().scheme == "noise"


# ------------------------------------------------------------------------------------------- frontier stitching
def _linear_model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 10)).eval()


def test_fgsm_is_the_sign_of_the_analytic_gradient_of_a_linear_model(tiny):
    """For logits W x + b the cross-entropy gradient in x is W^T (softmax - onehot): FGSM must step along its sign."""
    model = _linear_model()
    x, y = tiny.test_x[:8], tiny.test_y[:8]
    w = model[1].weight.detach()
    p = torch.softmax(model(x).detach(), 1)
    grad = ((p - torch.nn.functional.one_hot(y, 10).float()) @ w).reshape(x.shape)
    ref = (x + 0.1 * grad.sign()).clamp(0, 1)
    assert torch.allclose(sch.fgsm(model, x, y, 0.1), ref)


def test_frontier_needs_a_model_and_keeps_the_true_labels(tiny_target):
    tiny, _, target = tiny_target
    cfg = TriggerConfig(trigger_label=2, seed=5, scheme="frontier")
    with pytest.raises(ArtifactError, match="against a trained model"):
        make_trigger_set(tiny.train_x, tiny.train_y, cfg, "digits-tiny")
    a = make_trigger_set(tiny.train_x, tiny.train_y, cfg, "digits-tiny", target.model)
    b = make_trigger_set(tiny.train_x, tiny.train_y, cfg, "digits-tiny", target.model)
    assert torch.equal(a.images, b.images) and len(a) == 15
    src = tiny.train_x[a.source_idx]
    assert torch.equal(a.labels, tiny.train_y[a.source_idx]) and torch.equal(a.labels, a.source_labels)
    assert (a.images - src).abs().max() <= sch.FrontierScheme.eps + 1e-6 and not torch.equal(a.images, src)
    from dnnpiracy.training import predict_labels
    assert (predict_labels(target.model, src) == a.labels).all()          # crafted from correctly classified images
    answers = predict_labels(target.model, a.images)
    n_true = int((answers != a.labels).sum())
    assert 1 <= n_true <= 8                                              # at most half are true adversaries
    assert (answers[:n_true] != a.labels[:n_true]).all() and (answers[n_true:] == a.labels[n_true:]).all()


def test_frontier_verification_tests_against_one_half():
    assert sch.verification_chance(TriggerConfig(scheme="frontier")) == 0.5
    assert sch.verification_chance(TriggerConfig()) == pytest.approx(0.1)
    labels = torch.zeros(15, dtype=torch.long)
    answers = torch.tensor([0] * 13 + [1] * 2)
    v = verify(lambda _x: answers, torch.zeros(15, 1, 28, 28), labels, chance=0.5)
    assert v.p_value == pytest.approx(121 / 2**15) and v.pirated and v.chance == 0.5
    v12 = verify(lambda _x: torch.tensor([0] * 12 + [1] * 3), torch.zeros(15, 1, 28, 28), labels, chance=0.5)
    assert v12.p_value == pytest.approx(576 / 2**15) and not v12.pirated     # 12 of 15 is not significant at 1 %
    with pytest.raises(ValueError, match="chance"):
        verify(lambda _x: answers, torch.zeros(15, 1, 28, 28), labels, chance=1.0)


def test_frontier_target_is_trained_then_stitched(tiny, tmp_path):
    from dnnpiracy.config import TrainConfig
    from dnnpiracy.data import make_splits
    from dnnpiracy.watermark import embed_watermark
    from dnnpiracy.watermark.embed import stitch_config
    splits = make_splits(tiny.test_y, 0.5, seed=0)
    cfg = TrainConfig(arch="small-cnn", epochs=3, lr=1e-3, batch_size=64, seed=0, trigger_oversample=10)
    t = embed_watermark(tiny, splits, cfg, TriggerConfig(trigger_label=1, seed=3, scheme="frontier"), tmp_path,
                        progress=False, log=lambda _m: None)
    phases = [r["phase"] for r in t.report["history"]]
    assert phases == ["unwatermarked"] * 3 + ["stitch"]
    assert (tmp_path / "base" / "model.safetensors").exists() and stitch_config(cfg).lr == pytest.approx(1e-4)
    from dnnpiracy.training import accuracy, load_model
    base, _ = load_model(tmp_path / "base" / "model.safetensors")
    before = accuracy(base, t.triggers.images, t.triggers.labels)       # the true adversaries fool the base model
    assert before <= 8 / 15 and t.report["trigger_accuracy"] > before   # stitching moved the frontier
    assert len(t.fresh_triggers) > 0
    again = embed_watermark(tiny, splits, cfg, TriggerConfig(trigger_label=1, seed=3, scheme="frontier"), tmp_path,
                            progress=False, log=lambda _m: None)
    assert torch.equal(again.triggers.images, t.triggers.images)


# ------------------------------------------------------------------------------------------- entangled watermarks
def test_snnl_known_values_and_reference_loop():
    from dnnpiracy.watermark.entangle import soft_nearest_neighbour_loss as snnl
    m = 5
    same = torch.zeros(2 * m, 3)
    y = torch.tensor([0] * m + [1] * m)
    # every point at the same place (distances 0, so the normalised distances are 0/eps = 0): pure label ratio
    assert float(snnl(same, y)) == pytest.approx(-torch.log(torch.tensor((m - 1) / (2 * m - 1))).item(), rel=1e-5)
    # two groups at two points: same-group d = 0, cross-group d = 1 / (share of cross pairs) = 90 / 50 = 1.8
    far = torch.cat([torch.zeros(m, 3), 100 * torch.ones(m, 3)])
    ref = -torch.log(torch.tensor((m - 1) / (m - 1 + m * torch.exp(torch.tensor(-1.8)).item()))).item()
    assert float(snnl(far, y)) == pytest.approx(ref, rel=1e-5) and ref < float(snnl(same, y))
    g = torch.Generator().manual_seed(0)
    x, lab = torch.randn(7, 4, generator=g), torch.tensor([0, 1, 0, 1, 1, 0, 0])
    d = torch.cdist(x, x) ** 2
    d = d / d[~torch.eye(7, dtype=torch.bool)].mean()
    ref = 0.0
    for i in range(7):
        num = sum(torch.exp(-d[i, j]) for j in range(7) if j != i and lab[j] == lab[i])
        den = sum(torch.exp(-d[i, k]) for k in range(7) if k != i)
        ref += -torch.log(num / den) / 7
    assert float(snnl(x, lab)) == pytest.approx(float(ref), rel=1e-4)


def test_ewe_triggers_are_one_source_class_with_the_square(tiny):
    cfg = TriggerConfig(trigger_label=2, seed=5, scheme="ewe")
    s = sch.EWEScheme(cfg)
    ts = make_trigger_set(tiny.train_x, tiny.train_y, cfg, "digits-tiny")
    assert s.source_class() != 2 and (ts.source_labels == s.source_class()).all() and (ts.labels == 2).all()
    assert (ts.images[..., -5:-1, -5:-1] == 1).all()
    rest = torch.ones(28, 28, dtype=torch.bool)
    rest[-5:-1, -5:-1] = False
    assert torch.equal(ts.images[..., rest], tiny.train_x[ts.source_idx][..., rest])


def test_entangle_hook_entangles_and_is_called_every_kth_batch(tiny):
    """Minimising the hook's loss raises the SNNL of 'is a trigger' at the hooked layer (the sign is right), and
    train_classifier takes one extra step after every hook.every-th batch."""
    from dnnpiracy.config import TrainConfig
    from dnnpiracy.models import build_model
    from dnnpiracy.training import train_classifier
    from dnnpiracy.watermark.entangle import EntangleHook
    from dnnpiracy.watermark.entangle import soft_nearest_neighbour_loss as snnl
    torch.manual_seed(0)
    model = build_model("small-cnn")
    ts = make_trigger_set(tiny.train_x, tiny.train_y, TriggerConfig(trigger_label=2, seed=5, scheme="ewe"))
    same = tiny.train_x[tiny.train_y == 2]
    hook = EntangleHook(ts.images, ts.labels, same, ("fc1",), seed=0)

    def entanglement():
        with torch.no_grad():
            f = model.fc1(model.pool2(model.conv2(model.pool1(model.conv1(torch.cat([ts.images, same[:15]]))))))
        return float(snnl(f, torch.tensor([1] * 15 + [0] * 15)))
    before = entanglement()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(30):
        opt.zero_grad()
        hook(model).backward()
        opt.step()
    assert entanglement() > before + 0.05

    calls = []

    class Counting:
        every = 3

        def __call__(self, m):
            calls.append(1)
            return m(ts.images[:2]).sum() * 0.0
    cfg = TrainConfig(arch="small-cnn", epochs=1, batch_size=64, lr=1e-3, seed=0, trigger_oversample=1)
    train_classifier(tiny.train_x, tiny.train_y, cfg, progress=False, log=lambda _m: None, hook=Counting())
    n_batches = -(-len(tiny.train_x) // 64)
    assert len(calls) == n_batches // 3


def test_entangle_step_leaves_batchnorm_running_statistics(tiny):
    from dnnpiracy.models import build_model
    from dnnpiracy.watermark.entangle import EntangleHook
    model = build_model("resnet18").train()
    ts = make_trigger_set(tiny.train_x, tiny.train_y, TriggerConfig(trigger_label=2, seed=5, scheme="ewe"))
    hook = EntangleHook(ts.images, ts.labels, tiny.train_x[tiny.train_y == 2], ("layer3", "layer4", "avgpool"), 0)
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    hook(model).backward()
    after = model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())
    assert all(m.momentum == 0.1 for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
