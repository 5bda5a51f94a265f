"""How the pipeline's cost grows with the tree: 1,000, 10,000 and 100,000 files, stage by stage (issue 25).

Trees are made from the running interpreter's standard library (its ``.py`` files, tests left out). Copy
``c`` of a file gets a unique header line and every name the file defines (``def``/``class``) renamed with
a ``_c<c>`` suffix, so that file hashes, chunks and patterns are real work and not deduplication hits. A tree
is kept under ``--work`` and reused by later runs.

For each tier, with the free embedder (blake3 of each text as its vector: everything but the model), on one
Dagster instance, each run through ``dg.execute_job`` as ``nova rebuild`` runs it (not ``dg.materialize``,
whose output capture keeps every step's output until the run ends), with the run's executor of
``--executor``: ``in_process`` (the default of ``nova rebuild``: every step in this process) or
``multiprocess`` (a process per step, one at a time: each step's own peak, over this process's):

* the ``rebuild`` job from nothing: every step's wall time (``STEP_START`` to ``STEP_SUCCESS`` in the event
  log), peak memory of this process and its children during the step (psutil: the sum of RSS sampled every
  50 ms, and the sum of PSS sampled every second, which counts pages a forked worker shares once) and its
  throughput (files/s, MB/s of source, chunks/s);
* the unchanged rerun, and the rerun after a one-file edit: wall time of the whole job;
* the anchor, measured in the same run: raw blake3 of every file of the tree (read and hash, one thread).

Then the growth exponent of every stage between the two largest tiers: ``log(t_big / t_small) /
log(files_big / files_small)`` (1.0 is linear). Targets: every exponent <= 1.15; peak RSS <= 4 GB at 100K
files; the unchanged rerun at 100K <= 15 s and <= 3x the one at 10K; a one-file edit at 100K <= 20 s.

Usage: python benchmarks/bench_scale.py [--tiers 1k,10k] [--work DIR] [--executor multiprocess]
(100k: ``--tiers 1k,10k,100k``; the 100- and 300-file tiers take seconds, and the test suite runs the
100-file one so that this benchmark cannot break unnoticed)
"""

from __future__ import annotations

import argparse
import keyword
import math
import os
import re
import shutil
import sys
import sysconfig
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

STDLIB = Path(sysconfig.get_paths()["stdlib"])
TIERS = {"100": 100, "300": 300, "1k": 1_000, "3k": 3_000, "10k": 10_000, "30k": 30_000, "100k": 100_000}
SKIP_DIRS = {"test", "tests", "idle_test", "__pycache__", "site-packages", "lib2to3"}
DEFINED = re.compile(r"^\s*(?:async\s+)?(?:def|class)\s+([A-Za-z_]\w*)", re.M)


def stdlib_sources() -> list[Path]:
    """The stdlib's ``.py`` files (tests, ``site-packages`` and lib2to3's Python 2 fixtures left out), in a
    fixed order."""
    out = []
    for p in sorted(STDLIB.rglob("*.py")):
        rel = p.relative_to(STDLIB)
        if SKIP_DIRS & set(rel.parts[:-1]) or p.stat().st_size > 400_000:
            continue
        out.append(p)
    return out


def variant(text: str, copy: int, rel: str) -> str:
    """Copy ``copy`` of a file: a unique header, and every name it defines renamed (copy 0 is the file)."""
    if copy == 0:
        return text
    # keywords too: DEFINED also matches prose in docstrings ("class or type"), and a renamed keyword breaks
    # the file (three stdlib files did not parse, and the code graph skipped every copy of them)
    keep = {"__init__", "__repr__", "__eq__", "__hash__", *keyword.kwlist, *keyword.softkwlist}
    names = sorted(set(DEFINED.findall(text)) - keep, key=len)
    if names:
        rx = re.compile(r"\b(" + "|".join(map(re.escape, names[::-1])) + r")\b")
        text = rx.sub(lambda m: f"{m.group(1)}_c{copy}", text)
    return f"# copy {copy} of {rel}\n{text}"


def make_tree(dst: Path, files: int) -> Path:
    """A tree of ``files`` files under ``dst`` (kept and reused when complete: ``.complete`` is written
    last)."""
    tree = dst / f"tree-{files}"
    if (tree / ".complete").exists():
        return tree
    shutil.rmtree(tree, ignore_errors=True)
    sources = stdlib_sources()
    for i in range(files):
        src = sources[i % len(sources)]
        copy = i // len(sources)
        rel = src.relative_to(STDLIB).as_posix()
        out = tree / f"c{copy:03d}" / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(
            variant(src.read_text(encoding="utf-8", errors="replace"), copy, rel), encoding="utf-8"
        )
    (tree / ".complete").write_text(str(files))
    return tree


