import math

import torch

from dnnpiracy.evaluation.metrics import auroc
from dnnpiracy.evaluation.plots import heatmap_gallery, roc_figure, roc_points, threshold_sweep_figure

PNG = b"\x89PNG\r\n\x1a\n"


def _trapezoid(f, t):
    return sum((f[i + 1] - f[i]) * (t[i + 1] + t[i]) / 2 for i in range(len(f) - 1))


def test_roc_points_known_values_and_area_matches_auroc():
    clean = [0.1, 0.2, 0.3, 0.4]
    trig = [0.35, 0.5]
    f, t = roc_points(clean, trig)
    assert (f[0], t[0]) == (0.0, 0.0) and (f[-1], t[-1]) == (1.0, 1.0)
    assert all(a <= b for a, b in zip(f, f[1:])) and all(a <= b for a, b in zip(t, t[1:]))
    # at threshold 0.35: one clean (0.4) of 4 and both triggers score >= it
    assert (0.25, 1.0) in list(zip(f, t))
    assert math.isclose(_trapezoid(f, t), auroc(torch.tensor(clean), torch.tensor(trig)), abs_tol=1e-9)


def test_roc_points_handles_ties_and_infinities():
    f, t = roc_points([1.0, 1.0, float("nan")], [1.0, float("inf")])
    assert math.isclose(_trapezoid(f, t), auroc(torch.tensor([1.0, 1.0, -math.inf]),
                                                 torch.tensor([1.0, math.inf])), abs_tol=1e-9)


def _row(**kw):
    base = {"fpr_mean": 0.01, "fpr_ci95": [0.0, 0.02], "fnr_mean": 0.5, "fnr_ci95": [0.3, 0.7],
            "paper_fpr": 0.0, "paper_fnr": 0.0, "detector": "x", "tau": None, "target_fpr": None}
    return {**base, **kw}


def test_figures_render_png():
    rows = [_row(tau=t, detector="paper") for t in (0.1, 2.0, 20.0)] + [_row(target_fpr=a) for a in (0.01, 0.05)]
    assert threshold_sweep_figure(rows, "t").startswith(PNG)
    assert roc_figure({"paper": [("l0", [0.1, 0.2], [0.3])], "default": [("l0", [0.1], [0.0, 0.4])]},
                      "t").startswith(PNG)
    x = torch.rand(4, 1, 28, 28)
    y = torch.tensor([0, 1, 0, 1])
    assert heatmap_gallery(x, y, x, y, x[:2], torch.tensor([1, 1]), x[:2], torch.tensor([0, 0]), ["a", "b"],
                           "t").startswith(PNG)


def _fake_run(n=12, nc=10):
    """The objects run_figure reads, small and synthetic: a dataset, a detector and two inspected sets."""
    from types import SimpleNamespace as NS
    gen = torch.Generator().manual_seed(0)

    def inspected(k):
        probe = NS(heatmaps=torch.rand(k, 1, 28, 28, generator=gen))
        ins = NS(probe=probe, flags=torch.rand(k, generator=gen) > 0.5, scores=torch.randn(k, generator=gen),
                 predictions=torch.arange(k) % nc)
        return NS(x=torch.rand(k, 1, 28, 28, generator=gen), y=torch.arange(k) % nc, inspection=ins)

    ds = NS(name="digits-tiny", class_names=tuple(str(c) for c in range(nc)))
    det = NS(num_classes=nc, thresholds=torch.ones(nc), name="knn-input", cam=NS(layer="conv2"))
    report = {"fpr": 0.0123, "fpr_ci95": [0.005, 0.02], "fnr": 0.0667, "fnr_ci95": [0.01, 0.3], "fnr_fresh": 0.25,
              "n_fresh_effective": 40, "n_clean": 190, "n_triggers": 15,
              "verification_target": {"verdict": "pirated", "n_trigger_label": 15, "n_queries": 15,
                                      "p_value": 1e-15},
              "verification_pirated": {"verdict": "not pirated", "n_trigger_label": 2, "n_queries": 15,
                                       "p_value": 0.45}}
    return ds, det, inspected(n), inspected(n), report


def test_run_figure_shows_the_headline_numbers_and_labels_every_histogram():
    import matplotlib.pyplot as plt

    from dnnpiracy.evaluation.report import run_figure, run_figure_fig
    ds, det, clean, trig, report = _fake_run()
    fig = run_figure_fig(ds, None, det, clean, trig, report=report)
    try:
        text = "\n".join(t.get_text() for t in fig.texts)
        for needle in ("FPR 0.0123", "FNR 0.0667", "fresh FNR 0.2500", "stolen target: pirated (15/15 answered",
                       "p = 1.00e-15", "pirated classifier: not pirated (2/15 answered", "p = 4.50e-01"):
            assert needle in text, needle
        hists = [ax for ax in fig.axes if ax.get_title().startswith("predicted ")]
        assert len(hists) == det.num_classes
        assert all(ax.get_xlabel() == "anomaly score" and ax.get_ylabel() for ax in hists)
    finally:
        plt.close(fig)
    assert run_figure(ds, None, det, clean, trig, report=report).startswith(PNG)
