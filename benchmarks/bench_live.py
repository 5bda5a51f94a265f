"""Live updates: how fast a save is searchable with ``nova watch``, what a burst costs against raw encode,
the same edit at 50,000 chunks, the daemon's sensor path, and what an idle watcher costs.

The tree: standard-library packages (real code nobody here wrote, at least 100 files), built once with the
real all-MiniLM-L6-v2 through the rebuild graph. Then the real commands, each in its own process:
``nova serve`` (answering ``/search``) and ``nova watch --json`` (whose lines carry its own timestamps), with
``DAGSTER_HOME`` set as in real use (each update is reported to the instance).

* **Save to searchable.** Each edit renames one function of ``json/decoder.py`` to a new unique name (an
  edit of one function, adding a unique identifier), with a plain write or an editor's rename-over save
  (alternately). Measured from the write: to the commit (``searchable_at`` in ``nova watch``'s line: the
  lock released, vectors and lexical delta written) and to the first ``/search?q=NAME&k=1`` of ``nova
  serve`` whose top hit is the renamed function. Targets on 2 cores: commit p50 <= 0.10 s and p95 <= 0.20 s,
  through ``nova serve`` p50 <= 0.25 s (CocoIndex 1.0.26 live mode, same machine: 0.10 s / 0.16 s).
* **Burst.** 200 files copied in at once, then a new folder of 50: the number of updates, the time to
  searchable, and chunks/s against raw ``SentenceTransformer.encode`` of the same new texts (the anchor,
  measured in this process right after each burst; target >= 0.95x). Then the collection's ids against a
  clean build's.
* **At scale.** The same edit on an index of about ``--scale-chunks`` chunks (built with random vectors: a
  free embedder, since only the edit's embedding matters), watched with the real model: commit and
  ``nova serve`` times. Target p50 <= 0.25 s.
* **The sensor path.** With ``nova watch`` stopped: ``dagster-daemon`` with the ``source_tree_changed``
  sensor on, the same edit, the time until ``nova serve`` finds it; its floor is the poll interval, plus a
  run's process start, plus the model load (printed beside it). Target <= 15 s.
* **One process.** ``nova serve --watch`` (the watcher and the service sharing one Chroma client): the same
  edits, to the first ``/search`` that finds them.
* **Idle cost.** CPU of ``nova watch`` over ``--idle`` seconds with no change, starting 65 s after the
  last edit, when its quiet-time work is done (target <= 0.1 % of one core), and its RSS (target <= 1.1 GB).

Usage: python benchmarks/bench_live.py [--work DIR] [--edits 20] [--no-scale] [--no-sensor] [--idle 60]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

import httpx  # noqa: E402
import psutil  # noqa: E402
from anchors import raw_encode_rate  # noqa: E402 - benchmarks/anchors.py

from nova_pipeline_tests.conftest import free_port, start_process, stop_group, wait_until  # noqa: E402

STDLIB = Path(sysconfig.get_paths()["stdlib"])
PACKAGES = [
    "json",
    "email",
    "http",
    "urllib",
    "logging",
    "html",
    "wsgiref",
    "xmlrpc",
    "importlib",
    "unittest",
]
PACKAGES += ["concurrent", "sqlite3", "dbm"]
BURST_FROM = ["asyncio", "multiprocessing", "xml", "lib2to3", "distutils", "ctypes", "idlelib", "tomllib"]
TARGET = "json/decoder.py"
FUNC = re.compile(r"^def probe_\w+\(", re.M)


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def summary(label: str, seconds: list[float]) -> str:
    ms = [s * 1000 for s in seconds]
    return f"{label:<34} p50 {statistics.median(ms):7.1f} ms  p95 {pct(ms, 0.95):7.1f} ms  (n={len(ms)})"


class Watch:
    """``nova watch --json`` in its own process; its lines, timestamped, in a list."""

    def __init__(self, src: Path, env: dict, log: Path):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nova_pipeline.cli", "watch", "--source", str(src), "--json"],
            env={**{k: v for k, v in os.environ.items() if not k.startswith(("NOVA_", "DAGSTER_"))}, **env},
            stdout=subprocess.PIPE,
            stderr=open(log, "a"),
            text=True,
            start_new_session=True,
        )
        self.lines: list[dict] = []
        self._cv = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            with self._cv:
                self.lines.append(rec)
                self._cv.notify_all()

    def wait_for(self, pred, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        with self._cv:
            while True:
                for rec in self.lines:
                    if pred(rec):
                        return rec
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("nova watch did not report the expected update")
                self._cv.wait(left)

    def stop(self) -> None:
        stop_group(self.proc)


def serve(home: Path, work: Path, env: dict):
    port = free_port()
    proc = start_process(
        [sys.executable, "-m", "nova_pipeline.cli", "serve", "--port", str(port)],
        {**env, "NOVA_HOME": str(home), "NOVA_LOG_LEVEL": "WARNING"},
        work / "serve.log",
    )
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: _up(base), 180, what="nova serve answering")
    return proc, base


def _up(base: str) -> bool:
    try:
        return httpx.get(f"{base}/healthz", timeout=10).status_code == 200
    except httpx.HTTPError:
        return False


def found(session: httpx.Client, name: str) -> bool:
    r = session.get("/search", params={"q": name, "k": 1})
    hits = r.json().get("hits", []) if r.status_code == 200 else []
    return bool(hits) and name in (hits[0]["symbol"] or "")


def seconds_to_found(session: httpx.Client, name: str, t0: float, timeout: float, poll_s: float) -> float:
    """Seconds from ``t0`` (a save's ``time.time()``) to the first ``/search`` with ``name`` at rank 1,
    polling every ``poll_s`` (NaN after ``timeout``). Every search also costs the 2 cores a query
    embedding, as a client's would."""
    while time.time() - t0 < timeout:
        if found(session, name):
            return time.time() - t0
        time.sleep(poll_s)
    return float("nan")


def rename_function(src: Path, name: str, rename_over: bool) -> float:
    """Give the probed function of ``json/decoder.py`` the name ``name``; returns the write's time."""
    path = src / TARGET
    text = path.read_text()
    new = FUNC.sub(f"def {name}(", text, count=1)
    if new == text:
        raise RuntimeError("no probe function to rename in json/decoder.py")
    if rename_over:  # an editor's save: a new file renamed over the old
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(new)
        t = time.time()
        os.replace(tmp, path)
    else:
        t = time.time()
        path.write_text(new)
    return t


def edits(src: Path, watch: Watch, base: str | None, n: int, tag: str) -> tuple[list, list, list, list]:
    """``n`` edits; returns (commit seconds, serve seconds, modes, nova watch's report) per edit."""
    commits, served, modes, recs = [], [], [], []
    session = httpx.Client(base_url=base, timeout=30) if base else None
    for i in range(n):
        name = f"probe_{tag}_{uuid.uuid4().hex[:8]}_{i}"
        rename_over = i % 2 == 1
        t0 = rename_function(src, name, rename_over)
        serve_s = seconds_to_found(session, name, t0, 30, 0.02) if session is not None else float("nan")
        rec = watch.wait_for(
            lambda r, t0=t0: (
                r.get("kind") == "update" and r.get("searchable_at", 0) >= t0 and TARGET in r.get("paths", [])
            ),
            30,
        )
        commits.append(rec["searchable_at"] - t0)
        served.append(serve_s)
        modes.append("rename-over" if rename_over else "write")
        recs.append({**rec, "saved_at": t0})
        time.sleep(0.3)  # one save at a time, as a person saves
    return commits, served, modes, recs


def phase_breakdown(recs: list[dict]) -> str:
    """Median of each part of save-to-searchable, from nova watch's JSON lines: the wait for the batch
    (inotify, the observer's hand-offs, the settle: ``to_searchable_s - update_s``, as ``first_event_at`` is
    the save's own mtime), then the update's phases (plan: scan, chunk, embed; lock; lexical; write)."""
    parts = {"batch wait": [r["to_searchable_s"] - r["update_s"] for r in recs]}
    for key in ("plan_s", "lock_s", "lexical_s", "write_s"):
        parts[key[:-2]] = [r.get(key, 0.0) for r in recs]
    parts["to searchable"] = [r["searchable_at"] - r["saved_at"] for r in recs]
    return ", ".join(f"{k} {statistics.median(v) * 1000:.0f} ms" for k, v in parts.items())


def prepare_probe(src: Path) -> None:
    """Make ``_decode_uXXXX`` the probed function (py_scanstring calls it; renaming breaks nothing a search
    needs)."""
    path = src / TARGET
    path.write_text(path.read_text().replace("def _decode_uXXXX(", "def probe_start("))


def build_real(src: Path, home: Path) -> int:
    import dagster as dg

    from nova_pipeline.core.keys import SOURCE_CHUNKS
    from nova_pipeline.core.tables import read_table
    from nova_pipeline.defs.resources import EmbedderResource
    from nova_pipeline_tests.conftest import materialize_rebuild

    with dg.instance_for_test() as instance:
        assert materialize_rebuild(src, home, instance, embedder=EmbedderResource()).success
    return len(read_table(home, SOURCE_CHUNKS))


class FreeEmbedder:
    """Random unit vectors under the real model's fingerprint: builds a large index in a minute."""

    dimension, max_seq_length = 384, 256

    def __init__(self, fingerprint: str):
        import numpy as np

        self.fingerprint = fingerprint
        self.rng = np.random.default_rng(0)

    def embed(self, texts):
        import numpy as np

        v = self.rng.standard_normal((len(texts), self.dimension)).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)