def tree_files(tree: Path) -> list[Path]:
    return [p for p in tree.rglob("*.py") if p.is_file()]


def blake3_anchor(files: list[Path]) -> float:
    """Seconds to read and blake3 every file (one thread): the floor of any scan."""
    import blake3

    t = time.perf_counter()
    for f in files:
        blake3.blake3(f.read_bytes()).digest()
    return time.perf_counter() - t


class PeakRss:
    """Samples the memory of this process and its children: the sum of their RSS every ``every`` seconds,
    ``samples`` as ``(time, bytes)``, and the sum of their PSS every ``pss_every`` seconds, ``pss_samples``.

    A forked child (the scan's hashing workers) shares its parent's pages until either writes them, and RSS
    counts a shared page in every process that maps it, so a sum of RSS over a process tree overstates what
    the tree uses. PSS (proportional set size, Linux ``/proc/<pid>/smaps_rollup``) divides each shared page
    among its sharers: its sum is the tree's real footprint. Reading it costs about 10 ms per GB mapped, so it
    is sampled less often: every ``pss_every`` seconds, or 20 times the last read's duration if longer."""

    def __init__(self, every: float = 0.05, pss_every: float = 1.0):
        import psutil

        self.proc, self.every, self.pss_every = psutil.Process(), every, pss_every
        self.samples: list[tuple[float, int]] = []
        self.pss_samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _sum(self, measure) -> int:
        import psutil

        total = 0
        try:
            total = measure(self.proc)
            for c in self.proc.children(recursive=True):
                try:
                    total += measure(c)
                except psutil.Error:
                    pass
        except psutil.Error:
            pass
        return total

    def _run(self) -> None:
        next_pss = 0.0
        while not self._stop.is_set():
            now = time.time()
            self.samples.append((now, self._sum(lambda p: p.memory_info().rss)))
            if now >= next_pss:
                took = time.perf_counter()
                try:
                    self.pss_samples.append((now, self._sum(lambda p: p.memory_full_info().pss)))
                except AttributeError:  # no PSS on this platform
                    pass
                # at most 5 % of a core: at 100,000 files (18 GB mapped) a read every second took about 14 %
                next_pss = now + max(self.pss_every, 20 * (time.perf_counter() - took))
            self._stop.wait(self.every)

    def peak(self, start: float, end: float, pss: bool = False) -> int:
        """The largest sample between ``start`` and ``end``: RSS samples within one sampling interval of the
        window; PSS samples strictly inside it (a second's slack would take a short stage's neighbour's
        peak), 0 when none fell inside (a stage shorter than ``pss_every``)."""
        samples, slack = (self.pss_samples, 0.0) if pss else (self.samples, self.every)
        return max((b for t, b in samples if start - slack <= t <= end + slack), default=0)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def step_times(instance, run_id: str) -> dict[str, tuple[float, float]]:
    """Step key → (start, end) wall-clock times, from the run's event log."""
    import dagster as dg

    starts, out = {}, {}
    for rec in instance.all_logs(run_id):
        ev = rec.dagster_event
        if ev is None or not ev.step_key:
            continue
        if ev.event_type == dg.DagsterEventType.STEP_START:
            starts[ev.step_key] = rec.timestamp
        elif ev.event_type == dg.DagsterEventType.STEP_SUCCESS:
            out[ev.step_key] = (starts.get(ev.step_key, rec.timestamp), rec.timestamp)
    return out


STAGES = {  # report name → step keys (a graph asset has several ops)
    "scan": ["source_files"],
    "patterns": ["frequent_patterns"],
    "dictionary": ["compression_dictionary"],
    "compression": ["compressed_store"],
    "chunks": ["source_chunks"],
    "lexical": ["lexical_index"],
    "reconcile": ["vector_index.plan_vector_slices", "vector_index.reconcile_vector_slice", "vector_index."],
    "code graph": ["code_graph"],
    "golden copy": ["golden_copy"],
}


