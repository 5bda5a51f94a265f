"""Switching the embedding model while ``nova serve`` answers (issue 24): 0 failed searches, and every chunk
embedded exactly once by the new model.

Tree: stdlib packages (default ``json,email,http,urllib,logging``). Model A is the bundled all-MiniLM-L6-v2
(its collection filled with hash vectors under its name, so that only model B's embedding is measured);
model B is the bundled model with Gaussian noise on its weight matrices (another "version", built locally,
offline). In one run:

* ``nova serve``'s app on a real uvicorn server, with 2 client threads in a bounded loop of vector and
  hybrid searches (each must answer 200 with hits);
* ``nova model build --model-dir B`` (a real subprocess: the ``vector_index`` asset alone, on the Dagster
  instance): B's collection built beside A's while A answers;
* ``nova model switch --model-dir B``; the service swaps within a second or so.

It prints the searches served and failed before, during the build and after the switch, their latency
p50/p95, the switch delay, and the embedding count: ``vector_index``'s ``embedded`` against the distinct
texts of ``source_chunks`` and B's embedding cache entries (exactly once each), with the anchor, raw
``SentenceTransformer.encode`` of the same texts, as a rate.

Usage: python benchmarks/bench_model_switch.py [--packages json,email,http,urllib,logging]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
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
QUERIES = [
    ("decode a JSON document", "vector"),
    ("parse an email message header", "hybrid"),
    ("HTTPConnection request", "hybrid"),
    ("quote a URL path", "vector"),
]


def pct(values: list[float]) -> str:
    if not values:
        return "-"
    ms = sorted(v * 1000 for v in values)
    return f"p50 {statistics.median(ms):6.1f} ms, p95 {ms[int(0.95 * (len(ms) - 1))]:6.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--packages", default="json,email,http,urllib,logging")
    args = parser.parse_args()

    import dagster as dg
    import httpx
    from anchors import raw_encode_rate

    from nova_pipeline.core.index.embedding import bundled_fingerprint
    from nova_pipeline.core.index.embedding_cache import EmbeddingCache
    from nova_pipeline.core.keys import SOURCE_CHUNKS, VECTOR_INDEX
    from nova_pipeline.core.settings import Settings
    from nova_pipeline.core.tables import read_table
    from nova_pipeline.service.app import create_app
    from nova_pipeline_tests.conftest import ServerThread, build_home
    from nova_pipeline_tests.core.serving.test_model_switch import nova, perturbed_model
    from nova_pipeline_tests.service.test_live import RandomUnderTheModelsName

    work = Path(tempfile.mkdtemp(prefix="bench_model_switch_"))
    try:
        src, home, dagster_home = work / "src", work / "home", work / "dagster_home"
        dagster_home.mkdir()
        for pkg in args.packages.split(","):
            shutil.copytree(STDLIB / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__", "test*"))
        chunks = build_home(src, home, RandomUnderTheModelsName())  # model A's collection
        texts = chunks.drop_duplicates("content_blake3")["text"].tolist()
        print(
            f"tree: {args.packages} ({len(chunks):,} chunks, {len(texts):,} distinct texts); "
            f"{os.cpu_count()} cores"
        )
        model_b = perturbed_model(work / "minilm-retrained")
        fp_b = bundled_fingerprint(model_b)

        app = create_app(Settings.build(None, home, require_source=False))
        phase = ["before"]
        served: dict[str, list[float]] = {"before": [], "build": [], "switch": [], "after": []}
        failures: list[str] = []
        stop = threading.Event()
        with ServerThread(app) as server:

            def ask(offset: int) -> None:
                with httpx.Client(base_url=server.url, timeout=30) as client:
                    i = offset
                    while not stop.is_set():
                        q, mode = QUERIES[i % len(QUERIES)]
                        i += 1
                        t = time.perf_counter()
                        r = client.get("/search", params={"q": q, "k": 5, "mode": mode})
                        took = time.perf_counter() - t
                        if r.status_code != 200 or not r.json().get("hits"):
                            failures.append(f"{phase[0]}: {r.status_code} {r.text[:200]}")
                        served[phase[0]].append(took)
                        time.sleep(0.05)  # a bounded loop: about 20 searches/s per client at most

            clients = [threading.Thread(target=ask, args=(i,), daemon=True) for i in range(2)]
            for c in clients:
                c.start()
            time.sleep(5)
            phase[0] = "build"
            t = time.perf_counter()
            built = nova(["model", "build", "--model-dir", str(model_b)], home, dagster_home, timeout=3600)
            build_s = time.perf_counter() - t
            if built.returncode != 0:
                raise SystemExit(f"nova model build failed:\n{built.stdout[-3000:]}\n{built.stderr[-3000:]}")
            phase[0] = "switch"
            t = time.perf_counter()
            switched = nova(["model", "switch", "--model-dir", str(model_b)], home, dagster_home)
            if switched.returncode != 0:
                raise SystemExit(f"nova model switch failed:\n{switched.stderr[-3000:]}")
            while app.state.searcher.switches < 1 and time.perf_counter() - t < 300:
                time.sleep(0.05)
            swap_s = time.perf_counter() - t
            phase[0] = "after"
            time.sleep(5)
            stop.set()
            for c in clients:
                c.join(60)
            fingerprint = app.state.searcher.fingerprint

        with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
            event = instance.get_latest_materialization_event(dg.AssetKey(VECTOR_INDEX))
            meta = {k: v.value for k, v in event.asset_materialization.metadata.items()}
        cache = EmbeddingCache(home, fp_b)
        cached = len(cache.get_many(chunks["content_blake3"].unique().tolist()))
        cache.close()
        distinct = read_table(home, SOURCE_CHUNKS, columns=["content_blake3"])["content_blake3"].nunique()
        print(
            f"nova model build: {build_s:.1f} s, embedded {meta.get('embedded')} texts for {distinct:,} "
            f"distinct texts ({meta.get('vectors')} vectors); B's embedding cache holds {cached:,}: "
            + (
                "every chunk embedded exactly once"
                if meta.get("embedded") == distinct == cached
                else "MISMATCH"
            )
        )
        print(
            f"switch: nova model switch to the service answering with B in {swap_s:.1f} s; service now on "
            f"{fingerprint[:24]}... ({'B' if fingerprint == fp_b else 'NOT B'})"
        )
        for name, times in served.items():
            print(f"  searches {name:<7} {len(times):5d} served   {pct(times)}")
        print(f"failed searches: {len(failures)}" + (f" (first: {failures[0]})" if failures else ""))

        anchor = raw_encode_rate(texts, model_b)
        rate = (meta.get("embedded") or 0) / build_s if build_s else 0.0
        print(
            f"anchor: raw encode of the same {len(texts):,} texts with B: {anchor:.1f} texts/s; nova model "
            f"build (a process, the model load and Dagster's run included): {rate:.1f} texts/s = "
            f"{rate / anchor:.2f}x"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
