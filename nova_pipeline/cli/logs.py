"""Logging of the ``nova`` commands and ``nova serve``: a console at a chosen level, and every record as a
JSON line in ``NOVA_HOME/logs/nova.jsonl`` (rotated at 10 MB, 5 files kept; stdlib
``RotatingFileHandler`` with python-json-logger's formatter).

The console level comes from the ``--log-level`` flag, else ``NOVA_LOG_LEVEL``, else the command's default.
:func:`step_level` moves it one step (``nova serve`` binds it to SIGUSR1: more verbose, SIGUSR2: less), and
logs the change.
"""

from __future__ import annotations

import logging
import logging.handlers
import os

from nova_pipeline.core.layout import Layout

LEVELS = ["DEBUG", "INFO", "WARNING", "ERROR"]
LOG_FILE = "nova.jsonl"
MAX_BYTES = 10 * 2**20
BACKUPS = 5
log = logging.getLogger("nova_pipeline.cli.logs")
_console: logging.Handler | None = None


def resolve_level(flag: str | None, default: str = "INFO") -> str:
    """The console level: the flag, else ``NOVA_LOG_LEVEL``, else ``default``.

    Raises:
        ValueError: not one of DEBUG, INFO, WARNING, ERROR.
    """
    level = (flag or os.environ.get("NOVA_LOG_LEVEL") or default).upper()
    if level not in LEVELS:
        raise ValueError(
            f"log level {level!r} is not one of {', '.join(LEVELS)} (--log-level or NOVA_LOG_LEVEL)"
        )
    return level


def configure(home, console_level: str, console: logging.Handler | None = None) -> None:
    """Log ``nova_pipeline`` records to the console at ``console_level``, and to the JSON-lines file at DEBUG.

    Args:
        home: ``NOVA_HOME`` (the file goes in ``logs/``).
        console_level: one of :data:`LEVELS`.
        console: the console handler (default: a stderr StreamHandler).
    """
    from pythonjsonlogger.json import JsonFormatter

    global _console
    root = logging.getLogger("nova_pipeline")
    root.setLevel(logging.DEBUG)
    for h in list(root.handlers):
        if getattr(h, "_nova", False):
            root.removeHandler(h)
    path = Layout.of(home).logs / LOG_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    file_handler = logging.handlers.RotatingFileHandler(
        path, maxBytes=MAX_BYTES, backupCount=BACKUPS, encoding="utf-8"
    )
    file_handler.setFormatter(
        JsonFormatter(
            "{asctime}{levelname}{name}{message}",
            style="{",
            rename_fields={"asctime": "at", "levelname": "level"},
        )
    )
    file_handler.setLevel(logging.DEBUG)
    _console = console or logging.StreamHandler()
    _console.setLevel(console_level)
    for h in (file_handler, _console):
        h._nova = True  # type: ignore[attr-defined]
        root.addHandler(h)
    root.propagate = False


def step_level(steps: int) -> str:
    """Move the console level ``steps`` toward DEBUG (negative: toward ERROR); returns and logs the new
    level."""
    if _console is None:
        return "INFO"
    now = logging.getLevelName(_console.level)
    i = min(max(LEVELS.index(now) - steps, 0), len(LEVELS) - 1) if now in LEVELS else 1
    _console.setLevel(LEVELS[i])
    log.warning("console log level %s -> %s", now, LEVELS[i])
    return LEVELS[i]