def stage_windows(times: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
    out = {}
    for stage, keys in STAGES.items():
        spans = [v for k, v in times.items() if any(k == p or k.startswith(p) for p in keys)]
        if spans:
            out[stage] = (min(s for s, _ in spans), max(e for _, e in spans))
    return out


def scale_job(tree: str, home: str):
    """The code location's ``rebuild`` job, its executor and assets as they are, on the resources of the tests
    for ``tree`` and ``home``: the free embedder, everything else real. ``rebuild_run`` reconstructs it by
    name, as ``nova rebuild`` does its own job."""
    from nova_pipeline.definitions import definitions_on
    from nova_pipeline.defs.resources import default_resources
    from nova_pipeline_tests.conftest import resources_for

    defs = definitions_on({**default_resources(), **resources_for(tree, home)})
    return defs.resolve_job_def("rebuild")


WITHOUT_VECTORS = ("vector_index", "golden_copy")  # --without-vectors: Chroma's stages, and what needs them


def rebuild_run(
    tree: Path, home: Path, instance, executor: str = "in_process", without_vectors: bool = False
):
    """One run of :func:`scale_job` through ``dg.execute_job``, the path of ``nova rebuild``. Not
    ``dg.materialize``: that executes in process with output capture, which keeps every step's output (the
    manifest, the chunk table...) in memory until the run ends, so its peak memory is the harness's, not the
    product's. ``without_vectors``: the job's assets but :data:`WITHOUT_VECTORS` (an asset selection of the
    same job).

    Raises:
        RuntimeError: the run failed.
    """
    import dagster as dg

    job = dg.build_reconstructable_job("bench_scale", "scale_job", (str(tree), str(home)))
    mode = {"multiprocess": {"max_concurrent": 1}} if executor == "multiprocess" else {executor: {}}
    run_config = {
        "execution": {"config": mode},
        "loggers": {"console": {"config": {"log_level": "WARNING"}}},
    }
    selection = None
    if without_vectors:
        keys = scale_job(str(tree), str(home)).asset_layer.executable_asset_keys
        selection = sorted((k for k in keys if k.to_user_string() not in WITHOUT_VECTORS), key=str)
    result = dg.execute_job(job, instance=instance, run_config=run_config, asset_selection=selection)
    if not result.success:
        raise RuntimeError(
            f"run {result.run_id} failed: {[e.message for e in result.all_events if e.is_failure]}"
        )
    return result


def run_tier(
    name: str, files: int, work: Path, executor: str, keep: bool = False, without_vectors: bool = False
) -> dict:
    """One tier: its tree under ``work``, a cold rebuild, the unchanged rerun and a one-file edit, with stage
    windows and peak RSS. ``keep``: leave the tier's ``NOVA_HOME`` (``work/home-N``) and Dagster instance
    (``work/dagster-N``) in place, edited, for profiling a later run on them (the edited file is put back
    either way). ``without_vectors``: every run leaves out :data:`WITHOUT_VECTORS`."""
    import dagster as dg

    from nova_pipeline.core.keys import SOURCE_CHUNKS
    from nova_pipeline.core.tables import read_table

    t = time.perf_counter()
    tree = make_tree(work, files)
    made = time.perf_counter() - t
    paths = tree_files(tree)
    mb = sum(p.stat().st_size for p in paths) / 2**20
    anchor = blake3_anchor(paths)
    print(
        f"\n== {name}: {len(paths):,} files, {mb:,.1f} MB (tree ready in {made:.1f} s); anchor: read + "
        f"blake3 of every file {anchor:.2f} s ({mb / anchor:,.0f} MB/s)",
        flush=True,
    )
    home = work / f"home-{files}"
    shutil.rmtree(home, ignore_errors=True)
    if keep:
        dagster_home = work / f"dagster-{files}"
        shutil.rmtree(dagster_home, ignore_errors=True)
        dagster_home.mkdir()
    else:
        dagster_home = Path(tempfile.mkdtemp(prefix="bench_scale_dh_"))
    rss = PeakRss()
    try:
        with dg.instance_for_test(temp_dir=str(dagster_home)) as instance:
            t = time.perf_counter()
            cold = rebuild_run(tree, home, instance, executor, without_vectors)
            cold_s = time.perf_counter() - t
            windows = stage_windows(step_times(instance, cold.run_id))
            chunks = len(read_table(home, SOURCE_CHUNKS, columns=["chunk_id"]))
            t = time.perf_counter()
            again = rebuild_run(tree, home, instance, executor, without_vectors)
            unchanged_s = time.perf_counter() - t
            unchanged_w = stage_windows(step_times(instance, again.run_id))
            target = paths[len(paths) // 2]
            target.write_text(target.read_text() + "\n\ndef bench_scale_edit():\n    return 1\n")
            t = time.perf_counter()
            edited = rebuild_run(tree, home, instance, executor, without_vectors)
            edit_s = time.perf_counter() - t
            edit_w = stage_windows(step_times(instance, edited.run_id))
    finally:
        rss.close()
        if not keep:
            shutil.rmtree(dagster_home, ignore_errors=True)
    peak_all = max((b for _, b in rss.samples), default=0)
    pss_all = max((b for _, b in rss.pss_samples), default=0)
    stages = {}
    print(
        f"  {'stage':<12} {'wall s':>8} {'peak RSS MB':>12} {'PSS MB':>7} {'files/s':>10} {'MB/s':>8}"
        f" {'chunks/s':>10} {'unchanged s':>12} {'edit s':>8}"
    )

    def span(w, stage):
        return (w[stage][1] - w[stage][0]) if stage in w else 0.0

    for stage, (s, e) in windows.items():
        wall = max(e - s, 1e-6)
        peak, pss = rss.peak(s, e), rss.peak(s, e, pss=True)
        stages[stage] = {"wall": wall, "peak": peak, "pss": pss}
        print(
            f"  {stage:<12} {wall:8.2f} {peak / 2**20:12.0f} {f'{pss / 2**20:.0f}' if pss else '-':>7} "
            f"{len(paths) / wall:10,.0f} "
            f"{mb / wall:8.1f} {chunks / wall:10,.0f} {span(unchanged_w, stage):12.2f} "
            f"{span(edit_w, stage):8.2f}"
        )
    print(
        f"  cold rebuild {cold_s:.1f} s ({chunks:,} chunks); unchanged rerun {unchanged_s:.2f} s; one-file "
        f"edit {edit_s:.2f} s; peak RSS {peak_all / 2**30:.2f} GB (summed over processes), peak PSS "
        f"{pss_all / 2**30:.2f} GB (shared pages counted once); scan / anchor "
        f"{stages.get('scan', {}).get('wall', 0) / anchor:.1f}x",
        flush=True,
    )
    if not keep:
        shutil.rmtree(home, ignore_errors=True)
    # leave the tree as it was (the edited file back), so a later run reuses it
    target.write_text(target.read_text().rsplit("\n\ndef bench_scale_edit():", 1)[0])
    return {
        "files": len(paths),
        "mb": mb,
        "chunks": chunks,
        "stages": stages,
        "cold": cold_s,
        "unchanged": unchanged_s,
        "edit": edit_s,
        "peak": peak_all,
        "pss": pss_all,
        "anchor": anchor,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiers", default="1k,10k", help="comma-separated: " + ", ".join(TIERS))
    parser.add_argument("--work", type=Path, default=None, help="where trees are kept (default: a temp dir)")
    parser.add_argument(
        "--executor",
        choices=("in_process", "multiprocess"),
        default="in_process",
        help="the runs' executor: one process (nova rebuild's default), or a process per step, one at a time",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep each tier's NOVA_HOME and Dagster instance under --work (work/home-N, work/dagster-N)",
    )
    parser.add_argument(
        "--without-vectors",
        action="store_true",
        help="leave out vector_index and golden_copy: every other stage, at sizes where Chroma's HNSW insert "
        "(reconcile's bound) does not fit the time there is",
    )
    args = parser.parse_args()
    if args.keep and args.work is None:
        parser.error("--keep needs --work: the homes are kept there")
    os.environ["PYTHONPATH"] = os.pathsep.join(  # a step process reconstructs scale_job from this module
        p for p in (str(Path(__file__).resolve().parent), os.environ.get("PYTHONPATH", "")) if p
    )
    tiers = [t.strip() for t in args.tiers.split(",") if t.strip()]
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_scale_"))
    work.mkdir(parents=True, exist_ok=True)
    print(
        f"{os.cpu_count()} cores; executor {args.executor}; "
        f"{'without ' + ' and '.join(WITHOUT_VECTORS) + '; ' if args.without_vectors else ''}stdlib {STDLIB} "
        f"({len(stdlib_sources()):,} source files); work {work}"
    )
    results = {t: run_tier(t, TIERS[t], work, args.executor, args.keep, args.without_vectors) for t in tiers}
    if len(results) >= 2:
        a, b = (results[t] for t in sorted(results, key=lambda t: TIERS[t])[-2:])
        span = math.log(b["files"] / a["files"])
        print(f"\ngrowth exponents between {a['files']:,} and {b['files']:,} files (target <= 1.15):")
        for stage in b["stages"]:
            if stage in a["stages"]:
                ratio = b["stages"][stage]["wall"] / a["stages"][stage]["wall"]
                print(f"  {stage:<12} {math.log(ratio) / span:5.2f}  ({ratio:.1f}x the time)")
        for what in ("cold", "unchanged", "edit"):
            ratio = b[what] / a[what]
            print(f"  {what + ' run':<12} {math.log(ratio) / span:5.2f}  ({ratio:.1f}x the time)")
        print(f"  chunks      {math.log(b['chunks'] / a['chunks']) / span:5.2f}")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