def build_free(src: Path, home: Path) -> int:
    """Index ``src`` into ``home`` as the rebuild's assets would, with a free embedder; the chunk count."""
    from nova_pipeline.core.index import lexical
    from nova_pipeline.core.index.chunking import chunk_manifest
    from nova_pipeline.core.index.embedding import Tokenizer, bundled_fingerprint
    from nova_pipeline.core.index.embedding_cache import EmbeddingCache
    from nova_pipeline.core.index.reconcile import reconcile
    from nova_pipeline.core.index.vector_store import fresh_client, get_collection
    from nova_pipeline.core.ingest.manifest import scan
    from nova_pipeline.core.ingest.walk import ScanOptions
    from nova_pipeline.core.tables import write_table

    result = scan(ScanOptions(src))
    write_table(home, "source_files", result.manifest)
    tok = Tokenizer()
    chunks, _ = chunk_manifest(src, result.manifest, None, tok.count, tok.max_seq_length)
    write_table(home, "source_chunks", chunks)
    emb = FreeEmbedder(bundled_fingerprint())
    cache = EmbeddingCache(home, emb.fingerprint)
    with fresh_client(home) as client:
        reconcile(get_collection(client, emb.fingerprint), chunks, emb, cache)
    cache.close()
    lexical.update(home, chunks)
    return len(chunks)


