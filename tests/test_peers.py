"""Published peers: STRIP, SCALE-UP, Lee et al.'s Mahalanobis, Sun et al.'s k-th neighbour (against hand-computed
values and scikit-learn), and the removal attacks (against a planted backdoor on tiny synthetic data)."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from dnnpiracy.attack.removal import REMOVALS, FinePruning, channel_means, output_layer
from dnnpiracy.attack.scorers import (
    Evidence,
    KthNeighbourScorer,
    ScaleUpScorer,
    STRIPScorer,
    TiedMahalanobisScorer,
)


class Linear2(nn.Module):
    """logits = W @ flatten(x): a model whose softmax is easy to compute by hand."""

    def __init__(self, W):
        super().__init__()
        self.W = nn.Parameter(torch.as_tensor(W, dtype=torch.float32), requires_grad=False)

    def forward(self, x):
        return x.flatten(1) @ self.W.T


def _ev(x):
    return Evidence(input=x.flatten(1))


def test_strip_entropy_matches_hand_computation():
    # 1x1x2 images; logits = (x0, x1)
    model = Linear2([[1.0, 0.0], [0.0, 1.0]])
    pool = torch.tensor([[[[0.2, 0.0]]], [[[0.0, 0.5]]]])
    s = STRIPScorer(n=2).bind(model, (1, 1, 2)).fit(_ev(pool), torch.tensor([0, 1]))
    x = torch.tensor([[[[0.9, 0.1]]]])
    got = s.mean_entropy(x, torch.tensor([[0, 1]]), pool)

    def h(a, b):   # entropy in bits of softmax(a, b)
        p = math.exp(a) / (math.exp(a) + math.exp(b))
        return -(p * math.log2(p) + (1 - p) * math.log2(1 - p))
    want = (h(1.0, 0.1) + h(0.9, 0.6)) / 2      # blends clipped to [0, 1]: (1.1 -> 1.0, 0.1), (0.9, 0.6)
    assert got.item() == pytest.approx(want, abs=1e-6)
    # the score is minus that mean entropy, and loo never blends an image with itself
    loo_idx = torch.randint(1, (2, 3))
    assert loo_idx.shape == (2, 3)
    oof = s.loo_scores(_ev(pool), torch.tensor([0, 1]), torch.tensor([0, 1]))
    assert oof[0].item() == pytest.approx(-h(0.2, 0.5), abs=1e-6)   # image 0's only other overlay is image 1
    assert oof[1].item() == pytest.approx(-h(0.2, 0.5), abs=1e-6)


def _backdoored():
    """A 4x4 'classifier': class = the brighter half, unless pixel (0, 0) is bright: then class 2, certainly."""
    class Net(nn.Module):
        def forward(self, x):
            left, right = x[..., :2].sum((1, 2, 3)), x[..., 2:].sum((1, 2, 3))
            trig = (x[:, 0, 0, 0] > 0.9).float() * 50
            return torch.stack([4 * (left - right), 4 * (right - left), trig], 1)
    return Net()


def _images(n, gen, trigger=False):
    x = torch.rand(n, 1, 4, 4, generator=gen) * 0.5
    x[:, 0, 0, 0] = 0.0
    if trigger:
        x[:, 0, 0, 0] = 1.0
    return x


def test_strip_and_scaleup_catch_a_planted_trigger():
    gen = torch.Generator().manual_seed(0)
    model = _backdoored()
    clean, trig = _images(200, gen), _images(20, gen, trigger=True)
    y = model(clean).argmax(1)
    for scorer in (STRIPScorer(n=8), ScaleUpScorer()):
        scorer.bind(model, (1, 4, 4)).fit(_ev(clean), y)
        s_clean = scorer.score(_ev(clean), y)
        s_trig = scorer.score(_ev(trig), model(trig).argmax(1))
        assert s_trig.min() > torch.quantile(s_clean, 0.95), scorer.name


def test_scaleup_spc_known_value():
    # logits = (x0 - 0.5, 0): class 0 iff x0 > 0.5.  x0 = 0.15: scaled by 3, 5, 7, 9, 11 -> 0.45, 0.75, 1, 1, 1
    model = Linear2([[1.0, 0.0], [0.0, 0.0]])
    class Shift(nn.Module):
        def forward(self, x):
            return model(x) - torch.tensor([0.5, 0.0])
    s = ScaleUpScorer().bind(Shift(), (1, 1, 2))
    x = torch.tensor([[[[0.15, 0.3]]]])
    spc, soft = s.spc(x, torch.tensor([1]))       # predicted label 1 (0.15 < 0.5)
    assert spc.item() == pytest.approx(1 / 5)       # only the x3 copy keeps label 1
    p1 = [1 / (1 + math.exp(v - 0.5)) for v in (0.45, 0.75, 1.0, 1.0, 1.0)]
    assert soft.item() == pytest.approx(sum(p1) / 5, abs=1e-6)


def test_query_scorer_refuses_unbound_use():
    with pytest.raises(RuntimeError, match="bind"):
        STRIPScorer().fit(_ev(torch.zeros(3, 1, 2, 2)), torch.zeros(3, dtype=torch.long))


def test_lee_mahalanobis_matches_sklearn():
    from sklearn.covariance import EmpiricalCovariance
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 5)) + np.repeat(np.eye(3, 5) * 3, 20, 0)
    y = np.repeat(np.arange(3), 20)
    Q = rng.normal(size=(7, 5))
    s = TiedMahalanobisScorer().fit(Evidence(features=torch.tensor(X)), torch.tensor(y))
    got = s.score(Evidence(features=torch.tensor(Q)), torch.zeros(7, dtype=torch.long)).numpy()
    means = np.stack([X[y == c].mean(0) for c in range(3)])
    cov = EmpiricalCovariance(assume_centered=True).fit(X - means[y])
    want = np.min([cov.mahalanobis(Q - means[c]) for c in range(3)], 0)
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_knn_ood_matches_sklearn():
    from sklearn.neighbors import NearestNeighbors
    rng = np.random.default_rng(1)
    X, Q = rng.normal(size=(40, 6)), rng.normal(size=(9, 6))
    norm = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)   # noqa: E731
    s = KthNeighbourScorer(k=5).fit(Evidence(features=torch.tensor(X)), torch.zeros(40, dtype=torch.long))
    got = s.score(Evidence(features=torch.tensor(Q)), torch.zeros(9, dtype=torch.long)).numpy()
    nn_ = NearestNeighbors(n_neighbors=5).fit(norm(X))
    np.testing.assert_allclose(got, nn_.kneighbors(norm(Q))[0][:, -1], rtol=1e-5)
    loo = s.loo_scores(Evidence(features=torch.tensor(X)), None, None).numpy()
    np.testing.assert_allclose(loo, NearestNeighbors(n_neighbors=6).fit(norm(X)).kneighbors(norm(X))[0][:, -1],
                               rtol=1e-5)


# ------------------------------------------------------------------------------------------------ removal attacks
class TinyNet(nn.Module):
    """conv -> "layer4" (the last stage fine-pruning prunes) -> pooled linear head."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU())
        self.layer4 = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(64, 3))

    def forward(self, x):
        return self.head(self.layer4(self.conv1(x)))


