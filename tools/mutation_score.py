"""Per-module mutation score of the last ``mutmut run`` (``make mutation``), and the surviving mutants.

Reads ``mutmut results --all true`` (one ``name: status`` line per mutant; mutmut 3) and prints, per module,
mutants, killed, survived and the score (killed / (killed + survived); mutants no test reached count as
survived). Exits 1 when a module scores under ``--target`` (default 90 %), so ``make mutation`` fails.
``--show`` prints the diff of each survivor (``mutmut show NAME``). ``--recheck`` first runs the
survivors again, one at a time: in a parallel ``mutmut run`` a few mutants of the lock module survive that
a run of their own kills (their tests start threads and processes and wait on timeouts, and mutmut's
forked workers do not always reproduce that); a survivor that survives alone too is a real one.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

MUTMUT = str(Path(sys.executable).with_name("mutmut"))
_NAME = re.compile(r"^\s*(?P<name>\S+): (?P<status>.+)$")


def module_of(name: str) -> str:
    """``nova_pipeline.core.atomic.xǁ_AtomicWriterǁ__exit____mutmut_3`` -> ``nova_pipeline.core.atomic``."""
    head = name.split("__mutmut_", 1)[0]
    return re.split(r"\.x[_ǁ]", head, maxsplit=1)[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--target", type=float, default=90.0)
    parser.add_argument("--show", action="store_true")
    parser.add_argument("--recheck", action="store_true")
    args = parser.parse_args()
    if args.recheck:
        listed = subprocess.run([MUTMUT, "results"], capture_output=True, text=True, check=True).stdout
        names = [m["name"] for m in map(_NAME.match, listed.splitlines()) if m]
        if names:
            print(f"re-running the {len(names)} surviving mutants, one at a time")
            subprocess.run([MUTMUT, "run", "--max-children", "1", *names], capture_output=True, check=False)
    out = subprocess.run([MUTMUT, "results", "--all", "true"], capture_output=True, text=True, check=True)
    counts: dict[str, Counter] = defaultdict(Counter)
    survivors: list[str] = []
    for line in out.stdout.splitlines():
        m = _NAME.match(line)
        if not m:
            continue
        status = "killed" if m["status"] in ("killed", "timeout") else "survived"
        counts[module_of(m["name"])][status] += 1
        if status == "survived":
            survivors.append(m["name"])
    if not counts:
        print("no mutants: run `mutmut run` first (make mutation)")
        return 1
    print(f"{'module':<40} {'mutants':>8} {'killed':>7} {'survived':>9} {'score':>7}")
    low = []
    for module in sorted(counts):
        c = counts[module]
        total = c["killed"] + c["survived"]
        score = 100.0 * c["killed"] / total
        print(f"{module:<40} {total:>8} {c['killed']:>7} {c['survived']:>9} {score:>6.1f}%")
        if score < args.target:
            low.append(module)
    print(f"\n{len(survivors)} surviving mutants (mutmut show NAME for each diff)")
    for name in survivors:
        print(f"  {name}")
        if args.show:
            diff = subprocess.run([MUTMUT, "show", name], capture_output=True, text=True).stdout
            for d in diff.splitlines():
                if d[:1] in "+-" and d[:3] not in ("+++", "---"):
                    print(f"      {d}")
    if low:
        print(f"\nunder {args.target:.0f} %: {', '.join(low)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
