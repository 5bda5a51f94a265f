"""The two blocking checks of ``vector_index``, evaluated in its last op (``finish_vector_index``): one
vector per chunk, and a sample of chunks that find themselves first. Logic:
:mod:`nova_pipeline.core.index.verification`; a pass is recorded, so an unchanged rebuild need not open
Chroma to report it again.
"""

import dagster as dg
import pandas as pd

from nova_pipeline.core.index.embedding_cache import EmbeddingCache
from nova_pipeline.core.index.verification import VerifiedRecord, count_failures, self_retrieval_failures
from nova_pipeline.core.keys import VECTOR_INDEX

COUNT_CHECK = dg.AssetCheckSpec(
    "vector_count_matches_chunks",
    asset=VECTOR_INDEX,
    blocking=True,
    description="The collection holds one vector per chunk.",
)
SELF_CHECK = dg.AssetCheckSpec(
    "chunks_find_themselves",
    asset=VECTOR_INDEX,
    blocking=True,
    description="A sample of chunks each find themselves as the top-1 result.",
)
CHECK_NAMES = (COUNT_CHECK.name, SELF_CHECK.name)


def vector_count_matches_chunks(
    collection, chunks: pd.DataFrame, verified: VerifiedRecord, digest: str, state: str | None, run_id: str
) -> dg.AssetCheckResult:
    """One vector per chunk (:func:`~nova_pipeline.core.index.verification.count_failures`): fails naming up
    to three chunks with no vector and three vectors that are no chunk's. A pass is recorded in
    ``verified``."""
    count, missing, extra, named = count_failures(collection, chunks)
    if not named:
        verified.record(COUNT_CHECK.name, digest, state, run_id, count=count)
        return dg.AssetCheckResult(
            check_name=COUNT_CHECK.name,
            passed=True,
            metadata={"vectors": count, "chunks": len(chunks), "verified": "counted now"},
        )
    return dg.AssetCheckResult(
        check_name=COUNT_CHECK.name,
        passed=False,
        metadata={
            "vectors": count,
            "chunks": len(chunks),
            "missing": missing,
            "extra": extra,
            "verified": "counted now",
        },
        description=f"{collection.name} holds {count} vectors for {len(chunks)} chunks: " + "; ".join(named),
    )


def chunks_find_themselves(
    collection,
    chunks: pd.DataFrame,
    home,
    fingerprint: str,
    sample: int,
    verified: VerifiedRecord,
    digest: str,
    state: str | None,
    run_id: str,
) -> dg.AssetCheckResult:
    """``sample`` chunks queried with their own cached embedding each come back first
    (:func:`~nova_pipeline.core.index.verification.self_retrieval_failures`); fails naming the first three
    that did not. A pass is recorded in ``verified``."""
    cache = EmbeddingCache(home, fingerprint)
    try:
        checked, failures = self_retrieval_failures(collection, chunks, cache, sample)
    finally:
        cache.close()
    if not failures:
        verified.record(SELF_CHECK.name, digest, state, run_id, checked=checked)
    return dg.AssetCheckResult(
        check_name=SELF_CHECK.name,
        passed=not failures,
        metadata={"checked": checked, "failures": len(failures), "verified": "queried now"},
        description="; ".join(failures[:3]) if failures else None,
    )