def _tiny_backdoored_cnn(seed=0):
    """A small CNN trained on 8x8 synthetic data (class = the brighter half) with a planted trigger (a bright corner
    square -> class 2)."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    y = torch.randint(2, (600,), generator=gen)
    x = torch.rand(600, 1, 8, 8, generator=gen) * 0.3
    x[y == 1, :, :, 4:] += 0.3
    x[y == 0, :, :, :4] += 0.3
    trig = x[:60].clone()
    trig[:, :, :2, :2] = 1.0
    model = TinyNet()
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    X, Y = torch.cat([x, trig]), torch.cat([y, torch.full((60,), 2)])
    for _ in range(300):
        idx = torch.randint(len(X), (64,), generator=gen)
        opt.zero_grad()
        nn.functional.cross_entropy(model(X[idx]), Y[idx]).backward()
        opt.step()
    return model.eval(), x, y, trig


def test_removals_keep_the_task_and_report_what_they_did():
    model, x, y, trig = _tiny_backdoored_cnn()
    base = (model(x).argmax(1) == y).float().mean().item()
    assert base > 0.9 and (model(trig).argmax(1) == 2).float().mean() > 0.9    # the backdoor is planted
    for name in ("ftal", "rtal", "fine-pruning"):
        r = REMOVALS[name]().remove(model, x[:200], y[:200], seed=0)
        assert r.model is not model and r.info["removal"] == name
        assert (r.model(x[200:]).argmax(1) == y[200:]).float().mean() > 0.8, name
    # the stolen model is never modified
    assert (model(x).argmax(1) == y).float().mean().item() == base


def test_rtal_resets_the_head_and_ftal_keeps_it():
    model, x, y, _ = _tiny_backdoored_cnn()
    head = output_layer(model).weight.detach().clone()
    rtal = REMOVALS["rtal"]()
    rtal.steps = 0
    assert not torch.equal(output_layer(rtal.remove(model, x, y).model).weight, head)
    ftal = REMOVALS["ftal"]()
    ftal.steps = 0
    assert torch.equal(output_layer(ftal.remove(model, x, y).model).weight, head)


def test_fine_pruning_prunes_dormant_channels_within_the_accuracy_budget():
    model, x, y, _ = _tiny_backdoored_cnn()
    fp = FinePruning()
    fp.steps = 0
    r = fp.remove(model, x, y)
    acts = channel_means(r.model, r.model.layer4, x)
    assert r.info["pruned_channels"] > 0
    assert int((acts == 0).sum()) >= r.info["pruned_channels"]        # the pruned channels output zero
    acc = (r.model(x).argmax(1) == y).float().mean().item()
    assert r.info["attacker_accuracy_before"] - acc <= fp.max_drop + 1e-9


def test_distillation_removes_a_planted_backdoor_without_labels():
    model, x, y, trig = _tiny_backdoored_cnn()
    d = REMOVALS["distillation"]()
    d.steps, d.lr = 300, 3e-3
    student_arch = {}

    def fresh(arch, stem, num_classes, in_channels):
        student_arch["called"] = (arch, num_classes, in_channels)
        torch.manual_seed(1)
        return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                             nn.Linear(32, 3))
    import dnnpiracy.attack.removal as removal
    orig = removal.build_model
    removal.build_model = fresh
    try:
        r = d.remove(model, x, None, seed=0, arch="tiny", num_classes=3)
    finally:
        removal.build_model = orig
    assert student_arch["called"] == ("tiny", 3, 1)
    assert (r.model(x).argmax(1) == y).float().mean() > 0.8           # learnt the task from the teacher's answers
    assert (r.model(trig).argmax(1) == 2).float().mean() < 0.2        # but not the backdoor it never saw


def test_removal_input_errors_name_the_problem():
    model, x, y, _ = _tiny_backdoored_cnn()
    with pytest.raises(ValueError, match="labelled"):
        REMOVALS["ftal"]().remove(model, x, None)
    with pytest.raises(ValueError, match="labels"):
        REMOVALS["ftal"]().remove(model, x, y[:3])


def test_a_saved_strip_detector_rebinds_the_served_model(tmp_path):
    """A query scorer's artifact stores no model; loading binds the one it is served with, and scores agree."""
    from dnnpiracy.attack import fit_detector
    from dnnpiracy.attack.artifact import load_detector, model_meta_for, save_detector
    from dnnpiracy.config import DetectorConfig
    from dnnpiracy.models import arch_info, build_model
    torch.manual_seed(0)
    model = build_model("small-cnn").eval()
    info = arch_info("small-cnn")
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(60, 1, 28, 28, generator=gen)
    y = torch.arange(60) % 10
    det = fit_detector(model, info, x, y, DetectorConfig(detector="ensemble:strip,scale-up"), 0.5)
    q = torch.rand(5, 1, 28, 28, generator=gen)
    before = det.inspect(q).scores
    from dnnpiracy.training import save_model
    mpath = save_model(tmp_path / "m.safetensors", model, {"arch": "small-cnn", "dataset": "synthetic"})
    path = save_detector(det, tmp_path / "det", model_meta_for(mpath, model), model)
    loaded = load_detector(path, model, info)
    torch.testing.assert_close(loaded.inspect(q).scores, before)


