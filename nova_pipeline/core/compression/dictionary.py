"""zstd dictionary training, held-out measurement, and the dictionary registry (``NOVA_HOME/dictionaries``).

Training uses zstd's own trainer through python-zstandard (``train_dictionary``: fastCover with its
parameter search, the same trainer ``zstd --train`` runs). The sample is bounded to about 100x the
dictionary size, the ratio zstd's documentation recommends ("total size of all samples be about ~x100
times the target size of dictionary", ``zdict.h``); only the first 128 KiB of each file is used, as zstd's
CLI does, because a dictionary helps only the start of a frame.

The frequent patterns are deliberately *not* used to seed the dictionary: a mined raw-content dictionary
reached only 62-86% of COVER's saving on the same corpus (DESIGN.md, section 4).

Files are split into training and held-out sets by their blake3 (about 20% held out), so the split is
stable from run to run and a file never moves between the sets unless its content changes.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import blake3
import zstandard as zstd

from nova_pipeline.core.atomic import atomic_write_bytes
from nova_pipeline.core.errors import DictionaryError
from nova_pipeline.core.layout import Layout

__all__ = [
    "DEFAULT_DICT_SIZE",
    "HELDOUT_BUDGET",
    "MIN_SAMPLES",
    "NO_DICTIONARY",
    "SAMPLE_FACTOR",
    "SAMPLE_MAX_BYTES",
    "DictionaryInfo",
    "DictionaryOptions",
    "DictionaryRegistry",
    "build_for_tree",
    "build_or_keep",
    "choose_sample",
    "compressor",
    "heldout_ratio",
    "is_heldout",
    "train",
]

log = logging.getLogger(__name__)

DEFAULT_DICT_SIZE = 112_640  # zstd CLI's default --maxdict (110 KiB)
SAMPLE_FACTOR = 100
SAMPLE_MAX_BYTES = 128 * 1024
MIN_SAMPLES = 8
NO_DICTIONARY = ""  # blake3 of "no dictionary": frames are compressed without one


@dataclass(frozen=True)
class DictionaryOptions:
    """Training settings.

    Attributes:
        dict_size: target dictionary size, bytes.
        level: zstd level for the held-out measurement (use the store's level).
        heldout_percent: share of contents kept out of training, percent.
        drift_threshold: retrain when the held-out ratio falls by more than this share (0.05 = 5%).
    """

    dict_size: int = DEFAULT_DICT_SIZE
    level: int = 3
    heldout_percent: int = 20
    drift_threshold: float = 0.05


@dataclass
class DictionaryInfo:
    """What the registry records about the current dictionary (``current.json``).

    ``blake3`` is :data:`NO_DICTIONARY` when the corpus was too small to train one. Ratios are raw bytes
    over compressed bytes on the held-out files, per-file frames, at ``level``.
    """

    blake3: str
    dict_id: int
    size: int
    level: int
    trained_at: float
    training_seconds: float
    samples: int
    sample_bytes: int
    heldout_key: str
    heldout_files: int
    heldout_bytes: int
    ratio_with: float
    ratio_without: float
    reason: str = ""

    @property
    def gain(self) -> float:
        """Held-out ratio with the dictionary over the ratio without it."""
        return self.ratio_with / self.ratio_without if self.ratio_without else 0.0


def is_heldout(digest: str, percent: int) -> bool:
    """Whether a content (by blake3 hex) belongs to the held-out set."""
    return int(digest[:8], 16) % 100 < percent


def _split_heldout(digests: Sequence[str], percent: int) -> tuple[list[int], list[int]]:
    """Indices of ``digests`` in the training and the held-out set."""
    train, held = [], []
    for i, d in enumerate(digests):
        (held if is_heldout(d, percent) else train).append(i)
    return train, held


def choose_sample(contents: Sequence[bytes], digests: Sequence[str], budget: int) -> list[bytes]:
    """A deterministic training sample: contents in blake3 order, each cut to 128 KiB, up to ``budget``
    bytes."""
    out, total = [], 0
    for _, data in sorted(zip(digests, contents), key=lambda t: t[0]):
        if total >= budget:
            break
        piece = data[:SAMPLE_MAX_BYTES]
        if piece:
            out.append(piece)
            total += len(piece)
    return out


def train(samples: Sequence[bytes], dict_size: int, level: int) -> bytes:
    """Train a zstd dictionary: fastCover searching k with d=8 and 4 steps on all cores, the parameters
    ``ZDICT_trainFromBuffer`` (and so ``zstd --train``) uses.

    Raises:
        DictionaryError: zstd refused the samples (too few or too small); the message says so.
    """
    try:
        d = zstd.train_dictionary(dict_size, list(samples), level=level, d=8, steps=4, threads=-1)
    except zstd.ZstdError as exc:
        raise DictionaryError(
            f"zstd could not train a {dict_size}-byte dictionary from {len(samples)} samples "
            f"({sum(map(len, samples)):,} bytes): {exc}"
        ) from exc
    return d.as_bytes()


def compressor(dict_bytes: bytes | None, level: int) -> zstd.ZstdCompressor:
    """The store's compressor: no frame checksum (the blake3 key verifies content), dict id and size kept."""
    kwargs = dict(level=level, write_checksum=False, write_content_size=True, write_dict_id=True)
    if dict_bytes:
        kwargs["dict_data"] = zstd.ZstdCompressionDict(dict_bytes)
    return zstd.ZstdCompressor(**kwargs)


def heldout_ratio(contents: Sequence[bytes], dict_bytes: bytes | None, level: int) -> float:
    """Raw bytes over compressed bytes, one frame per content."""
    if not contents:
        return 0.0
    c = compressor(dict_bytes, level)
    raw = sum(len(x) for x in contents)
    out = sum(len(c.compress(x)) for x in contents)
    return raw / out if out else 0.0


class DictionaryRegistry:
    """Dictionaries named by their blake3 under ``<home>/dictionaries``, and the ``current.json`` pointer.

    A dictionary file is written before the pointer that names it, both atomically; the pointer is the
    commit marker. Old dictionaries stay as long as the store refers to them.
    """

    def __init__(self, home: Path):
        self.dir = Layout.of(home).dictionaries

    def path(self, digest: str) -> Path:
        return self.dir / f"{digest}.zdict"

    def current(self) -> DictionaryInfo | None:
        """The current dictionary's record, or None before the first training."""
        try:
            raw = json.loads((self.dir / "current.json").read_text())
        except FileNotFoundError:
            return None
        except ValueError as exc:
            raise DictionaryError(
                f"{self.dir / 'current.json'} is not valid JSON ({exc}); delete it to retrain"
            ) from exc
        return DictionaryInfo(**raw)

    def load(self, digest: str) -> bytes | None:
        """Dictionary bytes by blake3 (None for :data:`NO_DICTIONARY`), verified.

        Raises:
            DictionaryError: the file is missing or does not match its name.
        """
        if digest == NO_DICTIONARY:
            return None
        path = self.path(digest)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise DictionaryError(
                f"dictionary {path} is missing; restore it from a backup or rebuild the store"
            ) from None
        if blake3.blake3(data).hexdigest() != digest:
            raise DictionaryError(f"dictionary {path} does not match its blake3 name: it is corrupt")
        return data

    def by_dict_id(self) -> dict[int, str]:
        """``{zstd dict_id: blake3}`` of every stored dictionary."""
        out = {}
        for f in self.dir.glob("*.zdict"):
            out[zstd.ZstdCompressionDict(f.read_bytes()).dict_id()] = f.stem
        return out

    def save(self, dict_bytes: bytes | None, info: DictionaryInfo) -> None:
        """Store the dictionary (if any), then switch ``current.json`` to ``info``."""
        self.dir.mkdir(parents=True, exist_ok=True)
        if dict_bytes:
            if not self.path(info.blake3).exists():
                atomic_write_bytes(self.path(info.blake3), dict_bytes)
        atomic_write_bytes(self.dir / "current.json", json.dumps(asdict(info), indent=1).encode())

    def remove_unreferenced(self, referenced: set[str]) -> int:
        """Delete dictionaries neither current nor in ``referenced``; returns how many."""
        cur = self.current()
        keep = set(referenced) | ({cur.blake3} if cur else set())
        n = 0
        for f in self.dir.glob("*.zdict"):
            if f.stem not in keep:
                f.unlink()
                n += 1
        return n


def _heldout_key(heldout_digests: Sequence[str], dict_digest: str, level: int) -> str:
    """Identity of a held-out measurement: the held-out contents, the dictionary and the level."""
    body = ",".join(sorted(heldout_digests)) + f"|{dict_digest}|{level}"
    return blake3.blake3(body.encode()).hexdigest()


def build_or_keep(
    train_contents: Sequence[bytes],
    train_digests: Sequence[str],
    heldout_contents: Sequence[bytes],
    heldout_digests: Sequence[str],
    registry: DictionaryRegistry,
    options: DictionaryOptions,
) -> tuple[DictionaryInfo, str]:
    """Keep the current dictionary unless the corpus drifted; otherwise train and register a new one.

    Returns:
        ``(info, action)`` where action is ``"unchanged"`` (nothing measured: same held-out set and
        dictionary), ``"kept"`` (measured, no drift), ``"trained"`` or ``"no_dictionary"`` (too little
        data to train).

    Raises:
        DictionaryError: the registry is unreadable.
    """
    current = registry.current()
    if current is not None and current.size <= options.dict_size and current.level == options.level:
        key = _heldout_key(heldout_digests, current.blake3, options.level)
        if key == current.heldout_key:
            return current, "unchanged"
        if current.blake3 != NO_DICTIONARY:
            dict_bytes = registry.load(current.blake3)
            ratio_now = heldout_ratio(heldout_contents, dict_bytes, options.level)
            if ratio_now >= current.ratio_with * (1 - options.drift_threshold):
                current.heldout_key = key
                current.heldout_files = len(heldout_contents)
                current.heldout_bytes = sum(map(len, heldout_contents))
                current.ratio_with = ratio_now
                current.ratio_without = heldout_ratio(heldout_contents, None, options.level)
                registry.save(None, current)
                return current, "kept"
            log.info("held-out ratio fell from %.3f to %.3f: retraining", current.ratio_with, ratio_now)

    budget = options.dict_size * SAMPLE_FACTOR
    sample = choose_sample(train_contents, train_digests, budget)
    sample_bytes = sum(map(len, sample))
    ratio_without = heldout_ratio(heldout_contents, None, options.level)
    # Ask for no more than a tenth of the sample: zstd's trainer needs samples well above the dict size.
    dict_size = min(options.dict_size, sample_bytes // 10)
    started = time.perf_counter()
    dict_bytes: bytes | None = None
    reason = ""
    if len(sample) < MIN_SAMPLES or dict_size < 1024:
        reason = f"{len(sample)} samples, {sample_bytes:,} bytes: too little to train a dictionary"
    else:
        try:
            dict_bytes = train(sample, dict_size, options.level)
        except DictionaryError as exc:
            reason = str(exc)
    seconds = time.perf_counter() - started
    if dict_bytes is None:
        log.warning("no dictionary: %s", reason)
        info = DictionaryInfo(
            blake3=NO_DICTIONARY,
            dict_id=0,
            size=0,
            level=options.level,
            trained_at=time.time(),
            training_seconds=seconds,
            samples=len(sample),
            sample_bytes=sample_bytes,
            heldout_key=_heldout_key(heldout_digests, NO_DICTIONARY, options.level),
            heldout_files=len(heldout_contents),
            heldout_bytes=sum(map(len, heldout_contents)),
            ratio_with=ratio_without,
            ratio_without=ratio_without,
            reason=reason,
        )
        registry.save(None, info)
        return info, "no_dictionary"
    digest = blake3.blake3(dict_bytes).hexdigest()
    info = DictionaryInfo(
        blake3=digest,
        dict_id=zstd.ZstdCompressionDict(dict_bytes).dict_id(),
        size=len(dict_bytes),
        level=options.level,
        trained_at=time.time(),
        training_seconds=seconds,
        samples=len(sample),
        sample_bytes=sample_bytes,
        heldout_key=_heldout_key(heldout_digests, digest, options.level),
        heldout_files=len(heldout_contents),
        heldout_bytes=sum(map(len, heldout_contents)),
        ratio_with=heldout_ratio(heldout_contents, dict_bytes, options.level),
        ratio_without=ratio_without,
    )
    registry.save(dict_bytes, info)
    return info, "trained"


HELDOUT_BUDGET = 32 * 1024 * 1024


def build_for_tree(
    unique: Sequence[tuple[str, str]], registry: DictionaryRegistry, options: DictionaryOptions
) -> tuple[DictionaryInfo, str, int]:
    """Run :func:`build_or_keep` over a tree's unique contents ``[(blake3, path)]`` in blake3 order.

    Reads only the training sample (about 100x the dictionary size) and up to 32 MB of held-out files.

    Returns:
        ``(info, action, skipped)``, skipped counting files that changed or vanished since the scan.
    """
    from nova_pipeline.core.ingest.manifest import read_verified

    train_items = [(p, d) for d, p in unique if not is_heldout(d, options.heldout_percent)]
    held_items = [(p, d) for d, p in unique if is_heldout(d, options.heldout_percent)]
    train_pairs, skip_a = read_verified(train_items, budget=options.dict_size * SAMPLE_FACTOR)
    held_pairs, skip_b = read_verified(held_items, budget=HELDOUT_BUDGET)
    info, action = build_or_keep(
        [c for _, c in train_pairs],
        [d for d, _ in train_pairs],
        [c for _, c in held_pairs],
        [d for d, _ in held_pairs],
        registry,
        options,
    )
    return info, action, skip_a + skip_b
