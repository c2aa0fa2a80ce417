"""Plant one of four known bugs in src/, run the tests, and put the file back byte for byte (docs/mutation.md).

    python scripts/mutation_planted_bugs.py a|b|c|d [pytest args ...]

(a) the score -log(1 - D) instead of -log D            (attack/dcgan.py, discriminator_score)
(b) the paper threshold alpha_y + 3 tau                (attack/thresholds.py, paper_thresholds)
(c) alpha_y forced to 0                                (attack/thresholds.py, paper_thresholds)
(d) real/fake labels swapped in D's loss (real -> 0)   (attack/dcgan.py, train_dcgan)

The file is restored in a ``finally`` block (and checked), also when the tests fail or are interrupted.  Prints the
tests that fail; the bug is caught when at least one does.  It edits a tracked file for the length of one test run,
so do not run it while someone else is editing that file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BUGS = {
    "a": ("src/dnnpiracy/attack/dcgan.py", "    return -torch.log(p)\n", "    return -torch.log(1 - p)\n"),
    "b": ("src/dnnpiracy/attack/thresholds.py", "    return alpha + tau\n", "    return alpha + 3 * tau\n"),
    "c": ("src/dnnpiracy/attack/thresholds.py", "            alpha[c] = s.max()\n", "            alpha[c] = 0.0\n"),
    "d": ("src/dnnpiracy/attack/dcgan.py",
          "d_loss = (F.binary_cross_entropy(D(real), ones) + F.binary_cross_entropy(D(fake.detach()), zeros)) / 2",
          "d_loss = (F.binary_cross_entropy(D(real), zeros) + F.binary_cross_entropy(D(fake.detach()), ones)) / 2"),
}
TESTS = ["tests/test_known_values_thresholds.py", "tests/test_known_values_dcgan.py",
         "tests/test_known_values_metrics.py", "tests/test_known_values_verify.py"]


def main() -> int:
    key, tests = sys.argv[1], sys.argv[2:] or TESTS
    path, old, new = BUGS[key]
    p = Path(path)
    original = p.read_bytes()
    text = original.decode()
    if text.count(old) != 1:
        raise SystemExit(f"({key}): the line to change occurs {text.count(old)} times in {path}, expected once")
    try:
        p.write_text(text.replace(old, new))
        print(f"planted ({key}) in {path}:\n  - {old.strip()}\n  + {new.strip()}", flush=True)
        r = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rf", "--tb=no", *tests],
                           capture_output=True, text=True)
        failed = [line for line in r.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))]
        print("\n".join(failed) or "no test failed")
    finally:
        p.write_bytes(original)
    assert p.read_bytes() == original
    print(f"restored {path}; caught: {'yes' if failed else 'NO'}")
    return 0 if failed else 1


if __name__ == "__main__":
    sys.exit(main())
