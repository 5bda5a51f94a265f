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

``--free-embedder``: the non-embedding path alone. ``reconcile`` with an embedder that returns random unit
vectors at no cost, over ~10k chunks, in embedded and server mode, next to raw encode; then where its time
goes (metadata rows, the SQLite cache, Chroma's upsert and HNSW insert, listing ids), and Chroma's own
cost by what a record carries: the vector alone, with our metadata, and with the document as well.

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
            m.group() for line in text.splitlines() if "RUN_START" in line for m in [RUN_ID.search(line)] if m
        )
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


def raw_encode_rate(texts: list[str], threads: int = 0) -> float:
    """Chunks/s of plain ``SentenceTransformer.encode`` (batch 32, normalised), the model already loaded."""
    import torch
    from sentence_transformers import SentenceTransformer

    from nova_pipeline.core.index.embedding import bundled_model_dir

    if threads:
        torch.set_num_threads(threads)
    model = SentenceTransformer(str(bundled_model_dir()), device="cpu")
    model.encode(texts[:32], batch_size=32)
    started = time.perf_counter()
    model.encode(texts, batch_size=32, normalize_embeddings=True)
    return len(texts) / (time.perf_counter() - started)


def bench_executors(args) -> None:
    import dagster as dg

    from nova_pipeline.defs import ingest
    from nova_pipeline.defs.index import chunks
    from nova_pipeline.defs.resources import EmbedderResource
    from nova_pipeline_tests.conftest import resources_for

    work = Path(tempfile.mkdtemp(prefix="bench_scaleout_"))
    pg = make_pg_database()
    try:
        tree, chunks = build_tree(work, args.chunks)
        template = work / "template"
        with dg.instance_for_test() as instance:
            assert dg.materialize(
                [ingest.source_files, chunks.source_chunks],
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


def bench_free(args) -> None:
    from nova_pipeline.core.index.embedding_cache import EmbeddingCache
    from nova_pipeline.core.index.reconcile import chunk_metadata, reconcile
    from nova_pipeline.core.index.vector_store import existing_ids, get_collection, open_client

    work = Path(tempfile.mkdtemp(prefix="bench_free_"))
    chroma = None
    try:
        tree, chunks = build_tree(work, args.free_chunks)
        texts = chunks["text"].tolist()
        print(f"corpus: {len(chunks):,} chunks from {tree}; {os.cpu_count()} cores")
        anchor = raw_encode_rate(texts[:512])
        print(f"anchor: raw SentenceTransformer.encode (512 chunks, all cores): {anchor:,.1f} chunks/s")
        url, chroma = start_chroma(work / "server", work / "chroma.log")
        for label, home, chroma_url in (("embedded", work / "emb", None), ("server", work / "srv", url)):
            client = open_client(home, chroma_url)
            col = get_collection(client, FreeEmbedder.fingerprint)
            cache = EmbeddingCache(home, FreeEmbedder.fingerprint)
            started = time.perf_counter()
            stats = reconcile(col, chunks, FreeEmbedder(), cache, max_batch=client.get_max_batch_size())
            took = time.perf_counter() - started
            print(
                f"reconcile, free embedder, {label:<8}: {len(chunks) / took:7.1f} chunks/s "
                f"({took:.1f} s; {stats.upserted:,} upserted) = {len(chunks) / took / anchor:.0f}x raw encode"
            )
            cache.close()
        # where the time goes, each part alone, over the same chunks
        vecs = FreeEmbedder().embed(texts)
        parts = {}
        t = time.perf_counter()
        metas = [chunk_metadata(r) for r in chunks.itertuples(index=False)]
        parts["metadata rows"] = time.perf_counter() - t
        cache = EmbeddingCache(work / "parts", "free")
        t = time.perf_counter()
        for i in range(0, len(texts), 256):
            cache.get_many(chunks["content_blake3"].iloc[i : i + 256].tolist())
            cache.put_many(dict(zip(chunks["content_blake3"].iloc[i : i + 256], vecs[i : i + 256])))
        parts["SQLite cache (get + put)"] = time.perf_counter() - t
        for label, chroma_url in (("embedded", None), ("server", url)):
            col = get_collection(open_client(work / f"parts-{label}", chroma_url), "parts-" + label)
            ids = chunks["chunk_id"].tolist()
            t = time.perf_counter()
            for i in range(0, len(texts), 256):
                col.upsert(
                    ids=ids[i : i + 256],
                    embeddings=vecs[i : i + 256],
                    documents=texts[i : i + 256],
                    metadatas=metas[i : i + 256],
                )
            parts[f"Chroma upsert + HNSW, {label}"] = time.perf_counter() - t
            t = time.perf_counter()
            existing_ids(col)
            parts[f"listing ids, {label}"] = time.perf_counter() - t
        # Chroma's own cost by what a record carries (embedded mode): the vector alone (HNSW and the
        # log), then with our metadata (a row per key in its SQLite metadata segment), then with the
        # document (also indexed by SQLite full-text search): the last is what the product writes.
        ids = chunks["chunk_id"].tolist()
        for label, with_meta, with_docs in (
            ("vector only", False, False),
            ("+ metadata", True, False),
            ("+ metadata + document", True, True),
        ):
            col = get_collection(open_client(work / f"shape-{len(parts)}"), f"shape-{len(parts)}")
            t = time.perf_counter()
            for i in range(0, len(texts), 1024):
                col.upsert(
                    ids=ids[i : i + 1024],
                    embeddings=vecs[i : i + 1024],
                    metadatas=metas[i : i + 1024] if with_meta else None,
                    documents=texts[i : i + 1024] if with_docs else None,
                )
            parts[f"Chroma record: {label}"] = time.perf_counter() - t
        print("where the time goes (each part alone, all chunks, batches of 256; record shapes 1,024):")
        for k, v in parts.items():
            print(f"  {k:<38} {v:7.2f} s  {len(chunks) / v:10,.0f} chunks/s")
        upserts = [v for k, v in parts.items() if k.startswith("Chroma upsert")]
        print(
            f"ceiling set by Chroma's upsert: {len(chunks) / min(upserts):,.0f} chunks/s "
            f"({statistics.mean([len(chunks) / v for v in upserts]):,.0f} mean of the two modes)"
        )
    finally:
        if chroma is not None:
            stop(chroma)
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunks", type=int, default=2000)
    parser.add_argument("--free-embedder", action="store_true")
    parser.add_argument("--free-chunks", type=int, default=10000)
    args = parser.parse_args()
    if args.free_embedder:
        bench_free(args)
    else:
        bench_executors(args)


if __name__ == "__main__":
    main()
