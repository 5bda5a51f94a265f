"""API tokens of ``nova serve``: ``NOVA_HOME/tokens.json``, with only a salted scrypt hash of each token.

A token reads ``nova_<id>_<secret>``: the id (public, 12 hex digits) finds its entry, and the secret is
checked with ``hashlib.scrypt`` (n=2**14, r=8, p=1, 32-byte key: RFC 7914's interactive-login parameters,
about 50 ms and 16 MiB per check) and a constant-time comparison. A token is shown once, when created; it
cannot be recovered from the file. Roles: ``viewer`` (search, status, health, stats, listings) and
``admin`` (also everything that changes something).

Checking costs the same whatever the token: an unknown id is hashed against a dummy entry, so timing does
not tell which ids exist. A verified token is remembered (in memory, by the SHA-256 of the whole token),
so a client that presents it again costs a dictionary lookup; the memory is valid only while the file holds
the same entry, so a revoked token is refused from the next request. The file is read again only when it
changed (its size, mtime or inode).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import os
import secrets
import threading
from dataclasses import asdict, dataclass

from nova_pipeline.core.atomic import atomic_write_bytes
from nova_pipeline.core.errors import NovaError
from nova_pipeline.core.layout import Layout

__all__ = ["ROLES", "SCRYPT", "TokenEntry", "TokenError", "TokenStore"]

ROLES = ("viewer", "admin")
SCRYPT = {"n": 2**14, "r": 8, "p": 1, "dklen": 32}
_DUMMY_SALT = b"\0" * 16  # an unknown id is checked against this, so it costs what a known one costs
_DUMMY_HASH = "0" * 64


class _Malformed(Exception):
    """The token file parses but holds something no token can have (read as: the file is unreadable)."""


class TokenError(NovaError):
    """A token cannot be created, or the token file cannot be read (the message says how to repair it)."""


@dataclass(frozen=True)
class TokenEntry:
    """One token as stored: never the token itself."""

    id: str
    name: str
    role: str
    salt: str
    hash: str
    created_at: str

    def allows(self, need: str) -> bool:
        """Whether this token's role covers ``need`` (admin covers viewer)."""
        return ROLES.index(self.role) >= ROLES.index(need)


def _hash(secret: str, salt: bytes) -> str:
    return hashlib.scrypt(secret.encode(), salt=salt, maxmem=64 * 2**20, **SCRYPT).hex()


def parse(token: str) -> tuple[str, str] | None:
    """``(id, secret)`` of a token ``nova_<id>_<secret>`` (the secret may contain ``_``), or None."""
    if not token or not token.startswith("nova_"):
        return None
    token_id, sep, secret = token[len("nova_") :].partition("_")
    if not sep or not token_id or not secret:
        return None
    return token_id, secret


class TokenStore:
    """The tokens of one ``NOVA_HOME``. Thread-safe; remembers the file's entries and the tokens it verified
    (in memory only)."""

    def __init__(self, home):
        self.path = Layout.of(home).tokens
        self._lock = threading.Lock()  # the in-memory caches
        self._write_lock = threading.Lock()  # create and revoke, one at a time
        self._verified: dict[str, TokenEntry] = {}  # sha256 of a whole token -> the entry it matched
        self._cached: tuple[tuple[int, int, int], dict[str, TokenEntry]] | None = None

    def exists(self) -> bool:
        """Whether a token file is there (with one, ``nova serve`` requires tokens)."""
        return self.path.exists()

    def entries(self) -> list[TokenEntry]:
        """Every stored entry (none when there is no file).

        Raises:
            TokenError: the file is unreadable or malformed; the message says how to repair it.
        """
        return list(self._by_id(missing_ok=True).values())

    def require_readable(self) -> None:
        """Raise unless the token file is there and reads (a service that requires tokens checks this first).

        Raises:
            TokenError: it is missing or unreadable; the message says how to repair it.
        """
        self._by_id(missing_ok=False)

    def _by_id(self, missing_ok: bool) -> dict[str, TokenEntry]:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            if missing_ok:
                return {}
            raise TokenError(
                f"{self.path.name} is missing from NOVA_HOME although this service requires tokens: put it "
                "back (from a backup copy of NOVA_HOME), or create a token with `nova token create`"
            ) from None
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        with self._lock:
            if self._cached is not None and self._cached[0] == stamp:
                return self._cached[1]
        try:
            raw = json.loads(self.path.read_text())
            by_id = {e["id"]: TokenEntry(**e) for e in raw["tokens"]}
            if any(e.role not in ROLES for e in by_id.values()):
                raise _Malformed(f"a role is not one of {', '.join(ROLES)}")
        except (OSError, ValueError, KeyError, TypeError, _Malformed) as exc:
            raise TokenError(
                f"{self.path.name} in NOVA_HOME is unreadable ({type(exc).__name__}: {exc}): fix its JSON "
                '(a {"tokens": [...]} list of entries with id, name, role, salt, hash and created_at), '
                "or put back a copy from a backup of NOVA_HOME; the tokens in it stay valid once it reads"
            ) from exc
        with self._lock:
            self._cached = (stamp, by_id)
        return by_id

    def create(self, name: str, role: str) -> str:
        """Create a token; returns it (the only time it is shown).

        Raises:
            TokenError: an unknown role, a name already in use, or an unreadable file.
        """
        if role not in ROLES:
            raise TokenError(f"role {role!r} is not one of {', '.join(ROLES)}")
        with self._write_lock:
            entries = self.entries()
            if any(e.name == name for e in entries):
                raise TokenError(
                    f"a token named {name!r} exists already: revoke it first, or choose another name"
                )
            token_id, secret, salt = secrets.token_hex(6), secrets.token_urlsafe(32), secrets.token_bytes(16)
            entries.append(
                TokenEntry(
                    id=token_id,
                    name=name,
                    role=role,
                    salt=salt.hex(),
                    hash=_hash(secret, salt),
                    created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                )
            )
            self._write(entries)
        return f"nova_{token_id}_{secret}"

    def revoke(self, name: str) -> bool:
        """Delete the token named ``name``; whether there was one.

        Raises:
            TokenError: the file is unreadable.
        """
        with self._write_lock:
            entries = self.entries()
            kept = [e for e in entries if e.name != name]
            if len(kept) == len(entries):
                return False
            self._write(kept)
            with self._lock:
                self._verified = {k: v for k, v in self._verified.items() if v.name != name}
            return True

    def _write(self, entries: list[TokenEntry]) -> None:
        body = json.dumps({"tokens": [asdict(e) for e in entries]}, indent=1).encode()
        atomic_write_bytes(self.path, body)
        self.path.chmod(0o600)
        with self._lock:
            self._cached = None

    def verify(self, token: str) -> TokenEntry | None:
        """The entry a presented token belongs to, or None (malformed, unknown, revoked or wrong secret).

        Raises:
            TokenError: the token file is missing or unreadable (callers answer 503: nobody can be checked).
        """
        by_id = self._by_id(missing_ok=False)
        parsed = parse(token)
        if parsed is None:
            return None
        token_id, secret = parsed
        key = hashlib.sha256(token.encode()).hexdigest()
        entry = by_id.get(token_id)
        with self._lock:
            cached = self._verified.get(key)
        if entry is not None and cached is not None and cached == entry:
            return entry
        salt = bytes.fromhex(entry.salt) if entry is not None else _DUMMY_SALT
        ok = hmac.compare_digest(_hash(secret, salt), entry.hash if entry is not None else _DUMMY_HASH)
        if entry is None or not ok:
            return None
        with self._lock:
            self._verified[key] = entry
        return entry
