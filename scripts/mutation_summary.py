"""Per-module totals of the last `mutmut run` (mutmut 3 keeps them in mutants/<path>.meta).

    python scripts/mutation_summary.py [--exclude docs/mutation/equivalent.txt]

Prints, for each mutated module: total, killed, survived, timeout, skipped, other statuses, the kill rate
killed / total, and -- with ``--exclude`` (one mutant name per line, ``#`` comments) -- the kill rate with the listed
provably equivalent mutants taken out of the total.  Statuses are mutmut's own (mutmut.stats.status_by_exit_code)."""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from mutmut.stats import status_by_exit_code


def load_excluded(path: Path | None) -> set[str]:
    if path is None:
        return set()
    return {line.split("#")[0].strip() for line in path.read_text().splitlines() if line.split("#")[0].strip()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--exclude", type=Path, help="file listing provably equivalent mutants, one name per line")
    ap.add_argument("--mutants", type=Path, default=Path("mutants"))
    args = ap.parse_args()
    excluded = load_excluded(args.exclude)
    unknown = set(excluded)
    rows = []
    for meta in sorted(args.mutants.rglob("*.py.meta")):
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        status = {name: status_by_exit_code[code] for name, code in codes.items()}
        unknown -= set(status)
        c = Counter(status.values())
        eq = [n for n in status if n in excluded]
        eq_killed = sum(status[n] == "killed" for n in eq)
        total = len(status)
        rows.append((str(meta.relative_to(args.mutants))[: -len(".meta")], total, c, len(eq), eq_killed))
        for name in sorted(status):
            if status[name] != "killed":
                print(f"    {name}: {status[name]}{'  (equivalent, excluded)' if name in excluded else ''}")
    print()
    print("| module | total | killed | survived | timeout | skipped | other | kill rate | equivalent | "
          "kill rate without them |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for path, total, c, n_eq, eq_killed in rows:
        other = total - sum(c[s] for s in ("killed", "survived", "timeout", "skipped"))
        rate = c["killed"] / total
        rate_eq = (c["killed"] - eq_killed) / (total - n_eq)
        print(f"| {path} | {total} | {c['killed']} | {c['survived']} | {c['timeout']} | {c['skipped']} | {other} | "
              f"{rate:.1%} | {n_eq} | {rate_eq:.1%} |")
    if rows:
        total = sum(r[1] for r in rows)
        c = sum((r[2] for r in rows), Counter())
        n_eq, eq_killed = sum(r[3] for r in rows), sum(r[4] for r in rows)
        other = total - sum(c[s] for s in ("killed", "survived", "timeout", "skipped"))
        print(f"| all | {total} | {c['killed']} | {c['survived']} | {c['timeout']} | {c['skipped']} | {other} | "
              f"{c['killed'] / total:.1%} | {n_eq} | {(c['killed'] - eq_killed) / (total - n_eq):.1%} |")
    if unknown:
        raise SystemExit(f"excluded names that are not mutants of the last run: {sorted(unknown)}")


if __name__ == "__main__":
    main()
