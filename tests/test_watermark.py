from fractions import Fraction

import pytest
import torch

from dnnpiracy.config import ConfigError, TriggerConfig
from dnnpiracy.io import ArtifactError
from dnnpiracy.watermark import (
    binomial_sf,
    disc_mask,
    load_trigger_set,
    make_trigger_set,
    same_class_triggers_for,
    save_trigger_set,
    stamp_discs,
    verify,
)


def test_radius3_disc_has_29_pixels():
    assert int(disc_mask(28, 28, 10, 10, 3).sum()) == 29
    assert int(disc_mask(28, 28, 10, 10, 1).sum()) == 5
    assert int(disc_mask(28, 28, 10, 10, 2).sum()) == 13


@pytest.mark.parametrize("blocks", [1, 2, 3, 4])
def test_discs_inside_and_counted(blocks):
    gen = torch.Generator().manual_seed(blocks)
    for _ in range(20):
        img = stamp_discs(torch.zeros(1, 28, 28), blocks, 3, gen)
        lit = img[0] == 1.0
        # every lit pixel is inside the image and at least one full disc's worth is lit; at most k discs
        assert 29 <= int(lit.sum()) <= 29 * blocks
        # no disc touches the border beyond the radius rule: rows/cols 0 and 27 can be lit only by a centre at 3/24
        assert lit.any()


def test_disc_positions_entirely_inside():
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        img = stamp_discs(torch.zeros(1, 28, 28), 1, 3, gen)
        ys, xs = torch.nonzero(img[0], as_tuple=True)
        cy, cx = (ys.min() + ys.max()) // 2, (xs.min() + xs.max()) // 2
        assert int(ys.max() - ys.min()) == 6 and int(xs.max() - xs.min()) == 6  # full diameter visible
        assert 3 <= cy <= 24 and 3 <= cx <= 24


def test_trigger_set_deterministic_and_relabelled(tiny):
    cfg = TriggerConfig(trigger_label=7, seed=3)
    a = make_trigger_set(tiny.train_x, tiny.train_y, cfg)
    b = make_trigger_set(tiny.train_x, tiny.train_y, cfg)
    c = make_trigger_set(tiny.train_x, tiny.train_y, TriggerConfig(trigger_label=7, seed=4))
    assert len(a) == 15 and torch.equal(a.images, b.images) and torch.equal(a.source_idx, b.source_idx)
    assert not torch.equal(a.source_idx, c.source_idx)
    assert (a.labels == 7).all()
    assert torch.equal(a.source_labels, tiny.train_y[a.source_idx])
    assert (a.images.amax((1, 2, 3)) == 1.0).all()


def test_same_class_triggers_stamp_only_evaluation_images_of_the_trigger_label(tiny):
    from dnnpiracy.data import make_splits
    splits = make_splits(tiny.test_y, 0.3, 0)
    cfg = TriggerConfig(trigger_label=2, seed=5)
    same = same_class_triggers_for(tiny, splits, cfg)
    pool = splits.evaluation_idx[tiny.test_y[splits.evaluation_idx] == 2]
    assert len(same) == len(pool) > 0                       # every evaluation image of the class (fewer than n)
    assert set(same.source_idx.tolist()) == set(pool.tolist())
    assert not set(same.source_idx.tolist()) & set(splits.surrogate_idx.tolist())
    assert (same.source_labels == 2).all() and (same.labels == 2).all()
    changed = (same.images != tiny.test_x[same.source_idx]).flatten(1).any(1)
    assert changed.all() and (same.images.amax((1, 2, 3)) == 1.0).all()      # each one stamped, white discs
    assert torch.equal(same_class_triggers_for(tiny, splits, cfg).images, same.images)
    assert len(same_class_triggers_for(tiny, splits, cfg, n=3)) == 3
    from dataclasses import replace
    no_nines = replace(tiny, test_y=torch.where(tiny.test_y == 9, 8, tiny.test_y))
    empty = same_class_triggers_for(no_nines, splits, TriggerConfig(trigger_label=9, seed=5))
    assert len(empty) == 0 and empty.images.shape[1:] == tiny.test_x.shape[1:]


def test_trigger_set_roundtrip(tmp_path, tiny):
    ts = make_trigger_set(tiny.train_x, tiny.train_y, TriggerConfig(blocks=2, radius=2, trigger_label=1))
    save_trigger_set(tmp_path / "t.safetensors", ts)
    back = load_trigger_set(tmp_path / "t.safetensors")
    assert torch.equal(back.images, ts.images) and back.config == ts.config


def test_trigger_config_ranges():
    for bad in [dict(blocks=0), dict(radius=14), dict(trigger_label=10), dict(num_triggers=0)]:
        with pytest.raises(ConfigError):
            TriggerConfig(**bad)


def test_pattern_trigger(tmp_path, tiny):
    import matplotlib.image as mpimg
    import numpy as np
    pat = np.zeros((5, 5, 4), dtype=np.float32)
    pat[..., :3] = 1.0
    pat[1:4, 1:4, 3] = 1.0          # only a 3x3 square is stamped
    mpimg.imsave(tmp_path / "p.png", pat)
    ts = make_trigger_set(tiny.train_x, tiny.train_y, TriggerConfig(pattern=str(tmp_path / "p.png")))
    diff = (ts.images - tiny.train_x[ts.source_idx]).abs().flatten(1)
    assert ((diff > 0).sum(1) <= 9).all()
    with pytest.raises(ArtifactError, match="not found"):
        make_trigger_set(tiny.train_x, tiny.train_y, TriggerConfig(pattern=str(tmp_path / "missing.png")))


def test_binomial_known_values():
    assert binomial_sf(0, 15, Fraction(1, 10)) == pytest.approx(1.0)
    assert binomial_sf(15, 15, Fraction(1, 10)) == pytest.approx(1e-15)
    assert binomial_sf(1, 1, 0.5) == pytest.approx(0.5)
    assert binomial_sf(2, 15, Fraction(1, 10)) == pytest.approx(1 - 0.9**15 - 15 * 0.1 * 0.9**14)
    # scipy.stats.binom.sf(4, 15, 0.1) = 0.012720...
    assert binomial_sf(5, 15, Fraction(1, 10)) == pytest.approx(0.0127205, rel=1e-4)


def test_verify_verdicts():
    x = torch.zeros(15, 1, 28, 28)
    labels = torch.full((15,), 3)
    v = verify(lambda q: torch.full((len(q),), 3), x, labels)
    assert v.pirated and v.n_trigger_label == 15 and v.p_value < 1e-6 and v.verdict == "pirated"
    v = verify(lambda q: torch.arange(len(q)) % 10, x, labels)
    assert not v.pirated and v.n_trigger_label == 2 and v.verdict == "not pirated"
    with pytest.raises(ValueError):
        verify(lambda q: torch.zeros(3), x, labels)


def test_tiny_embedding_reaches_full_trigger_accuracy(tiny_target):
    _, _, target = tiny_target
    assert target.report["trigger_accuracy"] == 1.0
    assert target.report["test_accuracy"] > 0.6
    # training provenance: the thread count changes CPU results, so the report records it
    assert target.report["torch_threads"] == torch.get_num_threads()
    assert target.report["device"] == ("cuda:0" if torch.cuda.is_available() else "cpu")
    v = verify(lambda q: target.model(q).argmax(1), target.triggers.images, target.triggers.labels)
    assert v.pirated and v.p_value < 1e-6
