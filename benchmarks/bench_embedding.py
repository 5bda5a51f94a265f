"""Benchmark the vector index against raw sentence-transformers, on standard-library chunks.

Prints, from one process:
  * end-to-end vector_index throughput (reconcile: cache lookups, embedding, Chroma upserts) as a ratio to
    raw ``SentenceTransformer.encode`` on the same texts (target >= 0.95x);
  * the embedder alone (``SentenceTransformerEmbedder.embed``: batches in word-piece order) against the
    same raw encode (batches in character order), the word pieces each order pads the batches to, and the
    least cosine between the two's vectors of one text;
  * unchanged-rerun wall time as a ratio to the cold run (target <= 0.1x, with 0 embeddings);
  * peak RSS;
  * recall@5 for 50 standard-library functions queried with the first line of their docstring.

Usage: python benchmarks/bench_embedding.py [--chunks N] [--packages email,json,...]
"""

from __future__ import annotations

import argparse
import ast
import resource
import shutil
import sysconfig
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from nova_pipeline.core.index.chunking import chunk_manifest
from nova_pipeline.core.index.embedding import SentenceTransformerEmbedder, Tokenizer
from nova_pipeline.core.index.embedding_cache import EmbeddingCache
from nova_pipeline.core.index.reconcile import reconcile
from nova_pipeline.core.index.vector_query import query
from nova_pipeline.core.index.vector_store import get_collection, open_client
from nova_pipeline.core.ingest.manifest import scan
from nova_pipeline.core.ingest.walk import ScanOptions

DEFAULT_PACKAGES = (
    "email,json,http,logging,asyncio,concurrent,importlib,xml,urllib,collections,unittest,sqlite3"
)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--chunks", type=int, default=2000)
    ap.add_argument("--packages", default=DEFAULT_PACKAGES)
    args = ap.parse_args()
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    work = Path(tempfile.mkdtemp(prefix="bench-embedding-"))
    try:
        src = work / "src"
        for pkg in args.packages.split(","):
            shutil.copytree(stdlib / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__", "test*"))
        run(src, work, args.chunks)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(src: Path, work: Path, n_chunks: int) -> None:
    tok = Tokenizer()
    manifest = scan(ScanOptions(src)).manifest
    chunks, cstats = chunk_manifest(src, manifest, None, tok.count, tok.max_seq_length)
    chunks = chunks.drop_duplicates("content_blake3").head(n_chunks).reset_index(drop=True)
    texts = chunks["text"].tolist()
    print(
        f"chunks: {len(chunks):,} unique (from {cstats.chunks:,} over {cstats.files_chunked} files), "
        f"mean {chunks['n_tokens'].mean():.0f} word pieces, {int(chunks['truncated'].sum())} truncated"
    )

    model = SentenceTransformerEmbedder()
    print(f"model: {model.fingerprint} on {model.device}, loaded in {model.load_seconds:.1f} s")
    model.model.encode(texts[:64], batch_size=32)  # warm up

    t0 = time.perf_counter()
    raw = model.model.encode(
        texts,
        batch_size=model.batch_size,
        convert_to_numpy=True,
        normalize_embeddings=True,
        show_progress_bar=False,
    )
    t_raw = time.perf_counter() - t0
    t0 = time.perf_counter()
    ours = model.embed(texts)
    t_embed = time.perf_counter() - t0
    pieces = model.token_lengths(texts)

    def padded(order: np.ndarray) -> int:  # word pieces of the forward passes, padding included
        size = model.batch_size
        return sum(
            int(pieces[order[i : i + size]].max()) * len(order[i : i + size])
            for i in range(0, len(order), size)
        )

    by_chars = np.argsort([-len(t) for t in texts], kind="stable")  # encode()'s own order

    home = work / "home"
    col = get_collection(open_client(home), model.fingerprint)
    cache = EmbeddingCache(home, model.fingerprint)
    t0 = time.perf_counter()
    cold = reconcile(col, chunks, model, cache)
    t_cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    warm = reconcile(col, chunks, model, cache)
    t_warm = time.perf_counter() - t0

    print(f"raw SentenceTransformer.encode: {len(texts) / t_raw:6.1f} chunks/s ({t_raw:.1f} s)")
    print(
        f"embedder alone, batches in word-piece order: {len(texts) / t_embed:6.1f} chunks/s "
        f"({t_embed:.1f} s), {t_raw / t_embed:.3f}x raw encode\n  the passes pad to {padded(by_chars):,} "
        f"word pieces in character order, {padded(np.argsort(pieces, kind='stable')):,} in word-piece order, "
        f"for {int(pieces.sum()):,}; least cosine to raw encode's vector "
        f"{float((raw * ours).sum(axis=1).min()):.6f}"
    )
    print(
        f"vector_index cold (cache, embed, upsert): {len(texts) / t_cold:6.1f} chunks/s ({t_cold:.1f} s), "
        f"{cold.embedded} embedded"
    )
    print(f"  throughput ratio (ours / raw encode): {t_raw / t_cold:.3f}x   target >= 0.95x")
    print(f"vector_index unchanged rerun: {t_warm:.3f} s, {warm.embedded} embedded, {warm.upserted} upserted")
    print(f"  rerun / cold: {t_warm / t_cold:.4f}x   target <= 0.1x")
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")

    # recall@5: functions with docstrings, queried with their docstring's first line
    targets = []
    for row in chunks.itertuples(index=False):
        if len(targets) >= 50:
            break
        if not row.symbol.startswith("def ") or "," in row.symbol:
            continue
        try:
            tree = ast.parse((src / row.path).read_text())
        except (SyntaxError, UnicodeDecodeError):
            continue
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and f"def {node.name}" == row.symbol:
                doc = ast.get_docstring(node)
                if doc and len(doc.split("\n", 1)[0].split()) >= 3:
                    targets.append((doc.split("\n", 1)[0], row.chunk_id, row.path, node.name))
                break
    vecs = model.embed([t[0] for t in targets])
    hits = query(col, vecs, 5)
    found = sum(1 for (q, cid, _, _), h in zip(targets, hits) if cid in {x.chunk_id for x in h})
    print(
        f"recall@5: {found}/{len(targets)} = {found / max(1, len(targets)):.2f}  "
        "(query: first docstring line; hit: the function's chunk in the top 5)"
    )
    misses = [(p, n) for (q, cid, p, n), h in zip(targets, hits) if cid not in {x.chunk_id for x in h}][:5]
    if misses:
        print("  e.g. missed: " + ", ".join(f"{p}:{n}" for p, n in misses))


if __name__ == "__main__":
    pd.set_option("display.width", 200)
    main()
