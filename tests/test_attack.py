import math

import pytest
import torch
import torch.nn.functional as F

from dnnpiracy.attack import (
    DETECTORS,
    GradCAM,
    KNNScorer,
    MahalanobisScorer,
    PiratedClassifier,
    fit_detector,
    minmax_scale,
    replacement_labels,
)
from dnnpiracy.attack.scorers import Evidence
from dnnpiracy.attack.thresholds import conformal_threshold, paper_thresholds
from dnnpiracy.config import ConfigError, DetectorConfig, GanConfig
from dnnpiracy.models import arch_info, build_model


def captum_heatmaps(model, layer, x):
    from captum.attr import LayerGradCam
    model.eval()
    with torch.no_grad():
        pred = model(x).argmax(1)
    attr = LayerGradCam(model, model.get_submodule(layer)).attribute(x, target=pred, relu_attributions=True)
    up = F.interpolate(attr, size=x.shape[-2:], mode="bilinear", align_corners=False)
    return minmax_scale(up.detach())


@pytest.mark.parametrize("arch,layer", [("resnet18", "layer1"), ("small-cnn", "conv2")])
def test_gradcam_matches_captum(arch, layer):
    torch.manual_seed(0)
    model = build_model(arch).eval()
    x = torch.rand(16, 1, 28, 28)
    probe = GradCAM(model, layer, batch_size=7)(x)   # several batches on purpose
    ref = captum_heatmaps(model, layer, x)
    assert probe.heatmaps.shape == (16, 1, 28, 28)
    assert (probe.heatmaps - ref).abs().max() <= 1e-5
    with torch.no_grad():
        assert torch.equal(probe.predictions, model(x).argmax(1))
    assert all(p.requires_grad for p in model.parameters())  # parameters restored after the CAM


def test_heatmap_scaling_never_nan():
    maps = torch.zeros(3, 1, 7, 7)
    maps[1] = 5.0
    maps[2, 0, 3, 3] = 2.0
    out = minmax_scale(maps)
    assert torch.isfinite(out).all()
    assert out[0].abs().sum() == 0 and out[1].abs().sum() == 0
    assert out[2].max() == 1.0 and out[2].min() == 0.0


def test_features_collected_in_same_forward():
    model = build_model("resnet18").eval()
    info = arch_info("resnet18")
    probe = GradCAM(model, info.heatmap_layer, info.feature_layers)(torch.rand(4, 1, 28, 28))
    assert probe.features["layer1"].shape == (4, 64) and probe.features["avgpool"].shape == (4, 512)
    assert probe.cams.shape == (4, 1, 7, 7)
    # each spatial stage's per-channel maximum beside its mean; none for the pooled vector
    assert "avgpool" not in probe.peaks and probe.peaks["layer1"].shape == (4, 64)
    for name, peak in probe.peaks.items():
        assert (peak >= probe.features[name] - 1e-6).all()
    with torch.no_grad():
        x = torch.rand(4, 1, 28, 28)
        out = {}
        handle = model.layer2.register_forward_hook(lambda _m, _i, o: out.setdefault("l2", o))
        model(x)
        handle.remove()
    probe = GradCAM(model, info.heatmap_layer, info.feature_layers, batch_size=3)(x)   # two batches, joined
    assert torch.allclose(probe.peaks["layer2"], out["l2"].amax((2, 3)), atol=1e-5)
    ev = Evidence.from_probe(probe, x)
    assert ev["stages-max"].shape == (4, sum(p.shape[1] for p in probe.peaks.values()))


def test_knn_and_mahalanobis_rank_outliers():
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(200, 8, generator=gen)
    y = torch.arange(200) % 2
    X[y == 1] += 5
    ev = Evidence(features=X, heatmap=X)
    far = Evidence(features=torch.full((1, 8), 20.0), heatmap=torch.full((1, 8), 20.0))
    near = Evidence(features=X[:1] * 0, heatmap=X[:1] * 0)
    for scorer in (KNNScorer("features", k=3), MahalanobisScorer("features")):
        scorer.fit(ev, y)
        assert scorer.score(far, torch.tensor([0])) > scorer.score(near, torch.tensor([0]))
        oof = scorer.oof_scores(ev, y, y)
        assert oof.shape == (200,) and torch.isfinite(oof).all()


def test_mahalanobis_precision_is_the_inverse_of_the_shrunk_covariance():
    gen = torch.Generator().manual_seed(1)
    X = torch.randn(30, 50, generator=gen)  # fewer samples than dims: only shrinkage inverts it
    y = torch.arange(30) % 3
    sc = MahalanobisScorer("features", shrinkage=0.1).fit(Evidence(features=X), y)
    Xd = X.double()
    centred = torch.cat([Xd[y == c] - Xd[y == c].mean(0) for c in range(3)])
    cov = centred.T @ centred / (len(centred) - 1)
    shrunk = 0.9 * cov + 0.1 * torch.eye(50, dtype=torch.float64) * cov.diagonal().mean()
    assert torch.allclose(sc.precision, torch.linalg.pinv(shrunk, hermitian=True), rtol=1e-6, atol=1e-8)
    # a degenerate covariance (all samples equal) falls back to the pseudo-inverse instead of failing
    flat = MahalanobisScorer("features").fit(Evidence(features=torch.ones(6, 4)), torch.zeros(6, dtype=torch.long))
    assert torch.isfinite(flat.precision).all()


