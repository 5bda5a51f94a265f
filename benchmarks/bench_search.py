"""Retrieval quality and latency of search: vector-only, lexical-only and hybrid, on standard-library code.

The corpus is stdlib packages (real code nobody here wrote), about 5,000 chunks, indexed the way the
rebuild job indexes (core chunking, the real all-MiniLM-L6-v2 into embedded Chroma, the BM25 index), with
**every docstring removed from the indexed text** so a docstring query cannot match itself. Queries, each
with the chunks that answer it (the chunks whose line span holds the definition or the ``raise``):

* ``docstring``: the first line of a function's or method's docstring (at least 5 words, unique); every
  chunk of the function's body answers it;
* ``identifier``: the name of a class or function defined once in the corpus (``IgnoreRules``-style
  CamelCase or snake_case names of at least 6 characters);
* ``error``: the message of a ``raise SomeError("...")`` with a literal string of at least 3 words that
  appears once in the corpus.

It prints recall@1, @5 and @10 (the share of queries with an answering chunk in the top k) and MRR (mean of
1/rank of the first answering chunk, 0 when none is in the top 10) per mode and kind, with hits collapsed
(one per place, the default) and raw; vector-only is the anchor (what search was before hybrid). Then
repeated ``nova_pipeline.search()`` calls against ``Searcher.search`` in the same process (the warm API).
Then search latency p50/p95 per mode (query embedding included, model load excluded) at this size and at
about 50,000 chunks: the rest of the stdlib (tests included) added as distractors,
their vectors random unit vectors (a free embedder) so that building them takes a minute.

Usage: python benchmarks/bench_search.py [--per-kind 120] [--work DIR] [--large 50000] [--no-large]
``--work DIR`` keeps the homes (and their embedding caches) for a faster second run.
"""

from __future__ import annotations

import argparse
import ast
import os
import random
import re
import shutil
import statistics
import sys
import sysconfig
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

STDLIB = Path(sysconfig.get_paths()["stdlib"])
PACKAGES = [
    "json",
    "email",
    "http",
    "logging",
    "importlib",
    "concurrent",
    "urllib",
    "xml",
    "asyncio",
    "unittest",
    "tomllib",
    "sqlite3",
    "wsgiref",
    "html",
    "dbm",
    "zoneinfo",
    "collections",
    "multiprocessing",
]
KINDS = ["docstring", "identifier", "error"]
MODES = ["vector", "lexical", "hybrid"]
K = 10
_NAME_SHAPE = re.compile(r"^[A-Za-z][A-Za-z0-9]*(?:_[A-Za-z0-9]+)+$|^[A-Z][a-z0-9]+(?:[A-Z][a-z0-9]*)+$")


@dataclass
class Query:
    kind: str
    text: str
    path: str
    line: int  # in the indexed (docstring-free) file
    end: int = 0  # docstring queries: the function's last line (every chunk of its body answers)
    answers: set[str] = field(default_factory=set)


# ---- the corpus ----------------------------------------------------------------------------------


def docstring_spans(tree: ast.AST) -> list[tuple[int, int, ast.AST]]:
    """``(first line, last line, owner)`` of every module, class and function docstring on its own lines."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            ):
                if not isinstance(node, ast.Module) and first.lineno == node.lineno:
                    continue  # def f(): "doc" on one line
                out.append((first.lineno, first.end_lineno, node))
    return out


def strip_docstrings(source: str) -> str | None:
    """``source`` with every docstring removed (a ``pass`` where it was the whole body); None if it does not
    parse."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return None
    lines = source.splitlines(keepends=True)
    for start, end, node in sorted(docstring_spans(tree), key=lambda s: -s[0]):
        only = len(node.body) == 1 and not isinstance(node, ast.Module)
        indent = re.match(r"\s*", lines[start - 1]).group()
        lines[start - 1 : end] = [f"{indent}pass\n"] if only else []
    out = "".join(lines)
    try:
        ast.parse(out)
    except (SyntaxError, ValueError):
        return None
    return out