def chunk_texts(root: Path, rel_dir: str) -> list[str]:
    from nova_pipeline.core.index.chunking import chunk_manifest
    from nova_pipeline.core.index.embedding import Tokenizer
    from nova_pipeline.core.ingest.manifest import scan
    from nova_pipeline.core.ingest.walk import ScanOptions

    tok = Tokenizer()
    m = scan(ScanOptions(root)).manifest
    m = m[m["path"].str.startswith(rel_dir)]
    chunks, _ = chunk_manifest(root, m, None, tok.count, tok.max_seq_length)
    return chunks["text"].tolist()


def burst(src: Path, watch: Watch, folder: str, files: list[Path]) -> dict:
    dest = src / folder
    dest.mkdir(parents=True)
    mark = len(watch.lines)
    t0 = time.time()
    for i, f in enumerate(files):
        shutil.copyfile(f, dest / f"{i:03d}_{f.name}")
    want = len(files)
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        recs = [r for r in watch.lines[mark:] if r.get("kind") in ("update", "catch-up")]
        if sum(r.get("files_added", 0) for r in recs) >= want:
            break
        time.sleep(0.05)
    recs = [r for r in watch.lines[mark:] if r.get("kind") in ("update", "catch-up")]
    last = max(r["searchable_at"] for r in recs)
    embedded = sum(r.get("embedded", 0) for r in recs)
    return {
        "files": want,
        "updates": len(recs),
        "to_searchable_s": last - t0,
        "embedded": embedded,
        "chunks_added": sum(r.get("chunks_added", 0) for r in recs),
        "chunks_per_s": embedded / (last - t0),
        # where the time went: from the first copy to the update's start, then the update's phases
        "phases": {
            "to the update": min(r["searchable_at"] - r["update_s"] for r in recs) - t0,
            **{
                k[:-2]: sum(r.get(k, 0.0) for r in recs) for k in ("plan_s", "lock_s", "lexical_s", "write_s")
            },
        },
    }


