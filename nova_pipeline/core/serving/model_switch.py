"""Which embedding model answers, and switching it without downtime.

Each model has its own collection: the collection name is the model's fingerprint (a blake3 of its
weights, sequence length and normalisation; :func:`~nova_pipeline.core.index.embedding.model_fingerprint`),
and so are the embedding cache and the golden export's shards. Vectors of two models never mix, and the
old collection keeps answering while the new one is built beside it:

1. ``nova model build --model-dir D`` materializes ``vector_index`` alone with model ``D`` (its checks
   included): every chunk is embedded again (the cache is per model) into ``D``'s collection. Searches,
   rebuilds and the golden copy stay on the active model meanwhile.
2. ``nova model switch --model-dir D`` verifies ``D``'s files (:mod:`~nova_pipeline.core.index.model_files`)
   and that its collection holds exactly the chunk ids of ``source_chunks``, then writes
   ``NOVA_HOME/models/active.json`` atomically, with an audit line. A long-running searcher
   (:class:`FollowingSearcher`: ``nova serve``, ``nova mcp``) sees the new pointer within a second, loads
   the new model beside the old one, warms it, and swaps; queries in flight finish on the old one. The next
   rebuild embeds with ``D`` and promotes a golden version of it (the failover backup follows).

Which model a process uses: ``NOVA_EMBED_MODEL`` when set (a sentence-transformers directory, or a Hugging
Face model name, downloaded once; for building a new collection), else the pointer's, else the bundled
all-MiniLM-L6-v2. The old collection is kept, so switching back is immediate (``--model-dir bundled``).
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from nova_pipeline.core.atomic import atomic_write_bytes
from nova_pipeline.core.errors import NovaError
from nova_pipeline.core.layout import Layout
from nova_pipeline.core.settings import env_flag

__all__ = [
    "ACTIVE",
    "ActiveModel",
    "FollowingSearcher",
    "ModelSwitchError",
    "active_fingerprint",
    "active_stamp",
    "model_dir_for",
    "read_active",
    "resolve_model",
    "switch",
]

log = logging.getLogger(__name__)

ACTIVE = "active.json"
BUNDLED = "bundled"  # what a user types for the bundled model
RECHECK_S = 1.0  # a FollowingSearcher looks at the pointer at most this often
RETIRE_AFTER_S = 60.0  # an old searcher is closed this long after the swap (queries in flight finish)


class ModelSwitchError(NovaError):
    """A switch was refused: the model's files, or its collection, are not ready (the message says which)."""


@dataclass(frozen=True)
class ActiveModel:
    """The model searches and rebuilds use: ``model_dir`` ("" for the bundled one) and its fingerprint."""

    model_dir: str
    fingerprint: str
    switched_at: str
    switched_by: str


def _path(home) -> Path:
    return Layout.of(home).home / "models" / ACTIVE