def qualified_defs(tree: ast.AST) -> dict[str, ast.AST]:
    """Qualified name (``Class.method``) → the def/class node, for top-level and class-level definitions."""
    out: dict[str, ast.AST] = {}

    def walk(body, prefix):
        for n in body:
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                q = f"{prefix}{n.name}"
                out[q] = n
                if isinstance(n, ast.ClassDef):
                    walk(n.body, q + ".")

    walk(tree.body, "")
    return out


def build_tree(dst: Path, target_chunks: int, tok) -> tuple[list[Query], list[Query], list[Query]]:
    """Copy the packages (docstrings removed) into ``dst``; return the candidate queries of each kind."""
    from nova_pipeline.core.index.chunking import chunk_file

    files = [
        p
        for pkg in PACKAGES
        for p in sorted((STDLIB / pkg).rglob("*.py"))
        if "test" not in p.relative_to(STDLIB).parts and "tests" not in p.relative_to(STDLIB).parts
    ]
    files += sorted(p for p in STDLIB.glob("*.py"))
    docs, idents, errors = [], [], []
    name_counts: Counter[str] = Counter()
    message_counts: Counter[str] = Counter()
    doc_counts: Counter[str] = Counter()
    chunks = 0
    for src in files:
        if chunks >= target_chunks:
            break
        rel = src.relative_to(STDLIB).as_posix()
        try:
            original = src.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        stripped = strip_docstrings(original)
        if stripped is None:
            continue
        out = dst / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(stripped, encoding="utf-8")
        chunks += len(chunk_file(rel, stripped.encode(), "python", tok.count, tok.max_seq_length))
        before, after = ast.parse(original), ast.parse(stripped)
        new_defs = qualified_defs(after)
        for q, node in qualified_defs(before).items():
            name_counts[node.name] += 1
            if isinstance(node, ast.ClassDef) or q not in new_defs:
                continue
            doc = ast.get_docstring(node)
            target = new_defs[q]
            only_pass = len(target.body) == 1 and isinstance(target.body[0], ast.Pass)
            if doc and not only_pass:
                first = doc.strip().splitlines()[0].strip()
                doc_counts[first] += 1
                if 5 <= len(first.split()) and len(first) <= 200:
                    docs.append(Query("docstring", first, rel, target.lineno, target.end_lineno))
        for node in new_defs.values():
            if len(node.name) >= 6 and not node.name.startswith("_") and _NAME_SHAPE.match(node.name):
                idents.append(Query("identifier", node.name, rel, node.lineno))
        for node in ast.walk(after):
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) and node.exc.args:
                arg = node.exc.args[0]
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    msg = " ".join(arg.value.split())
                    message_counts[msg] += 1
                    if len(msg.split()) >= 3 and len(msg) <= 150:
                        errors.append(Query("error", msg, rel, node.lineno))
    docs = [q for q in docs if doc_counts[q.text] == 1]
    idents = [q for q in idents if name_counts[q.text] == 1 and len(q.text) >= 6]
    errors = [q for q in errors if message_counts[q.text] == 1]
    return docs, idents, errors


def add_distractors(dst: Path, have: set[str], target_chunks: int, tok) -> int:
    """Copy the rest of the stdlib (tests included; again under ``copy-N/`` until ``target_chunks``), never
    the corpus's own files (``have``) with their docstrings."""
    from nova_pipeline.core.index.chunking import chunk_file

    files = sorted(p for p in STDLIB.rglob("*.py") if "site-packages" not in p.parts)
    corpus = set(have)
    added = 0
    rounds = 0
    while added < target_chunks and rounds < 4:
        for src in files:
            rel = src.relative_to(STDLIB).as_posix()
            if rel in corpus:
                continue
            if rounds:
                rel = f"copy-{rounds}/{rel}"
            try:
                data = src.read_bytes()
                data.decode("utf-8")
            except (UnicodeDecodeError, OSError):
                continue
            out = dst / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(data)
            added += len(chunk_file(rel, data, "python", tok.count, tok.max_seq_length))
            if added >= target_chunks:
                break
        rounds += 1
    return added


