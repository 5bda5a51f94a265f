"""Scale-out of vector_index, measured: the same ~2,000 chunks embedded by each executor, and the ceiling of
everything but the model.

Default mode, in one run (real model, a real `chroma run` server per run, a fresh Postgres database behind
docker/dagster.yaml, a cold embedding cache each time):
  * anchor: raw ``SentenceTransformer.encode`` of the same texts in this process (all cores);
  * ``dagster asset materialize --select vector_index`` with
      - the in-process executor, one slice (today's single-machine default);
      - the multiprocess executor, two slices in two processes, one torch thread each;
      - the Celery executor, two slices, one worker (all cores);
      - the Celery executor, two slices, two workers with one torch thread each;
    chunks/s of the run (from RUN_START to RUN_SUCCESS in the event log, model loads included) and of the
    embed phase (first to last step of vector_index), with ratios to the anchor;
  * every run must leave exactly the same collection (ids and documents): checked, and printed.

``--free-embedder``: the non-embedding path alone, slim records against full ones (issue 25). ``reconcile``
with an embedder that returns random unit vectors at no cost, over ~10k chunks, in embedded and server mode,
next to its anchor, Chroma's own upsert of the same records; bytes per chunk on disk, in a golden version
(export and lexical index), in the backup estimate and measured in an in-memory load; and the document
table's lookup of 50 ids.

Usage: python benchmarks/bench_scaleout.py [--chunks 2000] [--free-embedder [--free-chunks 10000]]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import sys
import sysconfig
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

from anchors import raw_encode_rate  # noqa: E402 - benchmarks/anchors.py

from nova_pipeline_tests.conftest import (  # noqa: E402 - the same process helpers the tests use
    free_port,
    start_chroma,
    start_process,
    stop,
    stop_group,
    wait_until,
)

STDLIB = Path(sysconfig.get_paths()["stdlib"])
PACKAGES = [
    "json",
    "email",
    "http",
    "logging",
    "importlib",
    "concurrent",
    "xml",
    "urllib",
    "unittest",
    "asyncio",
    "multiprocessing",
    "tomllib",
    "sqlite3",
    "ctypes",
    "curses",
    "dbm",
    "wsgiref",
    "zoneinfo",
    "html",
    "encodings",
    "idlelib",
    "lib2to3",
    "pydoc_data",
    "venv",
    "ensurepip",
]
BIN = Path(sys.executable).parent
RUN_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def build_tree(dst: Path, want_chunks: int) -> tuple[Path, "object"]:
    """Copy stdlib packages (tests left out) into ``dst`` until chunking them gives about ``want_chunks``
    chunks; returns ``(tree, chunks DataFrame)``."""
    from nova_pipeline.core.index.chunking import chunk_manifest
    from nova_pipeline.core.index.embedding import Tokenizer
    from nova_pipeline.core.ingest.manifest import scan
    from nova_pipeline.core.ingest.walk import ScanOptions

    tok = Tokenizer()
    tree = dst / "src"
    tree.mkdir(parents=True)
    chunks = None
    for pkg in PACKAGES:
        if not (STDLIB / pkg).is_dir():
            continue
        shutil.copytree(
            STDLIB / pkg,
            tree / pkg,
            ignore=shutil.ignore_patterns("__pycache__", "test", "tests", "idle_test"),
        )
        manifest = scan(ScanOptions(tree)).manifest
        chunks, _ = chunk_manifest(tree, manifest, None, tok.count, tok.max_seq_length)
        if len(chunks) >= want_chunks:
            break
    return tree, chunks


# ---- the executors ---------------------------------------------------------------------------------------


def make_pg_database() -> dict:
    import psycopg2

    name = f"nova_bench_{uuid.uuid4().hex[:10]}"
    conn = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres")
    conn.autocommit = True
    conn.cursor().execute(f'CREATE DATABASE "{name}"')
    conn.close()
    return {
        "DAGSTER_PG_HOST": "127.0.0.1",
        "DAGSTER_PG_PORT": "5432",
        "DAGSTER_PG_DB": name,
        "DAGSTER_PG_USER": "postgres",
        "DAGSTER_PG_PASSWORD": "",
    }


def drop_pg_database(env: dict) -> None:
    import psycopg2

    conn = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres")
    conn.autocommit = True
    conn.cursor().execute(f'DROP DATABASE IF EXISTS "{env["DAGSTER_PG_DB"]}" WITH (FORCE)')
    conn.close()


def run_times(dhome: Path, pg: dict, run_id: str) -> dict:
    """Wall seconds of the run and of vector_index's steps, from the run's event log."""
    import dagster as dg

    old = {k: os.environ.get(k) for k in pg}
    os.environ.update(pg)
    try:
        with dg.DagsterInstance.from_config(str(dhome)) as instance:
            logs = instance.all_logs(run_id)
    finally:
        for k, v in old.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    start = next(
        e.timestamp for e in logs if e.dagster_event and e.dagster_event.event_type.name == "RUN_START"
    )
    end = next(
        e.timestamp
        for e in logs
        if e.dagster_event and e.dagster_event.event_type.name in ("RUN_SUCCESS", "RUN_FAILURE")
    )
    steps = [
        e
        for e in logs
        if e.dagster_event
        and (e.step_key or "").startswith("vector_index.")
        and e.dagster_event.event_type.name in ("STEP_START", "STEP_SUCCESS")
    ]
    workers = {
        e.dagster_event.engine_event_data.metadata["Celery worker"].value
        for e in logs
        if e.dagster_event
        and e.dagster_event.is_engine_event
        and "Celery worker" in e.dagster_event.engine_event_data.metadata
    }
    failed = any(e.dagster_event and e.dagster_event.event_type.name == "RUN_FAILURE" for e in logs)
    return {
        "run_s": end - start,
        "embed_s": max(e.timestamp for e in steps) - min(e.timestamp for e in steps),
        "workers": sorted(workers),
        "failed": failed,
    }


def run_mode(
    name: str,
    template: Path,
    tree: Path,
    work: Path,
    pg: dict,
    executor: dict,
    slices: int,
    torch_threads: int,
    celery_workers: int,
) -> dict:
    """One ``dagster asset materialize --select vector_index`` on a copy of the template home, into a fresh
    Chroma server; returns the times and the collection's ``{id: document}``."""
    from nova_pipeline.core.index.embedding import bundled_fingerprint
    from nova_pipeline.core.index.vector_store import get_collection, open_client

    mode_dir = work / name
    home = mode_dir / "home"
    shutil.copytree(template, home)
    dhome = mode_dir / "dagster_home"
    dhome.mkdir()
    for f in ("dagster.yaml", "celery.yaml"):
        shutil.copy(REPO / "docker" / f, dhome / f)
    url, chroma = start_chroma(mode_dir / "chroma", mode_dir / "chroma.log")
    redis_port = free_port()
    env = {
        **pg,
        "DAGSTER_HOME": str(dhome),
        "NOVA_HOME": str(home),
        "NOVA_SOURCE_DIR": str(tree),
        "NOVA_CHROMA_URL": url,
        "NOVA_CELERY_BROKER": f"redis://127.0.0.1:{redis_port}/0",
        "NOVA_CELERY_BACKEND": f"redis://127.0.0.1:{redis_port}/1",
        "HF_HUB_OFFLINE": "1",
        "ANONYMIZED_TELEMETRY": "False",
        "NOVA_EMBED_THREADS": str(torch_threads),
        # dagster-celery starts `celery` from PATH
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    procs = []
    try:
        if "celery" in executor:
            executor = {
                "celery": {"broker": env["NOVA_CELERY_BROKER"], "backend": env["NOVA_CELERY_BACKEND"]}
            }
            env["NOVA_EXECUTOR"] = "celery"  # the definitions pick the executor when they load
            procs.append(
                start_process(
                    [
                        shutil.which("redis-server"),
                        "--port",
                        str(redis_port),
                        "--bind",
                        "127.0.0.1",
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                    ],
                    env,
                    mode_dir / "redis.log",
                )
            )
            for i in range(celery_workers):
                log = mode_dir / f"celery-{i}.log"
                procs.append(
                    start_process(
                        [
                            str(BIN / "dagster-celery"),
                            "worker",
                            "start",
                            "-A",
                            "dagster_celery.app",
                            "-y",
                            str(dhome / "celery.yaml"),
                            "-n",
                            f"w{i}",
                            "--",
                            "--concurrency=1",
                        ],
                        env,
                        log,
                        cwd=mode_dir,
                    )
                )
            wait_until(
                lambda: all(
                    "ready." in (mode_dir / f"celery-{i}.log").read_text() for i in range(celery_workers)
                ),
                120,
                what="the Celery workers",
            )
        config = mode_dir / "run.json"
        config.write_text(
            json.dumps(
                {"execution": {"config": executor}, "ops": {"vector_index": {"config": {"slices": slices}}}}
            )
        )
        started = time.perf_counter()
        proc = start_process(
            [
                str(BIN / "dagster"),
                "asset",
                "materialize",
                "-m",
                "nova_pipeline.definitions",
                "--select",
                "vector_index",
                "-c",
                str(config),
            ],
            env,
            mode_dir / "run.log",
            cwd=mode_dir,
        )
        proc.wait(timeout=3600)
        wall = time.perf_counter() - started
        text = (mode_dir / "run.log").read_text()
        run_id = next(
            (
                m.group()
                for line in text.splitlines()
                if "RUN_START" in line
                for m in [RUN_ID.search(line)]
                if m
            ),
            None,
        )
        if run_id is None:
            raise RuntimeError(f"{name}: the run never started (exit {proc.returncode}):\n{text[-3000:]}")
        times = run_times(dhome, pg, run_id)
        if proc.returncode != 0 or times["failed"]:
            raise RuntimeError(f"{name}: the run failed; see {mode_dir / 'run.log'}:\n{text[-3000:]}")
        col = get_collection(open_client(home, url), bundled_fingerprint(), create=False)
        got = col.get(include=["documents"])
        return {**times, "process_s": wall, "collection": dict(zip(got["ids"], got["documents"]))}
    finally:
        for p in procs:
            stop_group(p)
        stop(chroma)


def bench_executors(args) -> None:
    import dagster as dg

    from nova_pipeline.defs import ingest
    from nova_pipeline.defs.index import chunks as chunk_defs
    from nova_pipeline.defs.resources import EmbedderResource
    from nova_pipeline_tests.conftest import resources_for

    work = Path(tempfile.mkdtemp(prefix="bench_scaleout_"))
    pg = make_pg_database()
    try:
        tree, chunks = build_tree(work, args.chunks)
        template = work / "template"
        with dg.instance_for_test() as instance:
            assert dg.materialize(
                [ingest.source_files, chunk_defs.source_chunks],
                instance=instance,
                resources=resources_for(tree, template, EmbedderResource()),
            ).success
        from nova_pipeline.core.tables import read_table

        chunks = read_table(template, "source_chunks")
        texts = chunks["text"].tolist()
        unique = chunks["content_blake3"].nunique()
        print(
            f"corpus: {tree} ({chunks['path'].str.split('/').str[0].nunique()} packages), "
            f"{len(chunks):,} chunks, {unique:,} unique texts; {os.cpu_count()} cores"
        )
        anchor = raw_encode_rate(list(dict.fromkeys(texts)))
        print(f"anchor: raw SentenceTransformer.encode, all cores, model loaded: {anchor:,.1f} chunks/s")
        modes = [
            ("in-process, 1 slice", {"in_process": {}}, 1, 0, 0),
            ("multiprocess, 2 slices x 1 thread", {"multiprocess": {"max_concurrent": 2}}, 2, 1, 0),
            ("celery, 1 worker, 2 slices", {"celery": {}}, 2, 0, 1),
            ("celery, 2 workers x 1 thread, 2 slices", {"celery": {}}, 2, 1, 2),
        ]
        modes = [m for m in modes if m[0].split(",")[0] in args.modes.split(",")]
        results = {}
        for name, executor, slices, threads, workers in modes:
            slug = name.split(",")[0] + str(len(results))
            r = run_mode(slug.replace(" ", "_"), template, tree, work, pg, executor, slices, threads, workers)
            results[name] = r
            print(
                f"  {name:<40} run {r['run_s']:7.1f} s = {len(chunks) / r['run_s']:6.1f} chunks/s "
                f"({len(chunks) / r['run_s'] / anchor:.2f}x raw encode); embed phase {r['embed_s']:7.1f} s "
                f"= {len(chunks) / r['embed_s']:6.1f} chunks/s; workers {len(r['workers']) or '-'}",
                flush=True,
            )
        reference = next(iter(results.values()))["collection"]
        same = {n: r["collection"] == reference for n, r in results.items()}
        print(
            f"same collection (ids and documents) in every run: {all(same.values())} "
            f"({len(reference):,} vectors; {same})"
        )
        if not all(same.values()):
            raise SystemExit(1)
    finally:
        drop_pg_database(pg)
        shutil.rmtree(work, ignore_errors=True)


# ---- the free embedder -----------------------------------------------------------------------------------


class FreeEmbedder:
    """Random unit vectors of the model's dimension: the cost of everything but the model."""

    fingerprint = "free-embedder"
    dimension = 384

    def __init__(self):
        self.rng = np.random.default_rng(0)

    def embed(self, texts):
        v = self.rng.standard_normal((len(texts), self.dimension)).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def _rss_of_load(version_dir: Path, records: str) -> tuple[int, int]:
    """``(vectors, RSS growth in bytes)`` of loading an export into an in-memory Chroma, as the backup store
    does, in a fresh process (so nothing else this bench did is counted)."""
    import subprocess

    out = subprocess.run(
        [sys.executable, __file__, "--load-rss", str(version_dir), records],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    n, grew = out.split()[-2:]
    return int(n), int(grew)


def load_rss(version_dir: str, records: str) -> None:
    """The child of :func:`_rss_of_load`: loads the export in two halves, as the backup store does (its own
    record schema; batches of 1,000), and prints ``vectors rss_growth_of_the_second_half``: the marginal
    cost, without the fixed costs of the first vectors (as ``bench_failover`` measures it)."""
    import gc

    import chromadb
    import psutil
    from chromadb.config import Settings as ChromaSettings

    from nova_pipeline.core.index.vector_store import upsert_records
    from nova_pipeline.core.protect.golden.export import embedding_matrix, export_files, read_shard

    client = chromadb.EphemeralClient(settings=ChromaSettings(anonymized_telemetry=False))
    meta = {"records": "slim"} if records == "slim" else None
    col = client.get_or_create_collection(
        "load", metadata=meta, configuration={"hnsw": {"space": "cosine"}}, embedding_function=None
    )
    table = read_shard(export_files(Path(version_dir))[0])
    mat = embedding_matrix(table)
    ids = table.column("id").to_pylist()
    docs = table.column("document").to_pylist()
    metas = [json.loads(m) for m in table.column("metadata").to_pylist()]
    half = len(ids) // 2
    rss = []
    for lo, hi in ((0, half), (half, len(ids))):
        for i in range(lo, hi, 1000):
            j = min(hi, i + 1000)
            upsert_records(col, ids[i:j], mat[i:j], docs[i:j], metas[i:j])
        col.query(query_embeddings=mat[:1], n_results=1)
        gc.collect()
        rss.append(psutil.Process().memory_info().rss)
    print(len(ids) - half, rss[1] - rss[0])


def bench_free(args) -> None:
    """Slim against full vector records with a free embedder (issue 25): reconcile's throughput next to
    Chroma's own upsert of the same records, bytes per chunk on disk, in a golden version and in the backup
    store's memory, and the document table's lookup."""
    import pyarrow.parquet as pq

    from nova_pipeline.core.index import lexical
    from nova_pipeline.core.index.embedding_cache import EmbeddingCache
    from nova_pipeline.core.index.reconcile import reconcile
    from nova_pipeline.core.index.vector_store import (
        FULL,
        SLIM,
        existing_ids,
        full_metadata,
        get_collection,
        open_client,
        slim_metadata,
    )
    from nova_pipeline.core.protect.golden.export import EXPORT_DIR, fetch_rows, table_bytes
    from nova_pipeline.core.serving.estimate import CHROMA_MEMORY_FACTOR, estimate, export_vector_bytes

    work = Path(tempfile.mkdtemp(prefix="bench_free_"))
    chroma = None
    try:
        tree, chunks = build_tree(work, args.free_chunks)
        texts, ids = chunks["text"].tolist(), chunks["chunk_id"].tolist()
        n = len(chunks)
        print(f"corpus: {n:,} chunks from {tree}; {os.cpu_count()} cores")
        anchor = raw_encode_rate(texts[:512])
        print(f"anchor: raw SentenceTransformer.encode (512 chunks, all cores): {anchor:,.1f} chunks/s")
        url, chroma = start_chroma(work / "server", work / "chroma.log")
        vecs = FreeEmbedder().embed(texts)
        slim_metas = [slim_metadata(r.path, r.language, 0) for r in chunks.itertuples(index=False)]
        full_metas = [full_metadata(r) for r in chunks.itertuples(index=False)]

        def chroma_alone(label: str, chroma_url, metas, docs) -> float:
            """Chroma's own upsert of prepared records (batches of 256, as reconcile writes): chunks/s."""
            col = get_collection(open_client(work / f"alone-{label}", chroma_url), f"alone-{label}")
            t = time.perf_counter()
            for i in range(0, n, 256):
                col.upsert(
                    ids=ids[i : i + 256],
                    embeddings=vecs[i : i + 256],
                    metadatas=metas[i : i + 256],
                    **({"documents": docs[i : i + 256]} if docs else {}),
                )
            return n / (time.perf_counter() - t)

        rates, sizes = {}, {}
        for mode, chroma_url in (("embedded", None), ("server", url)):
            rates[("anchor slim", mode)] = chroma_alone(f"slim-{mode}", chroma_url, slim_metas, None)
            rates[("anchor full", mode)] = chroma_alone(f"full-{mode}", chroma_url, full_metas, texts)
            for records in (SLIM, FULL):
                home = work / f"{records}-{mode}"
                client = open_client(home, chroma_url)
                col = get_collection(client, FreeEmbedder.fingerprint, records=records)
                cache = EmbeddingCache(home, FreeEmbedder.fingerprint)
                t = time.perf_counter()
                stats = reconcile(col, chunks, FreeEmbedder(), cache, max_batch=client.get_max_batch_size())
                rates[(f"reconcile {records}", mode)] = stats.upserted / (time.perf_counter() - t)
                cache.close()
                if mode == "embedded":
                    sizes[(records, "chroma dir")] = _dir_bytes(home / "vectors") / n
                    version = work / f"version-{records}"
                    (version / EXPORT_DIR).mkdir(parents=True)
                    table = fetch_rows(col, sorted(ids), chunks.set_index("chunk_id"))  # as promote does
                    (version / EXPORT_DIR / "part-00.parquet").write_bytes(table_bytes(table))
                    meta = pq.ParquetFile(version / EXPORT_DIR / "part-00.parquet").metadata
                    sizes[(records, "export")] = _dir_bytes(version / EXPORT_DIR) / n
                    sizes[(records, "export, uncompressed")] = (
                        sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups)) / n
                    )
                    # what the estimate counts: ids and vectors (the backup keeps slim records)
                    sizes[(records, "export ids and vectors")] = (
                        export_vector_bytes([version / EXPORT_DIR / "part-00.parquet"]) / n
                    )
                    t0 = time.perf_counter()
                    existing_ids(col)
                    rates[(f"listing ids {records}", mode)] = n / (time.perf_counter() - t0)
        # the lexical index: before, without texts (they were in the export); after, with texts/
        lex_dir = work / "lexical"
        lexical.build(chunks, lex_dir)
        texts_bytes = _dir_bytes(lex_dir / lexical.TEXTS)
        sizes[(FULL, "lexical index")] = (_dir_bytes(lex_dir) - texts_bytes) / n
        sizes[(SLIM, "lexical index")] = _dir_bytes(lex_dir) / n
        for records in (SLIM, FULL):
            golden = sizes[(records, "export")] + sizes[(records, "lexical index")]
            sizes[(records, "golden version")] = golden
            if records == FULL:  # before: 3x the whole export, for a store that held the documents too
                sizes[(records, "backup estimate")] = 3.0 * sizes[(records, "export, uncompressed")]
            else:
                est = estimate(n, int(sizes[(records, "export ids and vectors")] * n), available_bytes=2**40)
                sizes[(records, "backup estimate")] = est.bytes_per_chunk
            loaded, grew = _rss_of_load(work / f"version-{records}", records)
            sizes[(records, "backup in memory, measured")] = grew / loaded  # marginal: the second half
        # the document table: 50 ids looked up, as a search shows them
        table = lexical.load(lex_dir)
        rng = np.random.default_rng(1)
        times = []
        for _ in range(200):
            pick = list(rng.choice(ids, 50, replace=False))
            t = time.perf_counter()
            got = table.documents(pick)
            times.append(time.perf_counter() - t)
            assert len(got) == 50
        print("\nthroughput (chunks/s; reconcile with a free embedder, batches of 256):")
        print(f"  {'':<22} {'embedded':>10} {'server':>10}")
        for what in ("anchor slim", "reconcile slim", "anchor full", "reconcile full"):
            label = {
                "anchor slim": "Chroma upsert, slim",
                "anchor full": "Chroma upsert, full",
            }.get(what, what)
            print(f"  {label:<22} {rates[(what, 'embedded')]:10,.0f} {rates[(what, 'server')]:10,.0f}")
        for mode in ("embedded", "server"):
            slim, full = rates[("reconcile slim", mode)], rates[("reconcile full", mode)]
            alone = rates[("anchor slim", mode)]
            print(
                f"  {mode}: reconcile slim / Chroma's slim upsert = {slim / alone:.2f}x "
                f"(target >= 0.9); slim / full reconcile = {slim / full:.2f}x (target >= 2); "
                f"= {slim / anchor:.0f}x raw encode"
            )
        print("\nbytes per chunk (before: full records; after: slim):")
        print(f"  {'':<32} {'full':>8} {'slim':>8}")
        for what in (
            "chroma dir",
            "export",
            "lexical index",
            "golden version",
            "export, uncompressed",
            "export ids and vectors",
            "backup estimate",
            "backup in memory, measured",
        ):
            print(f"  {what:<32} {sizes[(FULL, what)]:8,.0f} {sizes[(SLIM, what)]:8,.0f}")
        measured = sizes[(SLIM, "backup in memory, measured")] / sizes[(SLIM, "export ids and vectors")]
        print(
            f"  (backup estimate target: <= 3,072 bytes per chunk; the estimate is {CHROMA_MEMORY_FACTOR:g}x "
            f"the export's id and embedding bytes; measured: {measured:.2f}x)"
        )
        print(
            f"\ndocument table: 50 ids by chunk id, {n:,} chunks: "
            f"p50 {statistics.median(times) * 1e3:.3f} ms, "
            f"max {max(times) * 1e3:.3f} ms (texts {texts_bytes / 2**20:.1f} MB in 64 files, memory-mapped)"
        )
    finally:
        if chroma is not None:
            stop(chroma)
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunks", type=int, default=2000)
    parser.add_argument("--modes", default="in-process,multiprocess,celery", help="executors to run")
    parser.add_argument("--free-embedder", action="store_true")
    parser.add_argument("--free-chunks", type=int, default=10000)
    parser.add_argument("--load-rss", nargs=2, help=argparse.SUPPRESS)  # the child of _rss_of_load
    args = parser.parse_args()
    if args.load_rss:
        load_rss(*args.load_rss)
    elif args.free_embedder:
        bench_free(args)
    else:
        bench_executors(args)


if __name__ == "__main__":
    main()
