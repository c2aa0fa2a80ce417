"""scripts/trigger_misses.py: a cell's misses are its k_fn lowest-scoring triggers, split by source label."""
import importlib.util
from pathlib import Path

spec = importlib.util.spec_from_file_location(
    "trigger_misses", Path(__file__).resolve().parents[1] / "scripts" / "trigger_misses.py")
trigger_misses = importlib.util.module_from_spec(spec)
spec.loader.exec_module(trigger_misses)


def test_misses_are_the_lowest_scores_split_by_source_label():
    out = {"results": [{"target_fpr": 0.005, "k_fn": 3, "fpr": 0.002}, {"target_fpr": 0.01, "k_fn": 2, "fpr": 0.004}],
           "scores": {"triggers": [9.0, 1.0, 7.0, 0.5, 8.0]}}
    # triggers 1 and 3 score lowest; trigger 3 and 4 were stamped on images of the trigger label (6)
    m = trigger_misses.cell_misses(out, [1, 2, 3, 6, 6], trigger_label=6)
    assert m == {"n": 5, "n_same": 2, "missed": 2, "missed_same": 1, "fpr": 0.004}
    m = trigger_misses.cell_misses(out, [1, 2, 3, 6, 6], trigger_label=6, target_fpr=0.005)
    assert m["missed"] == 3 and m["missed_same"] == 1          # trigger 2 (score 7) is the third lowest


def test_a_tie_at_the_threshold_is_refused():
    import pytest
    out = {"results": [{"target_fpr": 0.01, "k_fn": 1, "fpr": 0.0}], "scores": {"triggers": [3.0, 1.0, 1.0]}}
    with pytest.raises(ValueError, match="straddle"):
        trigger_misses.cell_misses(out, [0, 0, 0], trigger_label=0)