def test_threshold_rules():
    s = torch.tensor([1.0, 2.0, 3.0, 10.0])
    y = torch.tensor([0, 0, 1, 1])
    thr = paper_thresholds(s, y, tau=0.5, num_classes=3)
    assert thr[0] == 2.5 and thr[1] == 10.5 and thr[2] == float("inf")
    scores = torch.arange(1, 100, dtype=torch.float)        # 99 scores
    assert conformal_threshold(scores, 0.1) == 90.0          # ceil(100*0.9) = 90th smallest
    assert conformal_threshold(scores, 0.001) == float("inf")


def test_cross_fitting_needs_two_surrogate_inputs_per_class():
    from dnnpiracy.attack import check_cross_fitting
    check_cross_fitting(torch.tensor([0, 0, 1, 1, 2, 2]))           # 2 per class: fine
    with pytest.raises(ValueError, match=r"class\(es\) \[1, 2\] have 1 \(4 surrogate inputs"):
        check_cross_fitting(torch.tensor([0, 0, 1, 2]))


def test_strategies():
    gen = torch.Generator().manual_seed(0)
    logits = torch.tensor([[5.0, 4.0, 0.0], [0.0, 1.0, 3.0]]).repeat(50, 1)
    pred = logits.argmax(1)
    other = replacement_labels(logits, "uniform-other", gen)
    assert (other != pred).all() and set(other.tolist()) <= {0, 1, 2}
    runner = replacement_labels(logits, "runner-up", gen)
    assert runner.tolist() == [1, 1] * 50
    uni = replacement_labels(logits, "uniform", gen)
    assert set(uni.tolist()) == {0, 1, 2}
    with pytest.raises(ValueError):
        replacement_labels(logits, "nope", gen)


@pytest.mark.parametrize("detector", ["default", "knn-input", "mahalanobis-features"])
def test_end_to_end_detects_obvious_trigger(tiny_target, detector):
    ds, splits, target = tiny_target
    info = arch_info("small-cnn")
    sur = splits.surrogate_idx
    det = fit_detector(target.model, info, ds.test_x[sur], ds.test_y[sur],
                       DetectorConfig(detector=detector, target_fpr=0.02), tau=2.0)
    pirated = PiratedClassifier(det, "uniform-other", seed=0)
    ev = splits.evaluation_idx
    clean = pirated.answer(ds.test_x[ev])
    trig = pirated.answer(target.triggers.images)
    assert clean.flags.float().mean() <= 0.1           # clean inputs pass
    assert trig.flags.float().mean() >= 0.7            # the obvious trigger is caught (>= 11 of 15)
    # unflagged answers are exactly the target's answers; flagged ones never the trigger label here
    keep = ~clean.flags
    assert torch.equal(clean.labels[keep], clean.target_labels[keep])
    with torch.no_grad():
        assert torch.equal(clean.target_labels, target.model(ds.test_x[ev]).argmax(1))
    assert (trig.labels[trig.flags] != trig.target_labels[trig.flags]).all()


def test_paper_detector_runs_and_reports(tiny_target):
    ds, splits, target = tiny_target
    sur = splits.surrogate_idx
    cfg = DetectorConfig(detector="paper", gan=GanConfig(epochs=3))
    det = fit_detector(target.model, arch_info("small-cnn"), ds.test_x[sur], ds.test_y[sur], cfg, tau=0.65)
    ins = det.inspect(target.triggers.images)
    assert ins.scores.shape == (15,) and torch.isfinite(ins.scores).all() and (ins.scores >= 0).all()
    assert det.fit_info["rule"] == "paper" and len(det.fit_info["alpha"]) == 10
    assert "paper" in DETECTORS


