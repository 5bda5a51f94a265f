"""The health probe of the primary vector store: heartbeat, count and one query, bounded in time and run in
a subprocess (``python -m nova_pipeline.core.serving.probe probe HOME CHROMA_URL FINGERPRINT``), so a hang
or a crash of the vector library is a failed probe, not a crashed caller.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["Probe", "probe"]


@dataclass
class Probe:
    """One health probe of the primary: ``ok``, seconds it took, the count it read, or the error."""

    ok: bool
    seconds: float
    count: int | None = None
    error: str = ""


def _probe_in_process(home: Path, chroma_url: str | None, fingerprint: str, timeout: float = 5.0) -> dict:
    """Heartbeat (server mode), count and one query of the primary collection, in this process.

    A server is probed through Chroma's HTTP API (``/api/v2``: heartbeat, the collection by name, count, one
    ``get`` and one ``query``) with ``httpx``, each request bounded by ``timeout`` seconds, so the probe
    does not pay for importing the Chroma client; an embedded data dir is opened with the Chroma client.

    Raises:
        Any error of the vector store (an HTTP status, a transport error, a Chroma error).
    """
    from nova_pipeline.core.index.vector_store import collection_name, get_collection, other_schema

    if chroma_url:
        import httpx

        base = (chroma_url if "://" in chroma_url else f"http://{chroma_url}").rstrip("/") + "/api/v2"
        db = f"{base}/tenants/default_tenant/databases/default_database/collections"
        with httpx.Client(timeout=timeout) as http:
            http.get(f"{base}/heartbeat").raise_for_status()
            got = http.get(f"{db}/{collection_name(fingerprint)}")
            if got.status_code == 404:  # a record-schema change not built yet: the other schema answers
                got = http.get(f"{db}/{collection_name(fingerprint, other_schema())}")
            got.raise_for_status()
            cid = got.json()["id"]
            count = int(http.get(f"{db}/{cid}/count").raise_for_status().json())
            if count:
                one = http.post(
                    f"{db}/{cid}/get", json={"limit": 1, "include": ["embeddings"]}
                ).raise_for_status()
                http.post(
                    f"{db}/{cid}/query",
                    json={"query_embeddings": one.json()["embeddings"], "n_results": 1, "include": []},
                ).raise_for_status()
        return {"count": count}
    from nova_pipeline.core.errors import LockTimeoutError
    from nova_pipeline.core.index.vector_store import fresh_client

    with contextlib.ExitStack() as stack:
        try:
            client = stack.enter_context(
                fresh_client(home, None, create=False, lock_timeout=max(0.5, timeout - 1.0))
            )
        except LockTimeoutError:
            # a writer holds the embedded store (a rebuild at work): it is in use, not down
            return {"count": None, "busy": True}
        col = get_collection(client, fingerprint, create=False)
        count = col.count()
        if count:
            got = col.get(limit=1, include=["embeddings"])
            col.query(query_embeddings=np.asarray(got["embeddings"], dtype=np.float32), n_results=1)
    return {"count": count}


def probe(home: Path, chroma_url: str | None, fingerprint: str, timeout: float = 10.0) -> Probe:
    """:func:`_probe_in_process` in a subprocess, bounded by ``timeout`` seconds: a hang is a failure, and a
    crash of the vector library (a segfault, chroma#7238) is a failed probe, not a crashed caller."""
    started = time.perf_counter()
    cmd = [
        sys.executable,
        "-m",
        "nova_pipeline.core.serving.probe",
        "probe",
        str(home),
        chroma_url or "",
        fingerprint,
    ]
    try:
        proc = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "ANONYMIZED_TELEMETRY": "False"},
        )
    except subprocess.TimeoutExpired:
        return Probe(False, time.perf_counter() - started, error=f"the probe took more than {timeout:.0f} s")
    took = time.perf_counter() - started
    if proc.returncode != 0:
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-2:])
        return Probe(False, took, error=f"probe exit {proc.returncode}: {tail[-400:]}")
    try:
        return Probe(True, took, count=json.loads(proc.stdout.strip().splitlines()[-1])["count"])
    except (ValueError, KeyError, IndexError) as exc:
        return Probe(False, took, error=f"probe printed nothing usable ({exc})")


def _main(argv: list[str]) -> int:
    if len(argv) == 4 and argv[0] == "probe":
        print(json.dumps(_probe_in_process(Path(argv[1]), argv[2] or None, argv[3])))
        return 0
    print(
        "usage: python -m nova_pipeline.core.serving.probe probe HOME CHROMA_URL FINGERPRINT", file=sys.stderr
    )
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
