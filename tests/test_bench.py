"""The fast (batched) detector path against a plain per-image one, the lean BatchNorm backward against ATen's,
and ``dnnpiracy bench`` end to end on a tiny configuration."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from dnnpiracy.attack import GradCAM, fit_detector, heatmaps, minmax_scale
from dnnpiracy.attack.captum_cam import CaptumGradCAM
from dnnpiracy.attack.heatmaps import Probe, _EvalBatchNormInputGrad, _pool
from dnnpiracy.attack.scorers import Evidence
from dnnpiracy.config import DetectorConfig
from dnnpiracy.models import arch_info, build_model


def plain_gradcam(model, layer, feature_layers, x1):
    """Textbook Grad-CAM of one image: hooks, a full autograd graph (weights too), retain_grad, backward."""
    store = {}

    def keep(name):
        def hook(_m, _i, out):
            store[name] = out
            if name == layer:
                out.retain_grad()
        return hook

    names = dict.fromkeys((layer, *feature_layers))
    handles = [model.get_submodule(n).register_forward_hook(keep(n)) for n in names]
    try:
        model.eval()
        logits = model(x1)
        pred = logits.argmax(1)
        model.zero_grad()
        logits[0, pred[0]].backward()
    finally:
        for h in handles:
            h.remove()
    act, grads = store[layer].detach(), store[layer].grad
    cam = F.relu((grads.mean((2, 3), keepdim=True) * act).sum(1, keepdim=True))
    heat = minmax_scale(F.interpolate(cam, size=x1.shape[-2:], mode="bilinear", align_corners=False))
    feats = {n: _pool(store[n].detach()) for n in feature_layers}
    return Probe(logits.detach(), heat, cam, feats)


def plain_inspect(det, model, info, x):
    """Each image alone: plain Grad-CAM -> evidence -> scorer -> its class's threshold."""
    scores, flags, preds, heat = [], [], [], []
    for i in range(len(x)):
        x1 = x[i:i + 1]
        probe = plain_gradcam(model, det.cam.layer, info.feature_layers, x1)
        y = probe.predictions
        s = det.scorer.score(Evidence.from_probe(probe, x1, det.penultimate), y)
        scores.append(s)
        flags.append(s > det.thresholds[y])
        preds.append(y)
        heat.append(probe.heatmaps)
    return torch.cat(scores), torch.cat(flags), torch.cat(preds), torch.cat(heat)


@pytest.mark.parametrize("detector", ["knn-input", "mahalanobis-features", "default"])
def test_batched_detector_gives_plain_per_image_decisions(tiny_target, detector):
    ds, splits, target = tiny_target
    info = arch_info("small-cnn")
    sur = splits.surrogate_idx
    det = fit_detector(target.model, info, ds.test_x[sur], ds.test_y[sur],
                       DetectorConfig(detector=detector, target_fpr=0.02), tau=2.0)
    x = torch.cat([ds.test_x[splits.evaluation_idx[:25]], target.triggers.images])   # 40: clean + triggers
    fast = det.inspect(x)
    assert fast.flags.any() and not fast.flags.all()          # both decisions occur: the comparison means something
    scores, flags, preds, heat = plain_inspect(det, target.model, info, x)
    assert torch.equal(fast.predictions, preds)
    assert torch.equal(fast.flags, flags)
    assert torch.allclose(fast.scores, scores, rtol=1e-5, atol=1e-5)
    full = fast if det.needs_heatmaps else det.inspect(x, heatmaps=True)   # served without them where unread
    assert torch.equal(full.flags, flags)
    assert (full.probe.heatmaps - heat).abs().max() <= 1e-5
    assert all(p.requires_grad for p in target.model.parameters())


def test_batched_detector_matches_plain_on_resnet_with_batchnorm(tiny):
    """ResNet-18 (BatchNorm everywhere, so the lean BatchNorm backward is used by the batched path)."""
    from dnnpiracy.data import make_splits
    torch.manual_seed(0)
    model = build_model("resnet18").eval()
    info = arch_info("resnet18")
    splits = make_splits(tiny.test_y, 0.25, seed=0)
    sur = splits.surrogate_idx
    det = fit_detector(model, info, tiny.test_x[sur], tiny.test_y[sur],
                       DetectorConfig(detector="mahalanobis-features", target_fpr=0.05), tau=2.0)
    x = tiny.test_x[splits.evaluation_idx[:24]]
    assert len(x) >= heatmaps.LEAN_BN_MIN_BATCH
    fast = det.inspect(x, heatmaps=True)            # with the backward pass (served, the detector skips it)
    scores, flags, preds, _ = plain_inspect(det, model, info, x)
    assert torch.equal(fast.predictions, preds) and torch.equal(fast.flags, flags)
    assert torch.equal(det.inspect(x).flags, flags)
    assert torch.allclose(fast.scores, scores, rtol=1e-5, atol=1e-5)
    ref = CaptumGradCAM(model, info.heatmap_layer, info.feature_layers)(x)
    assert (fast.probe.heatmaps - ref.heatmaps).abs().max() <= 1e-5


@pytest.mark.parametrize("shape,affine", [((16, 256, 2, 2), True), ((16, 128, 4, 4), True),
                                          ((16, 512, 1, 1), True), ((3, 64, 7, 7), True), ((5, 32, 3, 3), False)])