def read_active(home) -> ActiveModel | None:
    """The pointer, or None when no switch was ever made (the bundled model is active).

    Raises:
        ModelSwitchError: the pointer is unreadable (it is written atomically, so only a hand edit does it).
    """
    path = _path(home)
    try:
        raw = json.loads(path.read_text())
        return ActiveModel(
            **{k: str(raw[k]) for k in ("model_dir", "fingerprint", "switched_at", "switched_by")}
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelSwitchError(
            f"models/{ACTIVE} is unreadable ({exc}): switch again with nova model switch"
        ) from None


def active_stamp(home) -> tuple[int, int]:
    """``(mtime_ns, size)`` of the pointer, (0, 0) without one: what a reader compares to notice a switch."""
    try:
        st = _path(home).stat()
        return st.st_mtime_ns, st.st_size
    except FileNotFoundError:
        return 0, 0


_HUB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def resolve_model(raw: str, home) -> Path | None:
    """The model directory ``raw`` names: None for ``bundled`` (or empty); a local sentence-transformers
    directory as it is; a Hugging Face model name (``org/name``, not an existing path) as its local copy
    ``NOVA_HOME/models/hf/org--name``, downloaded with ``huggingface_hub.snapshot_download`` the first time
    (its files are then pinned on first use, like any user's model: :mod:`~nova_pipeline.core.index.
    model_files`).

    Raises:
        ModelSwitchError: a Hugging Face name that is not downloaded yet while the hub is offline
            (``HF_HUB_OFFLINE``), or that the hub refused.
    """
    raw = (raw or "").strip()
    if raw in ("", BUNDLED):
        return None
    path = Path(raw).expanduser()
    if path.exists() or not _HUB_NAME.match(raw):
        return path.resolve()
    local = Layout.of(home).home / "models" / "hf" / raw.replace("/", "--")
    if (local / "modules.json").is_file():
        return local
    if env_flag("HF_HUB_OFFLINE"):
        raise ModelSwitchError(
            f"{raw} is a Hugging Face model name that is not downloaded yet, and the hub is offline "
            f"(HF_HUB_OFFLINE is set): download it once online (it goes to {local}), or name a local "
            "sentence-transformers directory"
        )
    from huggingface_hub import snapshot_download

    try:
        snapshot_download(raw, local_dir=str(local))
    except Exception as exc:  # noqa: BLE001 - network, authentication, a missing repository
        raise ModelSwitchError(f"downloading {raw} from the Hugging Face hub failed: {exc}") from exc
    if not (local / "modules.json").is_file():
        raise ModelSwitchError(f"{raw} has no modules.json: it is not a sentence-transformers model")
    log.info("downloaded %s from the Hugging Face hub to %s", raw, local)
    return local


def model_dir_for(home, env: dict | None = None) -> Path | None:
    """The model directory a process of ``home`` uses: ``NOVA_EMBED_MODEL`` (see :func:`resolve_model`),
    else the pointer's, else None (the bundled model).

    Raises:
        ModelSwitchError: as :func:`resolve_model`.
    """
    env = os.environ if env is None else env
    raw = (env.get("NOVA_EMBED_MODEL") or "").strip()
    if raw:
        return resolve_model(raw, home)
    active = read_active(home)
    return Path(active.model_dir) if active and active.model_dir else None


def active_fingerprint(home, env: dict | None = None) -> str:
    """The fingerprint of :func:`model_dir_for`'s model: the collection searches of ``home`` read."""
    from nova_pipeline.core.index.embedding import bundled_fingerprint

    return bundled_fingerprint(model_dir_for(home, env))


def switch(home, model_dir: Path | None, who: str, chroma_url: str | None = None) -> ActiveModel:
    """Make ``model_dir`` (None: the bundled model) the active model of ``home``, once its collection is
    complete. Returns the new pointer.

    Raises:
        ModelSwitchError: its collection is missing, or its ids differ from ``source_chunks`` (counts and
            examples named); or no chunks were built yet.
        ModelVerificationError: a model file differs from its pinned manifest.
    """
    from nova_pipeline.core.index.embedding import bundled_fingerprint
    from nova_pipeline.core.index.model_files import verify
    from nova_pipeline.core.index.vector_store import existing_ids, get_collection, open_client
    from nova_pipeline.core.keys import SOURCE_CHUNKS
    from nova_pipeline.core.protect import audit
    from nova_pipeline.core.tables import read_table

    home = Path(home)
    verify(model_dir or _bundled_dir(), home)
    fingerprint = bundled_fingerprint(model_dir)
    chunks = read_table(home, SOURCE_CHUNKS, columns=["chunk_id"])
    if chunks is None or not len(chunks):
        raise ModelSwitchError("no chunks yet: run the rebuild job first")
    try:
        collection = get_collection(open_client(home, chroma_url), fingerprint, create=False)
        have = existing_ids(collection)
    except NovaError as exc:
        raise ModelSwitchError(
            f"no collection of {fingerprint} ({exc}): build it first with nova model build --model-dir "
            f"{model_dir or BUNDLED}"
        ) from None
    want = set(chunks["chunk_id"])
    missing, extra = want - have, have - want
    if missing or extra:
        raise ModelSwitchError(
            f"the collection of {fingerprint} is not complete: {len(missing)} chunks missing, {len(extra)} "
            f"not in source_chunks (e.g. {sorted(missing or extra)[:3]}); run nova model build --model-dir "
            f"{model_dir or BUNDLED} again"
        )
    active = ActiveModel(
        model_dir=str(model_dir) if model_dir else "",
        fingerprint=fingerprint,
        switched_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        switched_by=who,
    )
    path = _path(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, json.dumps(asdict(active), indent=1).encode())
    audit.record(
        home, "model_switch", "ok", who, model_dir=active.model_dir or BUNDLED, fingerprint=fingerprint
    )
    return active


def _bundled_dir() -> Path:
    from nova_pipeline.core.index.model_files import bundled_model_dir

    return bundled_model_dir()


class FollowingSearcher:
    """A :class:`~nova_pipeline.core.serving.searcher.Searcher` that follows ``nova model switch``.

    Every attribute is the current searcher's. At most once per :data:`RECHECK_S` it compares the pointer's
    stamp; on a change it builds a searcher for the new model in a background thread, warms it (the model
    loaded, one query embedded) and only then swaps, so no query waits for a model load and none fails.
    The old searcher is closed :data:`RETIRE_AFTER_S` later. ``make(model_dir)`` builds a searcher.
    """

    def __init__(self, home, make):
        self._home, self._make = Path(home), make
        self._lock = threading.Lock()
        self._stamp = active_stamp(self._home)
        self._current = make(model_dir_for(self._home))
        self._checked = time.monotonic()
        self._loading: threading.Thread | None = None
        self.switches = 0  # swaps done (for status and tests)

    def current(self):
        """The searcher to answer with now (starting a switch in the background when the pointer moved)."""
        now = time.monotonic()
        if now - self._checked >= RECHECK_S:
            self._checked = now
            stamp = active_stamp(self._home)
            with self._lock:
                if stamp != self._stamp and (self._loading is None or not self._loading.is_alive()):
                    self._loading = threading.Thread(
                        target=self._load, args=(stamp,), name="nova-model-switch", daemon=True
                    )
                    self._loading.start()
        return self._current

    def _load(self, stamp) -> None:
        try:
            model_dir = model_dir_for(self._home)
            fresh = self._make(model_dir)
            fresh.embed_query("warm up")  # the model is loaded here, not on a user's query
        except Exception:  # noqa: BLE001 - a bad switch keeps the old model answering, and says why
            log.exception("could not switch to the new active model: the old one keeps answering")
            with self._lock:
                self._stamp = stamp  # not retried until the pointer changes again
            return
        with self._lock:
            old, self._current, self._stamp = self._current, fresh, stamp
            self.switches += 1
        log.info("switched searches to the model %s (%s)", model_dir or BUNDLED, fresh.fingerprint)
        timer = threading.Timer(RETIRE_AFTER_S, old.close)
        timer.daemon = True
        timer.start()

    def close(self) -> None:
        self._current.close()

    def __getattr__(self, name: str):
        return getattr(self.current(), name)
