"""A dry run of ``rebuild``: what it would add, change, delete, embed and promote, writing nothing.

The plan runs the same code as the build where the build's decisions are made: the incremental scan
against the last manifest, the chunker against the last chunks table, the ids the vector store actually
holds, the embedding cache (opened read-only), the mass-deletion guard, and the golden content key. What
it cannot know without doing the work, it says: whether the dictionary drift check will retrain.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from nova_pipeline.core.errors import IndexNotBuiltError, MassDeletionError, NovaError
from nova_pipeline.core.index import lexical
from nova_pipeline.core.ingest.manifest import DELETED, STATUSES, scan
from nova_pipeline.core.ingest.walk import ScanOptions
from nova_pipeline.core.keys import SOURCE_CHUNKS, SOURCE_FILES
from nova_pipeline.core.protect import golden
from nova_pipeline.core.protect.guard import DeletionGuard
from nova_pipeline.core.settings import Settings
from nova_pipeline.core.tables import in_set, read_table

__all__ = ["Plan", "make_plan", "plan_table"]


@dataclass
class Plan:
    """What a rebuild would do. Counts are files, chunks or vectors as named."""

    source_dir: str
    files: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)
    files_lost: int = 0
    chunks: int = 0
    chunks_to_upsert: int = 0
    texts_to_embed: int = 0
    vectors_now: int | None = None
    vectors_to_delete: int = 0
    golden: str = ""
    ignored_dirs: dict[str, str] = field(default_factory=dict)  # "path/" -> the rule that ignores it
    ignored_files: dict[str, int] = field(default_factory=dict)  # rule -> files it ignores
    refusals: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def refused(self) -> bool:
        return bool(self.refusals)


def _cached_keys(home, fingerprint: str, keys: list[str]) -> set[str]:
    """Which ``keys`` the embedding cache holds (a missing cache holds none).

    Opened with :meth:`EmbeddingCache.read_only`: when the cache is at rest the plan writes nothing; rows a
    running (or killed) writer left in the ``-wal`` file still count.
    """
    from nova_pipeline.core.index.embedding_cache import EmbeddingCache

    path = EmbeddingCache.path_for(home, fingerprint)
    if not path.exists() or not keys:
        return set()
    db = EmbeddingCache.read_only(path)
    try:
        found: set[str] = set()
        for i in range(0, len(keys), 500):
            part = keys[i : i + 500]
            found.update(
                k
                for (k,) in db.execute(
                    f"SELECT key FROM vectors WHERE key IN ({','.join('?' * len(part))})", part
                )
            )
        return found
    finally:
        db.close()


def make_plan(settings: Settings, guard: DeletionGuard | None = None, fingerprint: str | None = None) -> Plan:
    """Plan a rebuild of ``settings.source_dir`` into ``settings.home`` without writing anything.

    Args:
        settings: as the pipeline's (``NOVA_SOURCE_DIR``, ``NOVA_HOME``, ``NOVA_IGNORE``,
            ``NOVA_CHROMA_URL``).
        guard: the mass-deletion guard the build would apply; its refusals are listed, not raised.
        fingerprint: the model fingerprint (default: the bundled model's, read without loading it).

    Raises:
        SettingsError: the source dir is unusable and nothing was indexed from it before.
    """
    from nova_pipeline.core.compression.store import ContentStore
    from nova_pipeline.core.index.chunking import chunk_manifest
    from nova_pipeline.core.index.embedding import Tokenizer, bundled_fingerprint
    from nova_pipeline.core.index.vector_store import (
        collection_name,
        existing_ids,
        fresh_client,
        get_collection,
    )
    from nova_pipeline.core.index.verification import embedded_ids

    guard = guard or DeletionGuard()
    home = settings.home
    plan = Plan(source_dir=str(settings.source_dir))
    previous = read_table(home, SOURCE_FILES)
    try:
        guard.check_source_dir(settings.source_dir, previous)
    except MassDeletionError as exc:
        plan.refusals.append(str(exc))
        return plan
    settings = Settings.build(settings.source_dir, home, ",".join(settings.ignore), settings.chroma_url)
    result = scan(
        ScanOptions(
            root=settings.source_dir,
            extra_ignore=settings.ignore,
            exclude_dirs=settings.state_dirs_to_exclude(),
        ),
        previous,
        known_binaries=read_table(home, "source_files_binaries"),
    )
    manifest = result.manifest
    plan.ignored_dirs = dict(sorted(result.stats.ignored_dirs.items()))
    plan.ignored_files = dict(result.stats.ignored_files.most_common())
    plan.files = {s: int((manifest["status"] == s).sum()) for s in STATUSES}
    plan.examples = {
        s: manifest.loc[manifest["status"] == s, "path"].head(5).tolist()
        for s in STATUSES
        if s != "unchanged"
    }
    try:
        plan.files_lost = guard.check_files(previous, manifest)
    except MassDeletionError as exc:
        plan.refusals.append(str(exc))

    from nova_pipeline.core.serving.model_switch import model_dir_for

    model_dir = model_dir_for(settings.home) if fingerprint is None else None
    fingerprint = fingerprint or bundled_fingerprint(model_dir)
    tok = Tokenizer(model_dir)
    chunks, _ = chunk_manifest(
        settings.source_dir,
        manifest,
        read_table(home, SOURCE_CHUNKS),
        tok.count,
        tok.max_seq_length,
        lines_add_up=tok.lines_add_up,
    )
    plan.chunks = len(chunks)
    have: set[str] = set()
    try:
        known = None if settings.chroma_url else embedded_ids(home, fingerprint)  # read-only, no Chroma
        if known is not None:
            have = known
        elif settings.chroma_url or (home / "vectors").exists():
            with fresh_client(home, settings.chroma_url, create=False, lock_timeout=30.0) as client:
                have = existing_ids(get_collection(client, fingerprint, create=False))
        plan.vectors_now = len(have)
    except IndexNotBuiltError:
        plan.vectors_now = 0
    except NovaError as exc:
        plan.notes.append(f"the vector store could not be read ({exc}): counts assume it is empty")
    todo = chunks[~in_set(chunks["chunk_id"], have)]
    plan.chunks_to_upsert = len(todo)
    texts = todo["content_blake3"].drop_duplicates().tolist()
    plan.texts_to_embed = len(texts) - len(_cached_keys(home, fingerprint, texts))
    plan.vectors_to_delete = len(have - set(chunks["chunk_id"]))
    try:
        guard.check_vectors(len(have), len(chunks), collection_name(fingerprint))
    except MassDeletionError as exc:
        plan.refusals.append(str(exc))

    from nova_pipeline.core.serving.model_switch import read_active

    active = read_active(home)
    active_fp = active.fingerprint if active else bundled_fingerprint()
    if fingerprint != active_fp:
        plan.notes.append(
            f"model change: {plan.chunks_to_upsert} chunks to embed into collection "
            f"{collection_name(fingerprint)}; {active_fp} keeps answering until nova model switch"
        )
    store = ContentStore(home)
    present = manifest[manifest["status"] != DELETED]
    dictionaries = sorted(store.dictionaries_in_use()) if store.index_path.exists() else []
    key = golden.content_key(
        fingerprint,
        golden.shard_digests(chunks["chunk_id"], chunks["path"], fingerprint),
        present["blake3"].drop_duplicates(),
        dictionaries,
        lexical.chunks_digest(chunks),  # the rebuild's lexical_index asset indexes exactly these chunks
    )
    cur = golden.current_version(home)
    if cur is not None and cur.content_key == key:
        plan.golden = f"no new version: CURRENT {cur.name} would still match"
    elif cur is None:
        plan.golden = "a first golden version would be promoted"
    else:
        plan.golden = f"a new golden version would replace CURRENT {cur.name}"
        try:
            guard.check_golden(cur.count, len(chunks), cur.name)
        except MassDeletionError as exc:
            plan.refusals.append(str(exc))
    plan.notes.append("the dictionary is retrained only if its held-out ratio drifts; the build decides")
    return plan


def plan_table(plan: Plan) -> pd.DataFrame:
    """The plan as ``what, count, e.g.`` rows, for a terminal or a Markdown table."""
    rows = [(f"files {s}", plan.files.get(s, 0), ", ".join(plan.examples.get(s, []))) for s in STATUSES]
    rows += [
        ("files lost (deleted, content gone)", plan.files_lost, ""),
        ("chunks", plan.chunks, ""),
        ("chunks to upsert", plan.chunks_to_upsert, ""),
        ("texts to embed (not cached)", plan.texts_to_embed, ""),
        ("vectors now", plan.vectors_now if plan.vectors_now is not None else "?", ""),
        ("vectors to delete", plan.vectors_to_delete, ""),
    ]
    return pd.DataFrame(rows, columns=["what", "count", "e.g."])