# ---- indexing ------------------------------------------------------------------------------------


class FreeEmbedder:
    """Random unit vectors at no cost, under the real model's fingerprint (for distractor chunks only)."""

    dimension = 384
    max_seq_length = 256

    def __init__(self, fingerprint: str):
        self.fingerprint = fingerprint
        self.rng = np.random.default_rng(0)

    def embed(self, texts):
        v = self.rng.standard_normal((len(texts), self.dimension)).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)


def index_home(src: Path, home: Path, embedder, tok):
    """Scan, chunk, embed (cache first) and BM25-index ``src`` into ``home``; the chunks table."""
    from nova_pipeline.core.index import lexical
    from nova_pipeline.core.index.chunking import chunk_manifest
    from nova_pipeline.core.index.embedding_cache import EmbeddingCache
    from nova_pipeline.core.index.reconcile import reconcile
    from nova_pipeline.core.index.vector_store import get_collection, open_client
    from nova_pipeline.core.ingest.manifest import scan
    from nova_pipeline.core.ingest.walk import ScanOptions
    from nova_pipeline.core.tables import write_table

    manifest = scan(ScanOptions(src)).manifest
    chunks, _ = chunk_manifest(src, manifest, None, tok.count, tok.max_seq_length)
    write_table(home, "source_chunks", chunks)
    cache = EmbeddingCache(home, embedder.fingerprint)
    started = time.perf_counter()
    stats = reconcile(get_collection(open_client(home), embedder.fingerprint), chunks, embedder, cache)
    cache.close()
    lex = lexical.update(home, chunks)
    print(
        f"  indexed {len(chunks):,} chunks: {stats.embedded:,} embedded, {stats.cache_hits:,} from the "
        f"cache in {time.perf_counter() - started:.1f} s; BM25 over {lex.vocabulary:,} terms in "
        f"{lex.seconds:.1f} s"
    )
    return chunks


def attach_answers(queries: list[Query], chunks) -> list[Query]:
    spans: dict[str, list[tuple[int, int, str]]] = {}
    for cid, path, start, end in zip(
        chunks["chunk_id"], chunks["path"], chunks["start_line"], chunks["end_line"]
    ):
        spans.setdefault(path, []).append((start, end, cid))
    out = []
    for q in queries:
        last = max(q.end, q.line)
        q.answers = {cid for s, e, cid in spans.get(q.path, []) if s <= last and q.line <= e}
        if q.answers:
            out.append(q)
    return out


# ---- measuring -----------------------------------------------------------------------------------


def evaluate(searcher, queries: list[Query], modes=MODES, collapse: bool = True) -> tuple[dict, dict]:
    """``(ranks, seconds)``: per mode, the rank (1-based, 0 if not in the top K) of each query's first answer,
    and the wall seconds of each search. A collapsed hit answers when any of its chunks does."""
    ranks = {m: [] for m in modes}
    seconds = {m: [] for m in modes}
    for m in modes:
        for q in queries:
            t = time.perf_counter()
            hits = searcher.search(q.text, K, mode=m, collapse=collapse).hits
            seconds[m].append(time.perf_counter() - t)
            rank = next(
                (i for i, h in enumerate(hits, 1) if q.answers & {h.chunk_id, *h.merged}),
                0,
            )
            ranks[m].append(rank)
    return ranks, seconds