def test_a_tiny_peers_grid_runs_removals_and_renders_the_criterion(tmp_path):
    """Detectors and removal attacks as columns of one grid: cached cells, the peers report and its winner table."""
    import json

    from dnnpiracy.experiments.benchmark import load_grid, render, run_grid
    p = tmp_path / "peers.toml"
    p.write_text('title = "tiny peers"\ndatasets = ["digits-tiny"]\nschemes = ["content"]\ndevelopment = ["content"]\n'
                 'seeds = [0]\ntrigger_labels = [3]\ndetectors = ["scale-up", "knn-ood"]\n'
                 'removals = ["ftal", "distillation"]\nremoval_data = ["surrogate"]\narch = "small-cnn"\nlr = 0.001\n'
                 'epochs = {digits-tiny = 3}\nsurrogate_fraction = {digits-tiny = 0.3}\n')
    grid = load_grid(str(p))
    cache, out = tmp_path / "cache", tmp_path / "out"
    res = run_grid(grid, cache, progress=False, log=lambda _m: None)
    assert not res["failed"] and len(res["cells"]) == 4
    assert len(list((cache / "removal_cells").glob("*.json"))) == 2
    render(grid, out, cache, command="test")
    data = json.loads((out / "peers" / "peers.json").read_text())
    kinds = {r["attack"]: r["kind"] for r in data["rows"]}
    assert kinds == {"scale-up": "detector", "knn-ood": "detector", "ftal": "removal", "distillation": "removal"}
    for r in data["rows"]:
        assert 0 <= r["evasion_share"] <= 1 and len(r["p_values"]) == 1
    (w,) = data["winners"]
    full = [r for r in data["rows"] if r["evasion_share"] == 1.0]
    if full:     # the criterion: the cheapest attack among those evading in every seed
        assert w["accuracy_loss_mean"] == min(r["accuracy_loss_mean"] for r in full)
    assert (out / "peers" / "tradeoff.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="unknown removal"):
        p.write_text(p.read_text().replace('"ftal"', '"no-such-removal"'))
        load_grid(str(p))


# ------------------------------------------------------------------------------------------------ readings of `paper`
def test_alpha_as_the_class_mean_reading():
    from dnnpiracy.attack.thresholds import paper_thresholds
    scores = torch.tensor([1.0, 3.0, 8.0, 2.0, 2.0])
    labels = torch.tensor([0, 0, 0, 1, 1])
    torch.testing.assert_close(paper_thresholds(scores, labels, 0.5, 3),
                               torch.tensor([8.5, 2.5, math.inf]))
    torch.testing.assert_close(paper_thresholds(scores, labels, 0.5, 3, "mean"),
                               torch.tensor([4.5, 2.5, math.inf]))
    with pytest.raises(ValueError, match="alpha_of"):
        paper_thresholds(scores, labels, 0.5, 3, "median")


def test_paper_readings_are_named_variants_of_the_literal_detector():
    from dataclasses import replace

    from dnnpiracy.attack.dcgan import Discriminator, train_dcgan
    from dnnpiracy.attack.registry import DETECTORS, SCORERS
    from dnnpiracy.config import DetectorConfig, GanConfig
    assert DETECTORS["paper"].alpha_of == "max" and DETECTORS["paper-alpha-mean"].alpha_of == "mean"
    for name in ("paper-bn-eps", "paper-d5", "paper-alpha-mean"):
        assert DETECTORS[name].rule == "paper"
    cfg = DetectorConfig(gan=GanConfig(epochs=1))
    assert SCORERS["dcgan-bn-eps"](cfg).cfg.bn_eps == 1e-5 and SCORERS["dcgan"](cfg).cfg.bn_eps == 0.8
    assert SCORERS["dcgan-d5"](cfg).d_steps == 5
    bn = [m for m in Discriminator(replace(GanConfig(), bn_eps=1e-5)).modules() if isinstance(m, nn.BatchNorm2d)]
    assert bn and all(m.eps == 1e-5 for m in bn)
    # more discriminator steps per generator step train another discriminator from the same seed
    h = torch.rand(16, 1, 7, 7, generator=torch.Generator().manual_seed(0))
    g = GanConfig(epochs=1, batch_size=8)
    d1, d1b, d5 = train_dcgan(h, g, seed=0), train_dcgan(h, g, seed=0), train_dcgan(h, g, seed=0, d_steps=5)
    w = lambda d: torch.cat([p.flatten() for p in d.parameters()])   # noqa: E731
    assert torch.equal(w(d1), w(d1b)) and not torch.equal(w(d1), w(d5))