def test_ensemble_and_class_normalised_scorers():
    from dnnpiracy.attack.scorers import ClassNormalizedScorer, EnergyScorer, EnsembleScorer
    gen = torch.Generator().manual_seed(1)
    X = torch.randn(300, 6, generator=gen)
    y = torch.arange(300) % 3
    X[y == 1] *= 5                       # class 1 is five times as spread out as class 0
    logits = torch.randn(300, 3, generator=gen)
    ev = Evidence(features=X, input=X * 2, logits=logits)
    ens = EnsembleScorer([MahalanobisScorer("features"), KNNScorer("input")], "sum", folds=5)
    oof = ens.oof_scores(ev, y, y, folds=5)
    ens.fit(ev, y, y)
    assert oof.shape == (300,) and abs(float(oof.median())) < 1.0      # standardised around 0
    cn = ClassNormalizedScorer(KNNScorer("features"))
    cn_oof = cn.oof_scores(ev, y, y, folds=5)
    cn.fit(ev, y, y)
    # after normalisation, each class's out-of-fold scores have median ~0 and IQR ~1
    for c in range(3):
        v = cn_oof[y == c]
        q1, med, q3 = torch.quantile(v, torch.tensor([0.25, 0.5, 0.75]))
        assert abs(float(med)) < 1e-4 and abs(float(q3 - q1) - 1) < 1e-3
    far = Evidence(features=torch.full((1, 6), 4.0), input=torch.zeros(1, 6), logits=torch.zeros(1, 3))
    # the same point is far more unusual for the tight class 0 than for the loose class 1
    assert cn.score(far, torch.tensor([0])) > cn.score(far, torch.tensor([1]))
    e = EnergyScorer().fit(ev, y)
    assert torch.allclose(e.score(ev, y), -torch.logsumexp(logits, 1))


def test_margins_keep_the_ranking_when_the_threshold_is_infinite():
    from dnnpiracy.attack.detector import Inspection
    from dnnpiracy.attack.heatmaps import Probe
    from dnnpiracy.evaluation.evaluate import Inspected
    from dnnpiracy.evaluation.metrics import auroc
    probe = Probe(torch.zeros(4, 10), torch.zeros(4, 1, 28, 28), torch.zeros(4, 1, 7, 7))
    def ins(scores):
        s = torch.tensor(scores)
        return Inspected(torch.zeros(len(s), 1, 28, 28), torch.zeros(len(s)),
                         Inspection(probe, s, torch.full((len(s),), float("inf")), torch.zeros(len(s), dtype=bool)))
    assert auroc(ins([0.1, 0.2, 0.3, 0.4]).margins, ins([0.9, 1.0, 1.1, 1.2]).margins) == 1.0


def test_calibrate_on_traffic_sets_one_quantile_threshold(tiny_target):
    ds, splits, target = tiny_target
    sur, ev = splits.surrogate_idx, splits.evaluation_idx
    det = fit_detector(target.model, arch_info("small-cnn"), ds.test_x[sur], ds.test_y[sur],
                       DetectorConfig(detector="knn-input", fpr_confidence=None), tau=2.0)
    traffic = ds.test_x[ev[:60]]
    cal = det.calibrate_on_traffic(traffic, target_fpr=0.1)
    scores = det.inspect(traffic).scores
    # the ceil(61 * 0.9) = 55th smallest of the 60 traffic scores, for every class
    assert torch.allclose(cal.thresholds, torch.full((10,), float(torch.sort(scores).values[54])))
    assert cal.fit_info["threshold_source"] == "traffic" and cal.fit_info["n_traffic"] == 60
    assert cal.inspect(traffic).flags.sum() == 5 and torch.equal(det.thresholds, det.thresholds)  # det unchanged
    with pytest.raises(ValueError, match="cannot pin"):
        det.calibrate_on_traffic(traffic[:5], target_fpr=0.01)
    with pytest.raises(ValueError, match="target_fpr"):
        det.calibrate_on_traffic(traffic, target_fpr=1.5)


def test_fit_on_traffic_labels_traffic_by_the_target_and_thresholds_on_both(tiny_target):
    ds, splits, target = tiny_target
    sur, ev = splits.surrogate_idx, splits.evaluation_idx
    cfg = DetectorConfig(detector="knn-input", calibration_folds=5)
    traffic = ds.test_x[ev[:60]]
    det = fit_detector(target.model, arch_info("small-cnn"), ds.test_x[sur], ds.test_y[sur], cfg, tau=2.0,
                       traffic_x=traffic)
    assert det.fit_info["n_traffic"] == 60 and det.fit_info["n_calibration"] == len(sur) + 60
    assert det.fit_info["fit_source"] == "surrogate+traffic"
    # the reference set holds the traffic under its predicted label: a traffic query is its own nearest neighbour
    ins = det.inspect(traffic)
    assert torch.allclose(ins.scores, torch.zeros(60), atol=1e-4)
    # one threshold, the conformal quantile of all surrogate + traffic out-of-fold scores
    from dnnpiracy.attack.thresholds import conformal_threshold
    assert torch.allclose(det.thresholds, torch.full((10,), conformal_threshold(det.calibration_scores, 0.01, 0.9)))
    n = det.fit_info["n_calibration"]
    assert det.fit_info["fpr_confidence"] == 0.9 and det.fit_info["threshold_rank"] >= 1
    assert det.fit_info["fpr_exceed_probability"] == pytest.approx(0.99 ** n)     # too few scores: the largest
    with pytest.raises(ValueError, match="paper rule"):
        fit_detector(target.model, arch_info("small-cnn"), ds.test_x[sur], ds.test_y[sur],
                     DetectorConfig(detector="paper"), tau=2.0, traffic_x=traffic)
    with pytest.raises(ValueError, match="shape"):
        fit_detector(target.model, arch_info("small-cnn"), ds.test_x[sur], ds.test_y[sur], cfg, tau=2.0,
                     traffic_x=traffic[:, :, :20])