def exact(src: Path, home: Path) -> tuple[bool, int, int]:
    from nova_pipeline.core.index.chunking import chunk_manifest
    from nova_pipeline.core.index.embedding import Tokenizer, bundled_fingerprint
    from nova_pipeline.core.index.vector_store import existing_ids, fresh_client, get_collection
    from nova_pipeline.core.ingest.manifest import scan
    from nova_pipeline.core.ingest.walk import ScanOptions

    tok = Tokenizer()
    chunks, _ = chunk_manifest(src, scan(ScanOptions(src)).manifest, None, tok.count, tok.max_seq_length)
    with fresh_client(home) as client:
        have = existing_ids(get_collection(client, bundled_fingerprint()))
    want = set(chunks["chunk_id"])
    return have == want, len(have), len(want)


def idle_cost(pid: int, seconds: float) -> tuple[float, float]:
    p = psutil.Process(pid)
    kids = lambda: [p, *p.children(recursive=True)]  # noqa: E731
    before = sum(sum(x.cpu_times()[:2]) for x in kids())
    time.sleep(seconds)
    after = sum(sum(x.cpu_times()[:2]) for x in kids())
    rss = sum(x.memory_info().rss for x in kids())
    return 100 * (after - before) / seconds, rss / 2**30


def sensor_path(src: Path, home: Path, dhome: Path, work: Path, env: dict, base: str, reps: int) -> list:
    """The same edit with nova watch stopped and the daemon's source_tree_changed sensor on."""
    shutil.copy(REPO / "workspace.yaml", dhome / "workspace.yaml")
    denv = {**env, "NOVA_SOURCE_DIR": str(src), "NOVA_HOME": str(home), "DAGSTER_HOME": str(dhome)}
    subprocess.run(
        [
            str(Path(sys.executable).with_name("dagster")),
            "sensor",
            "start",
            "source_tree_changed",
            "-w",
            str(dhome / "workspace.yaml"),
        ],
        env={**os.environ, **denv},
        cwd=REPO,
        capture_output=True,
        check=False,
    )
    daemon = start_process(
        [str(Path(sys.executable).with_name("dagster-daemon")), "run", "-w", str(dhome / "workspace.yaml")],
        denv,
        work / "daemon.log",
        cwd=REPO,
    )
    out = []
    try:
        time.sleep(15)  # the daemon's first ticks (the sensor's first request: the state as it is)
        session = httpx.Client(base_url=base, timeout=30)
        for i in range(reps):
            name = f"probe_sensor_{uuid.uuid4().hex[:8]}_{i}"
            out.append(seconds_to_found(session, name, rename_function(src, name, False), 180, 0.1))
    finally:
        stop_group(daemon)
    return out


QUIET_WORK_S = 4.0  # a burst's code graph update in nova watch: on the first quiet second, about 1-2 s


