"""Anchors that several benchmarks measure in their own run (imported from ``benchmarks/``: a script's own
directory is first on ``sys.path``)."""

from __future__ import annotations

import time
from pathlib import Path


def raw_encode_rate(
    texts: list[str], model_dir: Path | None = None, threads: int = 0, normalize: bool = True
) -> float:
    """Texts/s of plain ``SentenceTransformer.encode`` (batch 32) of ``texts``, the model (default: the
    bundled all-MiniLM-L6-v2) already loaded and warmed on 32 texts; all cores unless ``threads``."""
    import torch
    from sentence_transformers import SentenceTransformer

    from nova_pipeline.core.index.embedding import bundled_model_dir

    if threads:
        torch.set_num_threads(threads)
    model = SentenceTransformer(str(model_dir or bundled_model_dir()), device="cpu")
    model.encode(texts[:32], batch_size=32)
    started = time.perf_counter()
    model.encode(texts, batch_size=32, normalize_embeddings=normalize)
    return len(texts) / (time.perf_counter() - started)