def test_traffic_calibration_measures_heldout_rates():
    from dnnpiracy.evaluation.traffic import traffic_calibration
    gen = torch.Generator().manual_seed(0)
    clean = torch.rand(5000, generator=gen)                 # clean scores in [0, 1)
    trig = 1.0 + torch.rand(15, generator=gen)              # separable triggers
    r = traffic_calibration(clean, trig, target_fpr=0.01, n_traffic=1000, repeats=20)
    assert r["fnr_mean"] == 0.0 and 0.004 <= r["fpr_mean"] <= 0.016 and r["n_heldout"] == 4000
    # a trigger score inside the clean range is missed at a 1 % threshold
    mixed = torch.cat([trig[:14], torch.tensor([0.5])])
    assert traffic_calibration(clean, mixed, n_traffic=1000, repeats=5)["fnr_mean"] == pytest.approx(1 / 15)
    # contaminated traffic: 15 triggers among 115 queries push the 99 % quantile onto trigger scores
    bad = traffic_calibration(clean, trig, target_fpr=0.01, n_traffic=100, repeats=5, contaminated=True)
    assert bad["fnr_mean"] >= 0.5 and bad["fpr_mean"] == 0.0
    with pytest.raises(ValueError, match="n_traffic"):
        traffic_calibration(clean[:10], trig, n_traffic=10)


def test_traffic_fit_grows_the_reference_set_from_unlabelled_traffic():
    from dnnpiracy.evaluation.traffic import traffic_fit
    gen = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0]])

    def draw(n):
        y = torch.arange(n) % 2
        return Evidence(features=centres[y] + torch.randn(n, 2, generator=gen)), y
    sur, sur_y = draw(6)                      # 3 labelled inputs per class: a 1 % quantile cannot be pinned
    clean, clean_y = draw(3000)
    trig = Evidence(features=torch.tensor([[5.0, 6.0]]).repeat(15, 1) + 0.1 * torch.randn(15, 2, generator=gen))
    r = traffic_fit(lambda: KNNScorer("features", k=1), sur, sur_y, sur_y, clean, clean_y, trig,
                    torch.zeros(15, dtype=torch.long), target_fpr=0.01, n_traffic=1000, repeats=3, folds=5)
    assert r["n_heldout"] == 2000 and r["n_surrogate"] == 6 and r["repeats"] == 3
    assert r["surrogate_fpr_mean"] == 0.0 and r["surrogate_fnr_mean"] == 1.0   # threshold +inf: flags nothing
    assert r["fit_fnr_mean"] == 0.0 and 0.002 <= r["fit_fpr_mean"] <= 0.02     # fitted on traffic: near target
    assert r["fit_auroc_mean"] == 1.0
    with pytest.raises(ValueError, match="n_traffic"):
        traffic_fit(lambda: KNNScorer("features"), sur, sur_y, sur_y, clean, clean_y, trig,
                    torch.zeros(15, dtype=torch.long), n_traffic=3000)


def test_default_detector_is_one_design_for_every_dataset():
    """The held-out protocol chooses one design for all datasets (results/selection/selection.md ranks it first)."""
    import json
    from pathlib import Path

    from dnnpiracy.attack import DEFAULT_DETECTOR, default_detector, resolve_spec
    for d in ("fashion-mnist", "mnist-10k", "mnist", "digits-tiny", None):
        assert default_detector(d) == DEFAULT_DETECTOR
    assert resolve_spec("default", "fashion-mnist").scorer == DEFAULT_DETECTOR
    sel = Path(__file__).resolve().parents[1] / "results" / "selection" / "selection.json"
    assert json.loads(sel.read_text())["ranking"][0]["detector"] == DEFAULT_DETECTOR


@pytest.mark.parametrize("dim", [6, 40])      # more samples than dims, and fewer (only shrinkage inverts it)
def test_closed_form_leave_one_out_equals_refitting_without_each_sample(dim):
    """The closed-form leave-one-out scores of the Mahalanobis and nearest-neighbour scorers equal n explicit
    refits, including queries the target predicts into another class and a class of two samples."""
    from dnnpiracy.attack.scorers import Scorer
    gen = torch.Generator().manual_seed(3)
    y = torch.tensor([0] * 12 + [1] * 9 + [2] * 2)
    X = torch.randn(len(y), dim, generator=gen) + 3 * y[:, None].float()
    y_pred = y.clone()
    y_pred[[0, 5, 13, 21]] = torch.tensor([1, 2, 0, 1])     # misclassified surrogate inputs
    ev = Evidence(features=X)
    for scorer in (MahalanobisScorer("features"), MahalanobisScorer("features", shrinkage=0.5),
                   KNNScorer("features", k=1), KNNScorer("features", k=3)):
        fast = scorer.loo_scores(ev, y, y_pred)
        slow = Scorer.loo_scores(scorer, ev, y, y_pred)           # the generic version: one refit per sample
        assert torch.allclose(fast, slow, rtol=1e-4, atol=1e-4), (type(scorer).__name__, fast - slow)
        assert torch.allclose(scorer.oof_scores(ev, y, y_pred), fast)   # leave-one-out is the default