def bursts(src: Path, home: Path, watch: Watch) -> None:
    pool = [
        p
        for pkg in BURST_FROM
        for p in sorted((STDLIB / pkg).rglob("*.py"))
        if not any(part.startswith(("test", "idle_test")) for part in p.relative_to(STDLIB).parts)
    ]
    run = uuid.uuid4().hex[:6]  # in the paths, so in every chunk's text: nothing comes from the cache
    # each anchor right after its burst, so that both see the machine in the same state (a later anchor
    # measured 0.73x-1.24x of the same update on one afternoon), once the watcher's code graph update (on
    # its first quiet second) is done; its lexical compaction (60 s of quiet, about 1 s) overlaps the anchor
    b200 = burst(src, watch, f"burst200_{run}", pool[:200])
    time.sleep(QUIET_WORK_S)
    rate200 = raw_encode_rate(chunk_texts(src, f"burst200_{run}/"), normalize=False)
    b50 = burst(src, watch, f"burst50_{run}/new_package", pool[200:250])
    time.sleep(QUIET_WORK_S)
    rate50 = raw_encode_rate(chunk_texts(src, f"burst50_{run}/"), normalize=False)
    print("\nbursts (target: chunks/s >= 0.95x raw encode of the same texts):")
    for label, b, rate in (("200 files at once", b200, rate200), ("a new folder of 50", b50, rate50)):
        print(
            f"  {label:<20} {b['updates']} updates, {b['chunks_added']:,} chunks ({b['embedded']:,} "
            f"embedded), searchable in {b['to_searchable_s']:.1f} s: {b['chunks_per_s']:.1f} chunks/s; "
            f"raw encode {rate:.1f} chunks/s: {b['chunks_per_s'] / rate:.2f}x"
        )
        print("    " + ", ".join(f"{k} {v:.1f} s" for k, v in b["phases"].items()))
    ok, have, want = exact(src, home)
    print(f"  final collection: {have:,} ids, a clean build has {want:,}: {'equal' if ok else 'DIFFERENT'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", help="keep the indexes here (the embedding cache makes a second run quick)")
    ap.add_argument("--edits", type=int, default=20)
    ap.add_argument("--idle", type=float, default=60.0)
    ap.add_argument("--scale-chunks", type=int, default=50_000)
    ap.add_argument("--no-scale", action="store_true")
    ap.add_argument("--no-sensor", action="store_true")
    ap.add_argument("--sensor-reps", type=int, default=3)
    ap.add_argument("--no-burst", action="store_true")
    args = ap.parse_args()
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench_live_"))
    src, home, dhome = work / "src", work / "home", work / "dagster_home"
    cache = work / "embedding_cache"  # kept between runs: the build then re-embeds nothing
    if (home / "cache").exists() and not cache.exists():
        shutil.move(str(home / "cache"), str(cache))
    for d in (src, home, dhome):
        shutil.rmtree(d, ignore_errors=True)
    if cache.exists():
        home.mkdir(parents=True)
        shutil.copytree(cache, home / "cache")
    for pkg in PACKAGES:
        shutil.copytree(
            STDLIB / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__", "test", "tests")
        )
    prepare_probe(src)
    dhome.mkdir(parents=True)
    shutil.copy(REPO / "dagster.yaml", dhome / "dagster.yaml")
    t = time.perf_counter()
    chunks = build_real(src, home)
    files = len(list(src.rglob("*.py")))
    print(
        f"tree: {files} stdlib files ({', '.join(PACKAGES)}), {chunks:,} chunks, built in "
        f"{time.perf_counter() - t:.0f} s with the real model; {os.cpu_count()} cores"
    )
    env = {
        "HF_HUB_OFFLINE": "1",
        "ANONYMIZED_TELEMETRY": "False",
        "NOVA_HOME": str(home),
        "DAGSTER_HOME": str(dhome),
    }
    serve_proc, base = serve(home, work, env)
    watch = Watch(src, env, work / "watch.log")
    try:
        watch.wait_for(lambda r: r.get("kind") == "catch-up", 300)
        edits(src, watch, base, 2, "warm")  # the model loads on the first text to embed
        alone, _, _, alone_recs = edits(src, watch, None, args.edits, "alone")  # nobody searching meanwhile
        commits, served, modes, recs = edits(src, watch, base, args.edits, "edit")
        print(
            "\nsave to searchable (one function renamed; targets: commit p50 <= 100 ms, p95 <= 200 ms; "
            "through nova serve p50 <= 250 ms):"
        )
        print("  " + summary("commit, no search running", alone))
        print("  " + summary("commit, /search polled meanwhile", commits))
        print("  " + summary("first /search with it at rank 1", served))
        print(f"  where the time goes (medians), no search running: {phase_breakdown(alone_recs)}")
        print(f"  where the time goes (medians), /search polled:    {phase_breakdown(recs)}")
        for m in ("write", "rename-over"):
            c = [x for x, k in zip(commits, modes) if k == m]
            s = [x for x, k in zip(served, modes) if k == m]
            print(
                f"    {m:<12} commit p50 {statistics.median(c) * 1000:6.1f} ms, serve p50 "
                f"{statistics.median(s) * 1000:6.1f} ms"
            )
        if not args.no_burst:
            bursts(src, home, watch)
        # after the quiet-time work (the code graph at once, the lexical delta compacted after 60 s): what
        # an idle watcher costs from then on
        time.sleep(65)
        cpu, rss = idle_cost(watch.proc.pid, args.idle)
        print(
            f"\nidle nova watch over {args.idle:.0f} s: {cpu:.3f} % of one core (target <= 0.1 %), RSS "
            f"{rss:.2f} GB (target <= 1.1 GB)"
        )
    except BaseException:
        stop_group(serve_proc)  # a failed part leaves no server behind
        raise
    finally:
        watch.stop()

    try:
        if not args.no_sensor:
            reps = sensor_path(src, home, dhome, work, env, base, args.sensor_reps)
            print(
                f"\nthe sensor path (nova watch stopped; source_tree_changed every 5 s, a live_update run): "
                f"{', '.join(f'{r:.1f} s' for r in reps)} to searchable (target <= 15 s; floor: 5 s poll + "
                "a run's process start + the model load, about 2 + 4 s here)"
            )
    finally:
        stop_group(serve_proc)
    one_process(src, work, env, args.edits)

    if not args.no_scale:
        scale(work, args.scale_chunks, env, min(args.edits, 10))


