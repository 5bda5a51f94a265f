"""The code graph: how right its resolved calls are against jedi, and what building it costs.

The tree: standard-library packages (real code nobody here wrote), read in place from the running
interpreter's library, so that module names are the real ones (``json.decoder``) and jedi resolves the same
files.

* **Build cost.** A cold ``build_graph`` (read, blake3 check, ``ast`` extraction, tree-wide resolution)
  against its anchor, reading and ``ast.parse``-ing the same files, both per 1,000 files; then a rebuild
  after one file changed (one file parsed, the whole tree resolved again) against the cold build. Measured
  on a small and a large selection, to show how cost grows with the tree.
* **Precision and recall against jedi.** ``--sites`` call sites sampled at random (seeded) from every call
  site of the tree. For each, jedi 0.20's ``Script.goto(follow_imports=True)`` on the callee's last name
  is the reference. Sites jedi resolves to a function or class defined inside the tree make the recall set
  (not those it resolves to a variable, such as ``eq = self.assertEqual``: the graph's nodes are
  symbols); precision is over the sites the graph resolved that jedi also resolved (agreeing means the
  same file, the same name, and jedi's definition line inside the graph's target symbol). Targets:
  precision >= 0.95, recall >= 0.80.
  Sites the graph resolved but jedi did not are printed apart (not counted as wrong). jedi's own time per
  site is printed as what the graph avoids.

Usage: python benchmarks/bench_graph.py [--sites 300] [--seed 7]
"""

from __future__ import annotations

import argparse
import ast
import random
import statistics
import sys
import sysconfig
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import blake3  # noqa: E402
import pandas as pd  # noqa: E402

from nova_pipeline.core.index import graph  # noqa: E402
from nova_pipeline.core.index.graph.extract import _dotted, _site_text  # noqa: E402
from nova_pipeline.core.ingest.languages import language_of  # noqa: E402

STDLIB = Path(sysconfig.get_paths()["stdlib"])
SMALL = ["json", "email", "http", "urllib", "logging", "html", "wsgiref", "xmlrpc"]
LARGE = [
    *SMALL,
    "importlib",
    "unittest",
    "concurrent",
    "asyncio",
    "multiprocessing",
    "xml",
    "sqlite3",
    "dbm",
    "ctypes",
    "idlelib",
    "tomllib",
    "zoneinfo",
    "lib2to3",
    "pydoc_data",
    "curses",
    "ensurepip",
    "venv",
]


def manifest(packages: list[str]) -> pd.DataFrame:
    rows = []
    for pkg in packages:
        base = STDLIB / pkg
        if not base.is_dir():
            continue
        for f in sorted(base.rglob("*.py")):
            if "__pycache__" in f.parts or "test" in f.relative_to(STDLIB).parts[1:2]:
                continue
            rel = f.relative_to(STDLIB).as_posix()
            rows.append(
                {
                    "path": rel,
                    "blake3": blake3.blake3(f.read_bytes()).hexdigest(),
                    "language": language_of(rel),
                    "status": "added",
                }
            )
    return pd.DataFrame(rows)


def anchor_parse(m: pd.DataFrame) -> float:
    t = time.perf_counter()
    for p in m["path"]:
        try:
            ast.parse((STDLIB / p).read_bytes())
        except SyntaxError:
            pass
    return time.perf_counter() - t


def build_cost(packages: list[str], label: str):
    m = manifest(packages)
    anchor = min(anchor_parse(m) for _ in range(2))
    t = time.perf_counter()
    s, r, n, stats = graph.build_graph(STDLIB, m, None, None)
    cold = time.perf_counter() - t
    first = m["path"].iloc[0]  # as if it changed: the previous tables without its rows
    t = time.perf_counter()
    graph.build_graph(STDLIB, m, None, tuple(x[x["path"] != first] for x in (s, r, n)))
    warm = time.perf_counter() - t
    k = len(m) / 1000
    print(
        f"{label}: {len(m):,} files, {stats.symbols:,} symbols, {stats.relations:,} relations, "
        f"{stats.calls:,} call sites ({stats.resolved_calls / max(stats.calls, 1):.0%} resolved), "
        f"{len(stats.skipped)} skipped"
    )
    print(
        f"  cold build {cold:.2f} s = {cold / k:.2f} s per 1,000 files; anchor read + ast.parse "
        f"{anchor:.2f} s = {anchor / k:.2f} s per 1,000 files; ratio {cold / anchor:.2f}x"
    )
    print(
        f"  one file changed: {warm:.2f} s ({warm / cold:.2f}x the cold build: one file parsed, "
        "the whole tree resolved again)"
    )
    return m, s, r