def test_stratified_folds_use_every_fold_when_classes_are_smaller_than_the_fold_count():
    from dnnpiracy.attack.scorers import stratified_folds
    y = torch.arange(100) % 10                       # 10 per class, 20 folds (mnist-10k's surrogate set)
    f = stratified_folds(y, 20, seed=0)
    sizes = torch.bincount(f, minlength=20)
    assert len(sizes) == 20 and int(sizes.min()) == 5 and int(sizes.max()) == 5
    for c in range(10):                              # a class never puts two samples in one fold
        assert len(torch.unique(f[y == c])) == 10
    with pytest.raises(ValueError, match="folds"):
        stratified_folds(y, 1)


def test_confident_threshold_bounds_the_fpr_per_draw_not_only_on_average():
    from dnnpiracy.attack.thresholds import exceed_probability, threshold_rank
    # P(FPR > a) for the largest of n scores is (1 - a)^n; Binomial(n, a) <= rank - 1 in general
    assert exceed_probability(500, 1, 0.01) == pytest.approx(0.99 ** 500)
    assert exceed_probability(500, 2, 0.01) == pytest.approx(0.99 ** 500 + 500 * 0.01 * 0.99 ** 499)
    assert threshold_rank(500, 0.01) == 5                       # ceil(501 * 0.99) = 496th smallest
    assert threshold_rank(500, 0.01, 0.9) == 2                  # P(Bin(500, .01) <= 1) = 0.040, <= 2: 0.123
    assert threshold_rank(100, 0.01, 0.9) == threshold_rank(100, 0.01) == 1   # the best 100 scores can do
    assert threshold_rank(5, 0.01, 0.9) is None                 # not even the average rule
    assert threshold_rank(500, 0.01, 0.01) == 5                 # never less conservative than the average rule
    scores = torch.arange(1, 501, dtype=torch.float64)
    assert conformal_threshold(scores, 0.01) == 496.0 and conformal_threshold(scores, 0.01, 0.9) == 499.0
    # simulated calibration draws: the realised FPR exceeds the target in <= 10 % of them (about half on average)
    gen = torch.Generator().manual_seed(0)
    over = {None: 0, 0.9: 0}
    for _ in range(400):
        cal = torch.rand(500, generator=gen, dtype=torch.float64)
        for conf in over:
            over[conf] += (1 - conformal_threshold(cal, 0.01, conf)) > 0.01     # uniform scores: FPR = 1 - thr
    assert over[0.9] / 400 <= 0.1 and over[None] / 400 > 0.3
    with pytest.raises(ConfigError, match="fpr_confidence"):
        DetectorConfig(fpr_confidence=1.0)