def warm_api(searcher, queries: list[Query], home: Path, rounds: int = 40) -> None:
    """Repeated ``nova_pipeline.search()`` calls (the API a RAG loop calls) against ``Searcher.search`` on
    the same index in the same process, interleaved, per mode: the API keeps one warm Searcher."""
    import nova_pipeline

    os.environ["NOVA_HOME"] = str(home)
    os.environ.pop("NOVA_CHROMA_URL", None)
    texts = [q.text for q in queries[:rounds]]
    print("\nPython API, repeated calls vs one Searcher (same process, same queries, interleaved):")
    for m in ("vector", "hybrid"):
        nova_pipeline.search("warm up", K, mode=m)  # the first call loads the model and the indexes
        api, own = [], []
        for text in texts:
            t = time.perf_counter()
            nova_pipeline.search(text, K, mode=m)
            api.append(time.perf_counter() - t)
            t = time.perf_counter()
            searcher.search(text, K, mode=m)
            own.append(time.perf_counter() - t)
        a, o = statistics.median(api) * 1000, statistics.median(own) * 1000
        print(
            f"  {m:<7} nova_pipeline.search p50 {a:6.1f} ms   Searcher.search p50 {o:6.1f} ms   "
            f"ratio {a / o:.2f}x (target <= 1.2x: {'met' if a / o <= 1.2 else 'NOT met'})"
        )


def metrics(ranks: list[int]) -> dict:
    n = len(ranks) or 1
    return {
        "r@1": sum(1 for r in ranks if r == 1) / n,
        "r@5": sum(1 for r in ranks if 0 < r <= 5) / n,
        "r@10": sum(1 for r in ranks if 0 < r <= 10) / n,
        "mrr": sum(1 / r for r in ranks if r) / n,
    }


def print_quality(queries: list[Query], ranks: dict) -> dict:
    print(
        f"\n{'kind':<11} {'n':>4}  {'mode':<8} {'recall@1':>9} {'recall@5':>9} {'recall@10':>10} {'MRR':>7}"
        "   vs vector (r@5, MRR)"
    )
    table = {}
    for kind in KINDS + ["all"]:
        idx = [i for i, q in enumerate(queries) if kind in ("all", q.kind)]
        for m in MODES:
            r = metrics([ranks[m][i] for i in idx])
            table[(kind, m)] = r
            base = table.get((kind, "vector"))
            delta = (
                "" if m == "vector" else f"   {r['r@5'] - base['r@5']:+.3f}, {r['mrr'] - base['mrr']:+.3f}"
            )
            print(
                f"{kind:<11} {len(idx):>4}  {m:<8} {r['r@1']:>9.3f} {r['r@5']:>9.3f} {r['r@10']:>10.3f} "
                f"{r['mrr']:>7.3f}{delta}"
            )
    return table


