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


@pytest.mark.parametrize("name", [n for n in SCHEMES if n != "unrelated"])
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
