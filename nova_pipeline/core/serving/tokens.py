"""API tokens of ``nova serve``: ``NOVA_HOME/tokens.json``, with only a salted scrypt hash of each token.

A token reads ``nova_<id>_<secret>``: the id (public) finds its entry, and the secret is checked with
``hashlib.scrypt`` (n=2**14, r=8, p=1, 32-byte key: RFC 7914's interactive-login parameters, about 50 ms
and 16 MiB per check) and a constant-time comparison. A token is shown once, when created; it cannot be
recovered from the file. Roles: ``viewer`` (search, status, health, stats, listings) and ``admin`` (also
everything that changes something).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import secrets
import threading
from dataclasses import asdict, dataclass

from nova_pipeline.core.atomic import atomic_write_bytes
from nova_pipeline.core.errors import NovaError
from nova_pipeline.core.layout import Layout

__all__ = ["ROLES", "SCRYPT", "TokenEntry", "TokenError", "TokenStore"]

ROLES = ("viewer", "admin")
SCRYPT = {"n": 2**14, "r": 8, "p": 1, "dklen": 32}


class TokenError(NovaError):
    """A token cannot be created or the token file cannot be read."""


@dataclass
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


class TokenStore:
    """The tokens of one ``NOVA_HOME``. Thread-safe; remembers tokens it has verified (in memory only)."""

    def __init__(self, home):
        self.path = Layout.of(home).tokens
        self._lock = threading.Lock()
        self._verified: dict[str, TokenEntry] = {}

    def exists(self) -> bool:
        """Whether any token was ever created (with no file, the service refuses admin calls and listens on
        loopback only)."""
        return self.path.exists()

    def entries(self) -> list[TokenEntry]:
        """Every stored entry.

        Raises:
            TokenError: the file is unreadable.
        """
        if not self.path.exists():
            return []
        try:
            return [TokenEntry(**e) for e in json.loads(self.path.read_text())["tokens"]]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise TokenError(
                f"{self.path} is unreadable ({exc}): fix it, or delete it and create tokens again"
            ) from exc

    def create(self, name: str, role: str) -> str:
        """Create a token; returns it (the only time it is shown).

        Raises:
            TokenError: an unknown role, or a name already in use.
        """
        if role not in ROLES:
            raise TokenError(f"role {role!r} is not one of {', '.join(ROLES)}")
        with self._lock:
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
        """Delete the token named ``name``; whether there was one."""
        with self._lock:
            entries = self.entries()
            kept = [e for e in entries if e.name != name]
            if len(kept) == len(entries):
                return False
            self._write(kept)
            self._verified = {k: v for k, v in self._verified.items() if v.name != name}
            return True

    def _write(self, entries: list[TokenEntry]) -> None:
        body = json.dumps({"tokens": [asdict(e) for e in entries]}, indent=1).encode()
        atomic_write_bytes(self.path, body)
        self.path.chmod(0o600)

    def verify(self, token: str) -> TokenEntry | None:
        """The entry a presented token belongs to, or None (malformed, unknown, revoked or wrong)."""
        parts = token.split("_", 2) if token else []
        if len(parts) != 3 or parts[0] != "nova":
            return None
        key = hashlib.sha256(token.encode()).hexdigest()
        with self._lock:
            cached = self._verified.get(key)
        entry = next((e for e in self.entries() if e.id == parts[1]), None)
        if entry is None:
            return None
        if cached is not None and cached.id == entry.id:
            return entry
        if not hmac.compare_digest(_hash(parts[2], bytes.fromhex(entry.salt)), entry.hash):
            return None
        with self._lock:
            self._verified[key] = entry
        return entry
