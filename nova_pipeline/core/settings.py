"""Settings shared by the pipeline and the ``nova`` CLI, read from the environment.

=====================  =========================================  ==============================
variable               meaning                                     default
=====================  =========================================  ==============================
``NOVA_SOURCE_DIR``    the tree to index                           (required)
``NOVA_HOME``          state directory (tables, store, vectors…)   ``./.nova``
``NOVA_IGNORE``        extra gitignore patterns, comma-separated   none
``NOVA_CHROMA_URL``    Chroma server URL; unset means embedded     embedded, ``NOVA_HOME/vectors``
=====================  =========================================  ==============================
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from nova_pipeline.core.errors import SettingsError
from nova_pipeline.core.layout import Layout

__all__ = ["DEFAULT_HOME", "Settings", "env_flag"]

DEFAULT_HOME = ".nova"


def env_flag(name: str, env=None) -> bool:
    """Whether the environment variable ``name`` (in ``env``, default ``os.environ``) is set to 1, true,
    yes or on (any case, surrounding space ignored)."""
    env = os.environ if env is None else env
    return str(env.get(name, "")).strip().lower() in ("1", "true", "yes", "on")


def _split_patterns(value: str) -> tuple[str, ...]:
    """Split a comma- or newline-separated pattern list, dropping blanks."""
    return tuple(p.strip() for p in value.replace("\n", ",").split(",") if p.strip())


@dataclass(frozen=True)
class Settings:
    """Resolved, validated settings. Paths are absolute; ``source_dir`` is None only when not required."""

    source_dir: Path | None
    home: Path
    ignore: tuple[str, ...] = ()
    chroma_url: str | None = None

    @classmethod
    def build(
        cls,
        source_dir: str | os.PathLike | None,
        home: str | os.PathLike | None = None,
        ignore: str = "",
        chroma_url: str | None = None,
        require_source: bool = True,
    ) -> Settings:
        """Resolve and validate settings.

        Raises:
            SettingsError: ``NOVA_SOURCE_DIR`` is unset (when ``require_source``), missing, not a directory
                or unreadable; or ``NOVA_HOME`` exists but is not a writable directory. The message names
                the path and the variable to fix.
        """
        src = Path(source_dir).expanduser().resolve() if source_dir else None
        if require_source:
            if src is None:
                raise SettingsError(
                    "NOVA_SOURCE_DIR is not set: export NOVA_SOURCE_DIR=/path/to/the/tree/to/index"
                )
            if not src.exists():
                raise SettingsError(
                    f"NOVA_SOURCE_DIR={src} does not exist: point it at an existing directory"
                )
            if not src.is_dir():
                raise SettingsError(
                    f"NOVA_SOURCE_DIR={src} is not a directory: point it at the tree to index"
                )
            if not os.access(src, os.R_OK | os.X_OK):
                raise SettingsError(f"NOVA_SOURCE_DIR={src} is not readable: fix its permissions")
        home_path = Path(home or DEFAULT_HOME).expanduser().resolve()
        if home_path.exists() and not home_path.is_dir():
            raise SettingsError(f"NOVA_HOME={home_path} exists and is not a directory: choose another path")
        if home_path.exists() and not os.access(home_path, os.W_OK | os.X_OK):
            raise SettingsError(f"NOVA_HOME={home_path} is not writable: fix its permissions or NOVA_HOME")
        return cls(
            source_dir=src,
            home=home_path,
            ignore=_split_patterns(ignore or ""),
            chroma_url=chroma_url or None,
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, require_source: bool = True) -> Settings:
        """Settings from ``os.environ`` (or ``env``); see the module docstring for the variables."""
        env = os.environ if env is None else env
        return cls.build(
            env.get("NOVA_SOURCE_DIR"),
            env.get("NOVA_HOME"),
            env.get("NOVA_IGNORE", ""),
            env.get("NOVA_CHROMA_URL"),
            require_source=require_source,
        )

    @property
    def layout(self) -> Layout:
        """Where everything lives under ``home``."""
        return Layout(self.home)

    def state_dirs_to_exclude(self) -> list[Path]:
        """Directories that hold our own state and must never be scanned, even inside the source tree."""
        dirs = [self.home]
        if os.environ.get("DAGSTER_HOME"):
            dirs.append(Path(os.environ["DAGSTER_HOME"]).resolve())
        return dirs