def test_patch_scorer_finds_a_small_stamp_and_its_leave_one_out_is_exact():
    """A 5x5 white square stamped on one clean-looking image is that image's most unusual window: it outscores
    every clean query, although it changes only 25 of 784 pixels.  Its closed-form leave-one-out equals refitting
    without each sample, class-conditional or not; non-square evidence is refused by name."""
    from dnnpiracy.attack.scorers import PatchKNNScorer, Scorer
    gen = torch.Generator().manual_seed(0)
    base = F.avg_pool2d(torch.rand(60, 1, 32, 32, generator=gen), 5, 1)[:, :, :28, :28] * 0.5   # smooth, dim
    y = torch.arange(60) % 3
    ref, queries = base[:45], base[45:].clone()
    queries[0, 0, 10:15, 12:17] = 1.0
    scorer = PatchKNNScorer("input", patch=5, stride=2).fit(Evidence(input=ref.flatten(1)), y[:45])
    s = scorer.score(Evidence(input=queries.flatten(1)), y[45:])
    assert s[0] > s[1:].max() * 1.5
    small = Evidence(input=base[:14].flatten(1))
    ys = torch.tensor([0] * 6 + [1] * 7 + [2])                  # class 2 has one sample: empty without it
    yp = ys.clone()
    yp[[0, 7]] = torch.tensor([1, 0])
    for cc in (True, False):
        sc = PatchKNNScorer("input", patch=7, stride=3, reach=1, class_conditional=cc)
        fast, slow = sc.loo_scores(small, ys, yp), Scorer.loo_scores(sc, small, ys, yp)
        assert torch.equal(torch.isinf(fast), torch.isinf(slow))
        ok = torch.isfinite(fast)
        assert torch.allclose(fast[ok], slow[ok], atol=1e-5)
        top = PatchKNNScorer("input", patch=7, stride=3, reach=1, class_conditional=cc, top=3)
        fast, slow = top.loo_scores(small, ys, yp), Scorer.loo_scores(top, small, ys, yp)
        ok = torch.isfinite(fast)
        assert torch.equal(ok, torch.isfinite(slow)) and torch.allclose(fast[ok], slow[ok], atol=1e-5)
    assert torch.isinf(PatchKNNScorer("input").loo_scores(small, ys, yp)[13])   # alone in its class
    maps = Evidence(maps=torch.randn(14, 3, 7, 7, generator=gen))             # (B, K, h, w) activation maps
    sc = PatchKNNScorer("maps", patch=1, stride=1, reach=1)
    fast, slow = sc.loo_scores(maps, ys, yp), Scorer.loo_scores(sc, maps, ys, yp)
    ok = torch.isfinite(fast)
    assert torch.equal(ok, torch.isfinite(slow)) and torch.allclose(fast[ok], slow[ok], atol=1e-5)
    # the batched squared-distance form equals brute force: every window against every reference window in reach
    sc = PatchKNNScorer("input", patch=5, stride=2, reach=1).fit(Evidence(input=ref.flatten(1)), y[:45])
    P = F.unfold(queries, 5, stride=2).transpose(1, 2)                  # (15, 144, 25)
    R = F.unfold(ref, 5, stride=2).transpose(1, 2)
    g = 12
    brute = torch.empty(len(P))
    for q in range(len(P)):
        refs = R[y[:45] == y[45 + q]]
        worst = 0.0
        for i in range(g):
            for j in range(g):
                rows, cols = range(max(0, i - 1), min(g, i + 2)), range(max(0, j - 1), min(g, j + 2))
                near = [a * g + b for a in rows for b in cols]
                worst = max(worst, float(torch.cdist(P[q, i * g + j][None], refs[:, near].reshape(-1, 25)).min()))
        brute[q] = worst
    assert torch.allclose(sc.score(Evidence(input=queries.flatten(1)), y[45:]), brute, atol=1e-4)
    # top=k: the mean of the k most unusual windows, never above the most unusual one; two stamps beat one
    two = queries.clone()
    two[1, 0, 10:15, 12:17] = 1.0
    two[1, 0, 2:7, 20:25] = 1.0
    sc4 = PatchKNNScorer("input", patch=5, stride=2, reach=1, top=4).fit(Evidence(input=ref.flatten(1)), y[:45])
    s4, s1 = (m.score(Evidence(input=two.flatten(1)), y[45:]) for m in (sc4, sc))
    assert (s4 <= s1 + 1e-6).all() and s4[1] > s4[0]
    with pytest.raises(ValueError, match="top"):
        PatchKNNScorer("input", top=0)
    with pytest.raises(ValueError, match="square"):
        PatchKNNScorer("input").fit(Evidence(input=torch.rand(4, 30)), torch.zeros(4, dtype=torch.long))


def test_dknn_counts_disagreeing_neighbours_and_its_leave_one_out_is_exact():
    """Deep kNN: a query that sits among class-1 references in the early stages but is predicted as class 0 gets
    k disagreeing votes per stage; a query among its own class gets none.  The closed-form leave-one-out (each
    sample's mean and spread downdated) equals refitting without each sample; an absent stage is refused by name."""
    from dnnpiracy.attack.scorers import DkNNScorer, Scorer
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 8, generator=gen) * 3
    y = torch.arange(30) % 3
    stage = lambda: centres[y] + torch.randn(30, 8, generator=gen) * 0.3        # noqa: E731
    ev = Evidence({"stage:a": stage(), "stage:b": stage(), "stage:c": stage()})
    sc = DkNNScorer(stages=(0, 2), k=5).fit(ev, y)
    q = Evidence({k: v[:2] + 0.01 for k, v in ev.items()})       # near sample 0 (class 0) and sample 1 (class 1)
    s = sc.score(q, torch.tensor([0, 0]))                         # the second is predicted 0 but looks like 1
    assert s.tolist() == [0.0, 10.0]
    # brute force: standardise by the references' mean and (population) spread, cosine, k nearest
    X = ev["stage:a"]
    Z = F.normalize((X - X.mean(0)) / (X.std(0, unbiased=False) + 1e-6), dim=1)
    Qa = F.normalize((q["stage:a"] - X.mean(0)) / (X.std(0, unbiased=False) + 1e-6), dim=1)
    nn = (Qa @ Z.T).topk(5, 1).indices
    assert float((y[nn[1]] != 0).sum()) == 5.0
    yp = y.clone()
    yp[[3, 7, 11]] = torch.tensor([1, 2, 0])                                     # some predictions disagree
    for k in (1, 4, 12):
        sc = DkNNScorer(stages=(0, 1, 2), k=k)
        assert torch.equal(sc.loo_scores(ev, y, yp), Scorer.loo_scores(sc, ev, y, yp))
    with pytest.raises(KeyError, match="stages"):
        DkNNScorer(stages=(3,)).fit(ev, y)
    with pytest.raises(ValueError, match="k must"):
        DkNNScorer(k=0)


