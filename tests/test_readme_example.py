"""README.md's Python API example runs end to end (on a small synthetic stand-in for Fashion-MNIST)."""

from __future__ import annotations

import re
from pathlib import Path

import dnnpiracy.data

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", README.read_text(), flags=re.S | re.M)


def test_readme_python_example_runs(tmp_path, monkeypatch, capsys):
    blocks = readme_python_blocks()
    assert len(blocks) == 1, "README.md should hold exactly one ```python example"
    code = blocks[0]
    assert 'load_dataset("fashion-mnist")' in code          # what the stand-in replaces
    code_lines = [ln for ln in code.splitlines() if ln.strip() and not ln.startswith(("from ", "import "))]
    assert len(code_lines) <= 14, "keep the example short: watermark, fit the detector, pirate, verify"

    def tiny(name, *_a, **_k):
        # digits-tiny with a 400-image test set: 5 % of it is 2 surrogate inputs per class, the least the
        # calibrated (cross-fitted) default detector accepts
        assert name == "fashion-mnist"
        return dnnpiracy.data.datasets.make_digits_tiny(n_train=600, n_test=400)

    monkeypatch.setattr(dnnpiracy.data, "load_dataset", tiny)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, str(README), "exec"), {"__name__": "readme_example"})   # noqa: S102 - our own README
    verdicts = [ln for ln in capsys.readouterr().out.splitlines() if ln in ("pirated", "not pirated")]
    assert len(verdicts) == 2 and verdicts[0] == "pirated", verdicts   # the stolen model carries the watermark
    assert (tmp_path / "runs" / "api-target" / "model.safetensors").exists()


def test_readme_and_run_help_give_the_same_quick_run_duration():
    from dnnpiracy.cli.run import QUICK_DURATION, QUICK_HELP
    assert QUICK_DURATION in QUICK_HELP
    quick = [ln for ln in README.read_text().splitlines() if ln.startswith("dnnpiracy run --quick")]
    assert len(quick) == 1 and QUICK_DURATION in quick[0], quick