def test_lean_batchnorm_backward_is_bitwise_aten(shape, affine):
    torch.manual_seed(0)
    bn = torch.nn.BatchNorm2d(shape[1], affine=affine).eval()
    bn.running_mean.normal_()
    bn.running_var.uniform_(0.05, 4.0)
    if affine:
        bn.weight.data.normal_()
        bn.bias.data.normal_()
        bn.requires_grad_(False)
    x = torch.randn(shape, requires_grad=True)
    g = torch.randn(shape)
    y_ref = bn(x)
    (gx_ref,) = torch.autograd.grad(y_ref, x, g)
    forward = heatmaps._lean_eval_bn(bn)
    y = forward(x)
    (gx,) = torch.autograd.grad(y, x, g)
    assert y.grad_fn is not None and _EvalBatchNormInputGrad.__name__ in type(y.grad_fn).__name__
    assert torch.equal(y, y_ref) and torch.equal(gx, gx_ref)


def test_lean_batchnorm_cam_is_bitwise_the_plain_cam(monkeypatch):
    torch.manual_seed(0)
    model = build_model("resnet18").eval()
    info = arch_info("resnet18")
    x = torch.rand(12, 1, 28, 28)
    cam = GradCAM(model, info.heatmap_layer, info.feature_layers)
    monkeypatch.setattr(heatmaps, "LEAN_BN_MIN_BATCH", 10 ** 9)
    plain = cam(x)
    monkeypatch.setattr(heatmaps, "LEAN_BN_MIN_BATCH", 1)
    lean = cam(x)
    for k in ("logits", "heatmaps", "cams"):
        assert torch.equal(getattr(plain, k), getattr(lean, k)), k
    assert all(torch.equal(plain.features[k], lean.features[k]) for k in plain.features)
    assert not any("forward" in vars(m) for m in model.modules())       # the patch is gone
    with torch.no_grad():                       # new statistics in place: the cached constants must follow
        model.layer3[0].bn1.running_var.mul_(1.7)
        model.layer2[1].bn2.weight.mul_(-0.5)
    lean2 = cam(x)
    monkeypatch.setattr(heatmaps, "LEAN_BN_MIN_BATCH", 10 ** 9)
    plain2 = cam(x)
    assert torch.equal(plain2.heatmaps, lean2.heatmaps) and not torch.equal(plain2.heatmaps, plain.heatmaps)
    assert all(p.requires_grad for p in model.parameters())


REQUIRED_KEYS = ("pirated_over_bare", "pirated_over_captum", "latency_p50_ms", "latency_p99_ms",
                 "detector_fit_seconds", "max_heatmap_abs_diff", "machine", "torch", "threads", "git_commit",
                 "command", "wall_seconds", "weights", "peak_rss_kib", "detectors")


def test_run_bench_quick_small_cnn(tmp_path):
    from dnnpiracy.experiments.speed import run_bench
    from dnnpiracy.experiments.speed_report import bench_markdown
    from dnnpiracy.io import read_json, write_json
    res = run_bench(arch="small-cnn", quick=True, detectors=("knn-input",), batch_sizes=(1, 16),
                    dataset="digits-tiny", seconds_per_measure=0.05, rounds=2, latency_calls=10,
                    echo=lambda _m: None)
    for k in REQUIRED_KEYS:
        assert k in res, k
    assert res["weights"] == "random-init" and res["dataset"] == "digits-tiny"
    assert res["max_heatmap_abs_diff"] <= 1e-5
    entry = res["detectors"]["knn-input"]
    assert entry["predictions_equal"] and entry["flag_mismatches"] == 0
    for b in ("1", "16"):
        row = entry["batches"][b]
        for k in ("bare_images_per_s", "pirated_images_per_s", "captum_images_per_s", "pirated_over_bare",
                  "pirated_over_captum"):
            assert math.isfinite(row[k]) and row[k] > 0, (b, k)
        assert len(row["rounds"]["pirated"]) == 2
    for k in ("pirated_over_bare", "pirated_over_captum", "latency_p50_ms", "latency_p99_ms",
              "detector_fit_seconds"):
        assert math.isfinite(res[k]) and res[k] > 0, k
    assert res["latency_p99_ms"] >= res["latency_p50_ms"]
    assert res["machine"]["nproc"] >= 1 and res["torch"]["version"] == torch.__version__
    assert not res["criteria"]["applies"]
    write_json(tmp_path / "bench.json", res)
    assert read_json(tmp_path / "bench.json")["max_heatmap_abs_diff"] == res["max_heatmap_abs_diff"]
    md = bench_markdown(res)
    assert "| knn-input | 16 |" in md and "pirated/bare" in md


def test_bench_cli_writes_json_and_markdown(tmp_path):
    from dnnpiracy.cli import main
    out, md = tmp_path / "b.json", tmp_path / "b.md"
    r = CliRunner().invoke(main, ["bench", "--arch", "small-cnn", "--quick", "--dataset", "digits-tiny",
                                  "--detector", "mahalanobis-features", "--batch-size", "1",
                                  "--batch-size", "8", "--seconds", "0.02", "--rounds", "1",
                                  "--json", str(out), "--md", str(md)])
    assert r.exit_code == 0, r.output
    res = json.loads(out.read_text())
    assert res["headline"] == {"detector": "mahalanobis-features", "batch_size": 8}
    assert res["command"][0] == "dnnpiracy"
    assert md.read_text().startswith("# dnnpiracy bench: small-cnn")
    assert "pirated/Captum" in r.output
    r = CliRunner().invoke(main, ["bench", "--arch", "small-cnn", "--detector", "nope"])
    assert r.exit_code == 2 and "unknown detector" in r.output