def test_confident_dknn_weights_the_votes_by_the_softmax_margin():
    """dknn-margin: the same disagreeing votes count fully for a query the target answers with certainty, little for
    a query it hesitates on, and not at all when the label scored is not the target's answer; the weight is the
    query's own, so leave-one-out equals refitting without each sample."""
    from dnnpiracy.attack.scorers import ConfidentDkNNScorer, DkNNScorer, Scorer
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 8, generator=gen) * 3
    y = torch.arange(30) % 3
    ev = Evidence({"stage:a": centres[y] + torch.randn(30, 8, generator=gen) * 0.3,
                   "logits": torch.randn(30, 3, generator=gen) * 3})
    plain, conf = DkNNScorer(stages=(0,), k=5).fit(ev, y), ConfidentDkNNScorer(stages=(0,), k=5).fit(ev, y)
    # sample 1 (class 1) queried as class 0: 5 votes against; confident, hesitant and contradicting logits
    q = Evidence({"stage:a": ev["stage:a"][[1, 1, 1]],
                  "logits": torch.tensor([[20.0, 0.0, 0.0], [1.0, 0.9, 0.0], [0.0, 5.0, 0.0]])})
    y0 = torch.zeros(3, dtype=torch.long)
    assert plain.score(q, y0).tolist() == [5.0, 5.0, 5.0]
    s = conf.score(q, y0)
    p = q["logits"].softmax(1)
    assert s[0] == pytest.approx(5.0, abs=1e-6) and s[1] == pytest.approx(5 * float(p[1, 0] - p[1, 1]), rel=1e-5)
    assert s[2] == 0.0 and conf.reads() == {"stages", "logits"}
    yp = y.clone()
    yp[[3, 7]] = torch.tensor([1, 2])
    assert torch.allclose(conf.loo_scores(ev, y, yp), Scorer.loo_scores(conf, ev, y, yp), atol=1e-6)


def test_ensemble_of_a_count_scorer_with_no_quartile_spread_stays_finite():
    """A count-valued component whose out-of-fold scores are mostly 0 has no interquartile range: the ensemble
    standardises it by its standard deviation instead of dividing by ~0."""
    from dnnpiracy.attack.scorers import DkNNScorer, EnsembleScorer
    gen = torch.Generator().manual_seed(1)
    y = torch.arange(40) % 2
    ev = Evidence({"stage:a": torch.randn(40, 4, generator=gen) + y[:, None] * 6.0, "input": torch.rand(40, 16)})
    ens = EnsembleScorer([DkNNScorer(stages=(0,), k=3), KNNScorer("input", k=1)])
    oof = ens.oof_scores(ev, y, y)
    assert torch.isfinite(oof).all() and ens.scale[0] > 1e-3
    ens.fit(ev, y, y)
    assert torch.isfinite(ens.score(ev.take(torch.arange(5)), y[:5])).all()


def test_a_detector_that_reads_no_heatmap_serves_without_the_backward_pass(tiny_target):
    """The defaults read the input and pooled activations: probing without Grad-CAM's backward gives the same
    logits, features, scores and flags; the probe has no heatmap, and a heatmap scorer still gets one."""
    ds, splits, target = tiny_target
    sur = splits.surrogate_idx
    x = ds.test_x[splits.evaluation_idx[:40]]
    for name, reads in (("ensemble-patch-dknn-window", False), ("knn-heatmap", True),
                        ("ensemble-heatmap-features-input", True), ("knn-heatmap-cn", True)):
        det = fit_detector(target.model, arch_info("small-cnn"), ds.test_x[sur], ds.test_y[sur],
                           DetectorConfig(detector=name), tau=0.65)
        assert det.needs_heatmaps is reads, name
        served, full = det.inspect(x), det.inspect(x, heatmaps=True)
        assert (served.probe.heatmaps is not None) is reads and full.probe.heatmaps is not None
        assert torch.equal(served.predictions, full.predictions)
        assert torch.allclose(served.scores, full.scores) and torch.equal(served.flags, full.flags)
        for k, v in full.probe.features.items():
            assert torch.allclose(served.probe.features[k], v, atol=1e-6), k
    from dnnpiracy.attack import make_cam
    bare = make_cam(target.model, arch_info("small-cnn"))(x[:3], heatmaps=False)
    with pytest.raises(KeyError, match="heatmap"):
        Evidence.from_probe(bare, x[:3]).need("heatmap")