def one_process(src: Path, work: Path, env: dict, n: int, poll_s: float = 0.02) -> None:
    """``nova serve --watch``: the watcher and the service in one process, searches reading the watcher's own
    Chroma client (no view reopened after an update). Times from the write to the first ``/search`` with
    the renamed function at rank 1."""
    port = free_port()
    proc = start_process(
        [sys.executable, "-m", "nova_pipeline.cli", "serve", "--watch", "--port", str(port)],
        {**env, "NOVA_SOURCE_DIR": str(src), "NOVA_LOG_LEVEL": "WARNING"},
        work / "serve_watch.log",
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _up(base), 180, what="nova serve --watch answering")
        session = httpx.Client(base_url=base, timeout=30)
        served = []
        for i in range(n + 2):  # the first two load the model and open the watcher's client
            name = f"probe_one_{uuid.uuid4().hex[:8]}_{i}"
            served.append(seconds_to_found(session, name, rename_function(src, name, i % 2 == 1), 60, poll_s))
            time.sleep(0.3)
        print("\none process (nova serve --watch: searches read the watcher's client):")
        print(
            "  "
            + summary(f"first /search at rank 1, polled every {poll_s * 1000:.0f} ms", served[2:])
            + "  (target p50 <= 250 ms)"
        )
    finally:
        stop_group(proc)


def scale(work: Path, target: int, env: dict, n: int) -> None:
    big, bhome, bdh = work / "scale_src", work / "scale_home", work / "scale_dagster_home"
    for d in (bhome, bdh):
        shutil.rmtree(d, ignore_errors=True)
    bdh.mkdir(parents=True)
    shutil.copy(REPO / "dagster.yaml", bdh / "dagster.yaml")
    if not big.exists():
        size = 0
        for p in sorted(STDLIB.rglob("*.py")):
            rel = p.relative_to(STDLIB)
            if rel.parts[0] in ("site-packages", "idlelib") or "__pycache__" in rel.parts:
                continue
            if size > target * 650:  # about 650 bytes of source per chunk
                break
            (big / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(p, big / rel)
            size += p.stat().st_size
    prepare_probe(big) if (big / TARGET).exists() else None
    t = time.perf_counter()
    chunks = build_free(big, bhome)
    print(
        f"\nat scale: {len(list(big.rglob('*.py'))):,} files, {chunks:,} chunks (random vectors: a free "
        f"embedder) built in {time.perf_counter() - t:.0f} s"
    )
    senv = {**env, "NOVA_HOME": str(bhome), "DAGSTER_HOME": str(bdh)}
    serve_proc, base = serve(bhome, work, senv)
    watch = Watch(big, senv, work / "scale_watch.log")
    try:
        watch.wait_for(lambda r: r.get("kind") == "catch-up", 900)
        edits(big, watch, base, 2, "warm")
        commits, served, _, recs = edits(big, watch, base, n, "scale")
        print("  " + summary("commit (nova watch's timestamps)", commits) + "  (target p50 <= 250 ms)")
        print(f"  where the time goes (medians): {phase_breakdown(recs)}")
        print("  " + summary("first /search with it at rank 1", served))
    finally:
        watch.stop()
        stop_group(serve_proc)
    one_process(big, work, senv, n)


if __name__ == "__main__":
    main()