def site_position(tree: ast.AST, line: int, text: str) -> tuple[int, int] | None:
    """The position of the callee's last name of the call at ``line`` whose callee reads ``text``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and node.func.lineno == line:
            func = node.func
            said = _dotted(func) or _site_text(func)
            if said != text:
                continue
            if isinstance(func, ast.Attribute):
                return func.end_lineno, func.end_col_offset - len(func.attr)
            if isinstance(func, ast.Name):
                return func.lineno, func.col_offset
    return None


def precision_recall(
    symbols: pd.DataFrame, relations: pd.DataFrame, n_sites: int, seed: int, args_missed: int = 10
) -> None:
    import jedi

    calls = relations[relations["kind"] == "CALLS"].reset_index(drop=True)
    rng = random.Random(seed)
    sample = calls.iloc[sorted(rng.sample(range(len(calls)), min(n_sites, len(calls))))]
    where = defaultdict(list)  # a name defined twice (one def per platform) has two places
    for q, p, a, b in zip(symbols["qualname"], symbols["path"], symbols["start_line"], symbols["end_line"]):
        where[q].append((p, a, b))
    project = jedi.Project(str(STDLIB), smart_sys_path=False)
    by_path: dict[str, list] = defaultdict(list)
    for row in sample.itertuples():
        by_path[row.path].append(row)
    counts = defaultdict(int)
    wrong, extra, missed = [], [], []
    jedi_times = []
    for path, rows in by_path.items():
        code = (STDLIB / path).read_text(errors="replace")
        tree = ast.parse(code)
        script = jedi.Script(code, path=str(STDLIB / path), project=project)
        for row in rows:
            pos = site_position(tree, row.line, row.target_text)
            if pos is None:
                counts["no position"] += 1
                continue
            t = time.perf_counter()
            try:
                defs = script.goto(*pos, follow_imports=True)
            except Exception:  # noqa: BLE001 - jedi's own failure: the reference has no answer
                defs = []
            jedi_times.append(time.perf_counter() - t)
            ref = None
            for d in defs:
                mp = d.module_path
                if mp is None or d.line is None or d.type not in ("function", "class"):
                    continue  # a variable (``eq = self.assertEqual``) is no symbol of the graph
                try:
                    rel = Path(mp).resolve().relative_to(STDLIB.resolve()).as_posix()
                except ValueError:
                    continue
                ref = (rel, d.line, d.name)
                break
            in_tree = ref is not None and ref[0] in set(symbols["path"])
            ours = row.target
            counts["sites"] += 1
            if in_tree:
                counts["reference"] += 1
                if not ours:
                    missed.append((path, row.line, row.target_text, f"{ref[0]}:{ref[1]} {ref[2]}"))
            if ours:
                counts["graph resolved"] += 1
                if ref is None:
                    counts["graph only"] += 1
                    extra.append((path, row.line, row.target_text, ours))
                    continue
                ok = ours.split(".")[-1] == ref[2] and any(
                    p == ref[0] and a <= ref[1] <= b for p, a, b in where[ours]
                )
                counts["both"] += 1
                if ok:
                    counts["agree"] += 1
                    if in_tree:
                        counts["found"] += 1
                else:
                    wrong.append((path, row.line, row.target_text, ours, ref))
    precision = counts["agree"] / max(counts["both"], 1)
    recall = counts["found"] / max(counts["reference"], 1)
    print(
        f"precision and recall against jedi {jedi.__version__}: {counts['sites']} sampled call sites "
        f"(seed {seed}; {counts['no position']} without a position)"
    )
    print(
        f"  jedi resolves {counts['reference']} to a definition in the tree; the graph resolves "
        f"{counts['graph resolved']}, of which jedi resolves {counts['both']} and agrees on {counts['agree']}"
    )
    print(f"  precision {precision:.3f} (target >= 0.95), recall {recall:.3f} (target >= 0.80)")
    print(
        f"  jedi: {statistics.median(jedi_times) * 1000:.0f} ms per site at p50, "
        f"{sum(jedi_times):.1f} s for {len(jedi_times)} sites (script parsing excluded)"
    )
    for w in wrong[:10]:
        print("  disagree:", w)
    for e in extra[:5]:
        print("  graph only:", e)
    for e in missed[:args_missed]:
        print("  missed:", e)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sites", type=int, default=300)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--show-missed", type=int, default=10, help="print this many sites only jedi resolved")
    args = ap.parse_args()
    build_cost(SMALL, "small tree")
    m, s, r = build_cost(LARGE, "large tree")
    precision_recall(s, r, args.sites, args.seed, args.show_missed)


if __name__ == "__main__":
    main()
