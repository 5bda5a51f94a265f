"""Verifying golden versions: every file against the manifest, the export without a vector database,
and the export opened in a throwaway Chroma store in a subprocess (``python -m
nova_pipeline.core.protect.golden.verify open-check VERSION_DIR``), where a crash of the vector library is a
failed check, not a crashed caller.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import blake3
import numpy as np
import pyarrow as pa

from nova_pipeline.core.index.vector_store import (
    open_client_at,
)
from nova_pipeline.core.protect.golden.export import (
    embedding_matrix,
    export_files,
    import_export,
    lexical_failures,
    read_shard,
)
from nova_pipeline.core.protect.golden.versions import LEXICAL_DIR, MANIFEST

__all__ = ["open_check", "open_check_in_subprocess", "verify_export", "verify_tree", "verify_with_cache"]


def _file_digest(path: Path) -> str:
    h = blake3.blake3(max_threads=blake3.blake3.AUTO)
    with open(path, "rb") as fh:
        while block := fh.read(4 * 2**20):
            h.update(block)
    return h.hexdigest()


def verify_tree(root: Path, manifest: dict[str, dict] | None = None) -> list[str]:
    """Check every file of ``root`` against its manifest; one message per missing, changed or extra file."""
    root = Path(root)
    if manifest is None:
        try:
            manifest = json.loads((root / MANIFEST).read_text())["files"]
        except FileNotFoundError:
            return [f"{root / MANIFEST} is missing: {root} is not a committed golden version"]
        except (ValueError, KeyError) as exc:
            return [f"{root / MANIFEST} is unreadable ({exc})"]
    failures = []
    for rel, want in manifest.items():
        p = root / rel
        if not p.is_file():
            failures.append(f"{p} is missing")
        elif p.stat().st_size != want["size"] or _file_digest(p) != want["blake3"]:
            failures.append(f"{p} was changed: its blake3 does not match {MANIFEST}")
    for p in root.rglob("*"):
        if p.is_file() and p.name != MANIFEST and p.relative_to(root).as_posix() not in manifest:
            failures.append(f"{p} is not in {MANIFEST}")
    return failures


def verify_export(
    version_dir: Path, sample: int = 25, seed: int = 0, cache=None, known: dict[str, dict] | None = None
) -> dict:
    """Check a version's export without a vector database.

    Every shard must be readable, ids unique, vectors finite with one dimension, the row count equal to
    ``model.json``'s count; ``sample`` vectors must each find themselves (or an identical vector: a
    duplicated text) as the exact nearest neighbour by cosine over every shard (a brute-force scan, one
    shard in memory at a time); and when ``cache`` (the :class:`EmbeddingCache` of the version's model) is
    given, each sampled vector must equal the cached vector of its content (the cache is what the model
    produced, so a vector damaged between the model and the export is caught).

    ``known``: facts of export files already verified in an earlier version with the same bytes (``{file
    relative to the version: {"rows", "dim", "max_norm"}}``, the ``shards`` this function returned then;
    the promotion passes those of CURRENT's files it linked). Their ids are still read (count, uniqueness,
    the lexical index), but the sample is drawn from the other files only, and a known file's vectors are
    read only when its largest norm could let one of them beat a sampled vector: by Cauchy-Schwarz,
    ``v . q <= max_norm * |q|``, which for unit vectors never exceeds ``q . q``. After a one-file edit, one
    shard of 64 is read instead of every shard (3.8 s at 342,997 vectors under cProfile).

    Returns:
        ``{"count": int, "expected": int, "failures": [str], "shards": {file: {"rows", "dim", "max_norm"}},
        "scanned": int}``: ``shards`` holds the facts of every export file (read now, or ``known``) when
        there is no failure; ``scanned`` counts the files whose vectors were read.
    """
    version_dir = Path(version_dir)
    known = known or {}
    failures: list[str] = []
    try:
        model = json.loads((version_dir / "model.json").read_text())
    except (OSError, ValueError) as exc:
        return {
            "count": -1,
            "expected": -1,
            "failures": [f"{version_dir / 'model.json'} is unreadable: {exc}"],
        }
    files = export_files(version_dir)
    names = [f.relative_to(version_dir).as_posix() for f in files]
    ids_per_file: list[list[str]] = []
    for f in files:
        try:
            ids_per_file.append(read_shard(f, ["id"]).column("id").to_pylist())
        except (OSError, pa.ArrowException) as exc:
            failures.append(f"{f} is unreadable: {exc}")
            ids_per_file.append([])
    count = sum(len(i) for i in ids_per_file)
    if count != model["count"]:
        failures.append(f"the export holds {count} vectors, model.json says {model['count']}")
    all_ids = [i for ids in ids_per_file for i in ids]
    if len(set(all_ids)) != len(all_ids):
        failures.append(f"the export repeats {len(all_ids) - len(set(all_ids))} ids")
    if (version_dir / LEXICAL_DIR / "meta.json").exists():  # the BM25 index must cover exactly the export
        failures += lexical_failures(version_dir, all_ids)
    if failures or count == 0:
        return {"count": count, "expected": model["count"], "failures": failures}
    facts = {
        n: known[n] for n, ids in zip(names, ids_per_file) if n in known and known[n].get("rows") == len(ids)
    }
    rng = np.random.default_rng(seed)
    offsets = np.cumsum([0] + [len(i) for i in ids_per_file])
    pool = np.concatenate(
        [np.arange(offsets[fi], offsets[fi + 1]) for fi, n in enumerate(names) if n not in facts] or [[]]
    ).astype(np.int64)
    picks = sorted(rng.choice(pool, size=min(sample, len(pool)), replace=False).tolist()) if len(pool) else []
    queries, query_ids, query_content = [], [], []
    for fi, f in enumerate(files):
        rows = [p - offsets[fi] for p in picks if offsets[fi] <= p < offsets[fi + 1]]
        if rows:
            t = read_shard(f, ["embedding", "metadata"])
            queries.append(embedding_matrix(t)[rows])
            query_ids += [ids_per_file[fi][r] for r in rows]
            metas = t.column("metadata").to_pylist()
            query_content += [json.loads(metas[r]).get("content_blake3", "") for r in rows]
    q = np.concatenate(queries) if queries else np.zeros((0, 0), dtype=np.float32)
    if cache is not None and len(q):
        cached = cache.get_many([c for c in query_content if c])
        for vec, cid, content in zip(q, query_ids, query_content):
            if content in cached and not np.allclose(cached[content], vec, atol=1e-6):
                failures.append(
                    f"chunk {cid}: its vector differs from the embedding cache's vector of its content"
                )
    self_sim = np.einsum("ij,ij->i", q, q)
    q_norm = np.sqrt(self_sim)
    best = np.full(len(q), -np.inf)
    best_id: list[str] = [""] * len(q)
    scanned = 0
    for fi, f in enumerate(files):
        k = facts.get(names[fi])
        if k is not None and (
            not len(q) or (k["dim"] == q.shape[1] and np.all(k["max_norm"] * q_norm <= self_sim + 1e-5))
        ):
            continue  # verified before, and none of its vectors can beat a sampled one
        mat = embedding_matrix(read_shard(f, ["embedding"]))
        scanned += 1
        if not len(mat):
            facts[names[fi]] = {"rows": 0, "dim": 0, "max_norm": 0.0}
            continue
        if (len(q) and mat.shape[1] != q.shape[1]) or not np.isfinite(mat).all():
            failures.append(f"{f} holds vectors of dimension {mat.shape[1]} or non-finite values")
            continue
        facts[names[fi]] = {
            "rows": len(mat),
            "dim": int(mat.shape[1]),
            "max_norm": float(np.sqrt(np.einsum("ij,ij->i", mat, mat).max())),
        }
        if not len(q):
            continue
        sims = mat @ q.T
        top = sims.argmax(axis=0)
        for j, (row, val) in enumerate(zip(top, sims[top, np.arange(len(q))])):
            if val > best[j]:
                best[j], best_id[j] = val, ids_per_file[fi][row]
    if len({v["dim"] for v in facts.values() if v["rows"]}) > 1:
        failures.append("the export's files hold vectors of different dimensions")
    for j, want in enumerate(query_ids):
        if best_id[j] != want and best[j] > self_sim[j] + 1e-5:
            failures.append(f"chunk {want} did not find itself first (found {best_id[j]})")
    out = {"count": count, "expected": model["count"], "failures": failures, "scanned": scanned}
    if not failures:
        out["shards"] = facts
    return out


def open_check(version_dir: Path, sample: int = 5) -> dict:
    """Load a version's export into a throwaway Chroma store and check count and self-retrieval.

    The proof that a restored copy works in the vector database itself; meant to run in a subprocess
    (:func:`open_check_in_subprocess`) because a crash in the vector library must not take the caller down.

    Returns:
        ``{"count": int, "expected": int, "failures": [str]}``.
    """
    version_dir = Path(version_dir)
    model = json.loads((version_dir / "model.json").read_text())
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="nova-open-check-") as tmp:
        client = open_client_at(Path(tmp) / "vectors")
        col = client.get_or_create_collection(
            model["collection"], configuration={"hnsw": {"space": "cosine"}}, embedding_function=None
        )
        import_export(col, version_dir)
        count = col.count()
        if count != model["count"]:
            failures.append(f"{model['collection']} holds {count} vectors, model.json says {model['count']}")
        files = [f for f in export_files(version_dir) if read_shard(f, ["id"]).num_rows]
        for f in files[:sample]:
            t = read_shard(f).slice(0, 1)
            vec = embedding_matrix(t)
            res = col.query(query_embeddings=vec, n_results=1, include=["embeddings"])
            want = t.column("id")[0].as_py()
            got = res["ids"][0]
            # another id is fine when it holds the same vector (the same text at another place)
            if not got or (got[0] != want and not np.allclose(res["embeddings"][0][0], vec[0], atol=1e-6)):
                failures.append(f"chunk {want} did not retrieve itself (got {got[0] if got else 'nothing'})")
    return {"count": count, "expected": model["count"], "failures": failures}


def open_check_in_subprocess(version_dir: Path, timeout: float = 600) -> dict:
    """:func:`open_check` in a separate Python process; a crash there is a failure here, not a crash."""
    proc = subprocess.run(
        [sys.executable, "-m", "nova_pipeline.core.protect.golden.verify", "open-check", str(version_dir)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "ANONYMIZED_TELEMETRY": "False"},
    )
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {
            "count": -1,
            "expected": -1,
            "failures": [
                f"opening {version_dir} crashed the checker (exit {proc.returncode}): {' | '.join(tail)}"
            ],
        }
    return json.loads(proc.stdout.strip().splitlines()[-1])


def verify_with_cache(
    stage: Path, home: Path, fingerprint: str, known: dict[str, dict] | None = None
) -> dict:
    """:func:`verify_export` of ``stage`` with the embedding cache of ``fingerprint`` under ``home``, when
    there is one; ``known`` as there."""
    from nova_pipeline.core.index.embedding_cache import EmbeddingCache

    if not EmbeddingCache.path_for(home, fingerprint).exists():
        return verify_export(stage, known=known)
    cache = EmbeddingCache(home, fingerprint)
    try:
        return verify_export(stage, cache=cache, known=known)
    finally:
        cache.close()


def _main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "open-check":
        print(json.dumps(open_check(Path(argv[1]))))
        return 0
    print("usage: python -m nova_pipeline.core.protect.golden.verify open-check VERSION_DIR", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
