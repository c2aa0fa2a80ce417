"""The owner's view: does embedding the watermark cost accuracy, and does verification tell a watermarked model
from a clean one?"""

from __future__ import annotations

from pathlib import Path

from dnnpiracy.io import read_json
from dnnpiracy.training import load_model, predict_labels
from dnnpiracy.watermark import load_trigger_set, verification_chance, verify


def owner_comparison(watermarked_dir: Path, clean_dir: Path, significance: float = 0.01) -> dict:
    """Compare a watermarked target with the same model trained without triggers; verify both with the
    watermarked target's trigger set."""
    wm, cl = read_json(watermarked_dir / "report.json"), read_json(clean_dir / "report.json")
    if wm.get("dataset") != cl.get("dataset") or wm.get("arch") != cl.get("arch"):
        raise ValueError("the two models differ in dataset or architecture; compare like with like")
    triggers = load_trigger_set(watermarked_dir / "triggers.safetensors")
    verdicts = {}
    for name, d in (("watermarked", watermarked_dir), ("clean", clean_dir)):
        model, _ = load_model(d / "model.safetensors")
        verdicts[name] = verify(lambda x, m=model: predict_labels(m, x), triggers.images, triggers.labels,
                                significance=significance, chance=verification_chance(triggers.config)).to_dict()
    keys = ("test_accuracy", "evaluation_accuracy", "trigger_accuracy", "fresh_trigger_accuracy", "train_seconds")
    return {
        "dataset": wm["dataset"], "arch": wm["arch"], "train_config": wm["train_config"],
        "trigger_config": wm["trigger_config"], "trigger_oversampled": wm.get("trigger_oversampled"),
        "watermarked": {k: wm.get(k) for k in keys}, "clean": {k: cl.get(k) for k in keys},
        "accuracy_cost_pp": 100 * (cl["test_accuracy"] - wm["test_accuracy"]),
        "verification": verdicts, "watermarked_commit": wm.get("git_commit"), "clean_commit": cl.get("git_commit"),
    }


def owner_markdown(r: dict) -> str:
    w, c, v = r["watermarked"], r["clean"], r["verification"]
    return "\n".join([
        f"# Owner side: watermark cost and verification ({r['dataset']}, {r['arch']})", "",
        f"Training: {r['train_config']}. Triggers: {r['trigger_config']} "
        f"(oversampled x{r['train_config']['trigger_oversample']} per epoch).", "",
        "| model | test accuracy (10k) | trigger accuracy (15) | fresh-trigger accuracy (500) | verdict | "
        "trigger-label answers | p-value |",
        "|---|---|---|---|---|---|---|",
        f"| watermarked | {w['test_accuracy']:.4f} | {w['trigger_accuracy']:.3f} | "
        f"{w['fresh_trigger_accuracy']:.3f} | {v['watermarked']['verdict']} | "
        f"{v['watermarked']['n_trigger_label']}/{v['watermarked']['n_queries']} | {v['watermarked']['p_value']:.2e} |",
        f"| clean (no triggers) | {c['test_accuracy']:.4f} | n/a | n/a | {v['clean']['verdict']} | "
        f"{v['clean']['n_trigger_label']}/{v['clean']['n_queries']} | {v['clean']['p_value']:.2e} |",
        "", f"Accuracy cost of the watermark: {r['accuracy_cost_pp']:.2f} percentage points "
        "(clean minus watermarked test accuracy). The clean model is verified against the watermarked model's "
        "trigger set. One-sided binomial test against chance 1/10.", ""])