def print_latency(label: str, seconds: dict) -> None:
    for m in MODES:
        ms = sorted(s * 1000 for s in seconds[m])
        p95 = ms[min(len(ms) - 1, int(round(0.95 * (len(ms) - 1))))]
        print(
            f"  {label:<24} {m:<8} p50 {statistics.median(ms):7.1f} ms   p95 {p95:7.1f} ms   "
            f"({len(ms)} queries)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--per-kind", type=int, default=120)
    parser.add_argument("--chunks", type=int, default=5000)
    parser.add_argument("--large", type=int, default=50000)
    parser.add_argument("--no-large", action="store_true")
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--show-misses", type=int, default=0)
    args = parser.parse_args()

    from nova_pipeline.core.index.embedding import SentenceTransformerEmbedder, Tokenizer
    from nova_pipeline.core.index.embedding_cache import EmbeddingCache
    from nova_pipeline.core.serving.searcher import Searcher
    from nova_pipeline.core.settings import Settings

    work = args.work or Path(tempfile.mkdtemp(prefix="bench_search_"))
    work.mkdir(parents=True, exist_ok=True)
    src, home = work / "src", work / "home"
    shutil.rmtree(src, ignore_errors=True)
    tok = Tokenizer()
    docs, idents, errors = build_tree(src, args.chunks, tok)
    embedder = SentenceTransformerEmbedder()
    print(f"corpus: {len(list(src.rglob('*.py')))} stdlib files, docstrings removed; {os.cpu_count()} cores")
    chunks = index_home(src, home, embedder, tok)
    rng = random.Random(0)
    queries = []
    for cands in (docs, idents, errors):
        cands = attach_answers(cands, chunks)
        queries += rng.sample(cands, min(args.per_kind, len(cands)))
    per_kind = ", ".join(f"{k} {sum(q.kind == k for q in queries)}" for k in KINDS)
    print(
        f"queries: {len(queries)} ({per_kind}); "
        f"answers per query: mean {np.mean([len(q.answers) for q in queries]):.2f} chunks"
    )

    settings = Settings.build(None, home, require_source=False)
    searcher = Searcher(settings, embedder)
    searcher.search("warm up", K, mode="hybrid")
    raw_ranks, _ = evaluate(searcher, queries, collapse=False)
    ranks, seconds = evaluate(searcher, queries)
    warm_api(searcher, queries, home)
    searcher.close()
    print("\nraw chunks (collapse off):")
    raw = print_quality(queries, raw_ranks)
    print("\none hit per place (collapse on, the default):")
    table = print_quality(queries, ranks)
    print("\ncollapse on vs off (recall@5, MRR):")
    for kind in KINDS + ["all"]:
        print(
            f"  {kind:<11} "
            + "   ".join(
                f"{m} {table[(kind, m)]['r@5'] - raw[(kind, m)]['r@5']:+.3f}, "
                f"{table[(kind, m)]['mrr'] - raw[(kind, m)]['mrr']:+.3f}"
                for m in MODES
            )
        )
    targets = [
        (
            "collapsing lowers no kind's recall@5 in any mode",
            all(table[(k, m)]["r@5"] >= raw[(k, m)]["r@5"] for k in KINDS for m in MODES),
        ),
        ("hybrid recall@5 on docstring queries >= 0.90", table[("docstring", "hybrid")]["r@5"] >= 0.90),
        ("hybrid recall@5 on identifier queries >= 0.95", table[("identifier", "hybrid")]["r@5"] >= 0.95),
        ("hybrid recall@5 on error queries >= 0.95", table[("error", "hybrid")]["r@5"] >= 0.95),
    ] + [
        (f"hybrid beats vector on {k} (MRR)", table[(k, "hybrid")]["mrr"] > table[(k, "vector")]["mrr"])
        for k in KINDS
    ]
    print()
    for what, ok in targets:
        print(f"  target: {what}: {'met' if ok else 'NOT met'}")
    if args.show_misses:
        for m in ("hybrid",):
            missed = [(q, r) for q, r in zip(queries, ranks[m]) if r == 0 or r > 5]
            print(f"\n{m} misses (rank > 5), first {args.show_misses}:")
            for q, r in missed[: args.show_misses]:
                print(f"  [{q.kind}] {q.text[:90]!r} -> {q.path}:{q.line} (rank {r or '>10'})")

    print("\nlatency (query embedding included, model loaded before):")
    print_latency(f"{len(chunks):,} chunks", seconds)
    if args.no_large:
        return
    big_src, big_home = work / "src_large", work / "home_large"
    if not big_home.exists():
        shutil.copytree(src, big_src, dirs_exist_ok=True)
        add_distractors(
            big_src,
            {p.relative_to(big_src).as_posix() for p in big_src.rglob("*.py")},
            args.large - len(chunks),
            tok,
        )
        big_home.mkdir(parents=True)
        # the corpus's real vectors come from its cache; the distractors get free random vectors
        cache_path = EmbeddingCache.path_for(big_home, embedder.fingerprint)
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(EmbeddingCache.path_for(home, embedder.fingerprint), cache_path)
    big_chunks = index_home(big_src, big_home, FreeEmbedder(embedder.fingerprint), tok)
    big = Searcher(Settings.build(None, big_home, require_source=False), embedder)
    big.search("warm up", K, mode="hybrid")
    big_queries = attach_answers([Query(q.kind, q.text, q.path, q.line, q.end) for q in queries], big_chunks)
    big_ranks, big_seconds = evaluate(big, big_queries)
    big.close()
    print_latency(f"{len(big_chunks):,} chunks", big_seconds)
    print(f"\nquality with {len(big_chunks) - len(chunks):,} distractor chunks (random vectors) added:")
    print_quality(big_queries, big_ranks)
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