def test_window_stats_scorer_flags_a_flat_saturated_stamp_not_a_blend():
    """Window statistics: a white disc stamped on a textured image leaves a window that is flat at the maximum, a
    (mean, std) pair no reference window has, so it outscores every clean query; a faint blend of the same disc
    leaves none and is not told apart.  The closed-form leave-one-out equals refitting without each sample, and
    the score is a known value: the distance, in grid units / bins, to the nearest occupied grid cell."""
    from dnnpiracy.attack.scorers import Scorer, WindowStatsScorer
    from dnnpiracy.watermark import disc_mask
    gen = torch.Generator().manual_seed(0)
    textured = 0.2 + 0.6 * torch.rand(60, 1, 28, 28, generator=gen)          # never flat, never saturated
    y = torch.arange(60) % 3
    ref, queries = textured[:40], textured[40:].clone()
    disc = disc_mask(28, 28, 14, 14, 3)
    queries[0, 0][disc] = 1.0                                                 # stamped
    queries[1, 0][disc] = 0.8 * queries[1, 0][disc] + 0.2                     # blended: still textured
    sc = WindowStatsScorer(patch=5, bins=50).fit(Evidence(input=ref.flatten(1)), y[:40])
    s = sc.score(Evidence(input=queries.flatten(1)), y[40:])
    assert s[0] > 2 * s[2:].max() and s[1] <= s[2:].max() * 1.5
    # known value: a window of exactly 1.0 falls in cell (bins, 0); its score is that cell's distance to the
    # nearest occupied cell, brute force over the occupied cells
    occupied = torch.nonzero(sc.counts).flatten()
    coords = torch.stack([occupied // 51, occupied % 51], 1).float()
    expected = torch.cdist(torch.tensor([[50.0, 0.0]]), coords).min() / 50
    assert float(s[0]) == pytest.approx(float(expected), abs=1e-6)
    ev = Evidence(input=textured[:12].flatten(1))
    ev["input"][3, :200] = 1.0                                                # one sample owns unusual cells
    fast, slow = sc.loo_scores(ev, y[:12], y[:12]), Scorer.loo_scores(sc, ev, y[:12], y[:12])
    assert torch.allclose(fast, slow, atol=1e-6) and fast[3] > 0
    with pytest.raises(ValueError, match="square"):
        sc.score(Evidence(input=torch.rand(2, 30)), torch.zeros(2, dtype=torch.long))


def test_window_stats_scorer_refuses_what_it_cannot_read():
    """Integer pixels, values outside [0, 1] and NaN are refused by name; so is scoring before fitting."""
    from dnnpiracy.attack.scorers import WindowStatsScorer
    y = torch.zeros(2, dtype=torch.long)
    with pytest.raises(RuntimeError, match="not fitted"):
        WindowStatsScorer().score(Evidence(input=torch.rand(2, 784)), y)
    for bad, what in ((torch.randint(0, 255, (2, 784)), "dtype"), (torch.rand(2, 784) * 255, r"\[0, 1\]"),
                      (torch.full((2, 784), float("nan")), r"\[0, 1\]")):
        with pytest.raises(ValueError, match=what):
            WindowStatsScorer().fit(Evidence(input=bad), y)


def test_discriminator_score_is_minus_log_d_known_value():
    """-log D(h): with D's output pinned to sigmoid(log 3) = 0.75 the score is -log 0.75 = 0.2877 (the loss of h taken
    as *real*; -log(1 - D) would give 1.386)."""
    from dnnpiracy.attack.dcgan import Discriminator, discriminator_score
    from dnnpiracy.config import GanConfig
    D = Discriminator(GanConfig())
    lin = D.adv_layer[0]
    with torch.no_grad():
        lin.weight.zero_()
        lin.bias.fill_(math.log(3.0))
    s = discriminator_score(D, torch.rand(4, 1, 28, 28), 32)
    assert torch.allclose(s, torch.full((4,), -math.log(0.75)), atol=1e-6)


def test_paper_detector_threshold_is_its_classes_largest_in_sample_score_plus_tau(tiny_target):
    ds, splits, target = tiny_target
    sur = splits.surrogate_idx
    det = fit_detector(target.model, arch_info("small-cnn"), ds.test_x[sur], ds.test_y[sur],
                       DetectorConfig(detector="paper", gan=GanConfig(epochs=1)), tau=2.0)
    y = ds.test_y[sur]
    for c in range(10):
        alpha = det.calibration_scores[y == c].max()
        assert float(det.thresholds[c]) == pytest.approx(float(alpha) + 2.0, abs=1e-6)
        assert alpha > 0       # a -log D score of real heatmaps is positive: alpha_y is not forced to 0
    assert torch.allclose(det.with_tau(0.5).thresholds, det.thresholds - 1.5)
