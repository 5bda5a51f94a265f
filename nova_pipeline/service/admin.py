"""The admin API of ``nova serve`` (seed 002's operations on this project's pieces), under ``/api/v1/admin/``.

===========================  ========  ======  ===========================================================
route                        method    role    backed by
===========================  ========  ======  ===========================================================
``status``                   GET       viewer  ``core.stats.describe_state`` and the failover pointer
``health``                   GET       viewer  ``core.health.run_checks`` (the model: already loaded here)
``stats``                    GET       viewer  ``core.stats.collect_stats``
``knowledge-base``           GET       viewer  the active store's documents and metadata, paged
``backups``                  GET       viewer  ``core.backup.list_backups``
``backup/{run_id}``          GET       viewer  the run's status in the Dagster instance
``backup``                   POST      admin   launches the ``backup`` job on the instance
``restore/{backup_id}``      POST      admin   launches the ``restore`` job; needs ``?confirm=true``
``clear``                    DELETE    admin   empties the active collection; needs ``?confirm=true``
``vacuum``                   POST      admin   ``VACUUM ANALYZE`` of the instance's PostgreSQL; ``chroma
                                               vacuum`` of an embedded store, under the writer lock
===========================  ========  ======  ===========================================================

Authentication: ``Authorization: Bearer <token>`` (``nova token create --role viewer|admin``). With no token
file, admin calls are refused with a message saying how to create one, and the service listens on
loopback only. Every admin call, allowed or refused, is a line in ``NOVA_HOME/audit.log`` naming the
token (never the token itself). Jobs run on the Dagster instance, so the run is in the UI; the API
returns its id.
"""

from __future__ import annotations

import logging
import subprocess
from dataclasses import asdict

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from nova_pipeline.core.index.embedding import bundled_fingerprint
from nova_pipeline.core.keys import VECTOR_INDEX
from nova_pipeline.core.protect import audit, backup
from nova_pipeline.core.serving.failover import FailoverSettings, active_store
from nova_pipeline.core.serving.pointer import read_state
from nova_pipeline.core.serving.tokens import TokenEntry, TokenStore
from nova_pipeline.core.settings import Settings

log = logging.getLogger("nova_pipeline.service.admin")
PREFIX = "/api/v1/admin"
NO_TOKENS = (
    "no API tokens exist, so admin calls are refused: create one with "
    "`nova token create --name NAME --role admin` and send it as `Authorization: Bearer <token>`"
)


def authorize(
    request: Request, tokens: TokenStore, need: str
) -> tuple[TokenEntry | None, JSONResponse | None]:
    """``(token entry, None)`` when the request may go on, else ``(entry or None, the refusal)``."""
    if not tokens.exists():
        return None, JSONResponse({"error": NO_TOKENS}, status_code=403)
    header = request.headers.get("authorization", "")
    scheme, _, presented = header.partition(" ")
    entry = tokens.verify(presented.strip()) if scheme.lower() == "bearer" else None
    if entry is None:
        return None, JSONResponse(
            {"error": "a valid token is required: Authorization: Bearer <token>"},
            status_code=401,
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not entry.allows(need):
        return entry, JSONResponse(
            {"error": f"token {entry.name!r} is a {entry.role}; this needs {need}"}, status_code=403
        )
    return entry, None


def admin_routes(settings: Settings, tokens: TokenStore, searcher=None) -> list[Route]:
    """The admin routes for ``settings``; ``searcher`` is the service's (its model is loaded)."""
    home = settings.home
    fingerprint = searcher.fingerprint if searcher is not None else bundled_fingerprint()

    def guarded(need: str, action: str, handler, destructive: bool = False):
        async def endpoint(request: Request) -> JSONResponse:
            entry, refusal = authorize(request, tokens, need)
            who = entry.name if entry else "anonymous"
            details = {"method": request.method, "path": request.url.path, **request.path_params}
            if refusal is None and destructive and request.query_params.get("confirm") != "true":
                refusal = JSONResponse(
                    {"error": f"{action} is destructive: repeat the call with ?confirm=true"}, status_code=400
                )
            if refusal is not None:
                audit.record(home, f"admin {action}", f"refused ({refusal.status_code})", who, **details)
                return refusal
            try:
                body, status = await run_in_threadpool(handler, request)
            except Exception as exc:  # noqa: BLE001 - the caller gets the reason, the audit log the failure
                log.exception("admin %s failed", action)
                audit.record(home, f"admin {action}", f"failed: {exc}", who, **details)
                return JSONResponse({"error": f"{type(exc).__name__}: {exc}"}, status_code=500)
            audit.record(
                home, f"admin {action}", "ok" if status < 400 else f"error ({status})", who, **details
            )
            return JSONResponse(body, status_code=status)

        return endpoint

    def status(request):
        from nova_pipeline.core.serving.stats import describe_state

        return {
            "pointer": asdict(read_state(home)),
            "assets": describe_state(settings, fingerprint, FailoverSettings.from_env().max_memory_mb),
        }, 200

    def health(request):
        from nova_pipeline.core.serving.health import healthy, run_checks
        from nova_pipeline.deploy.instance import last_run, postgres_url

        last, pg = (None, None), None
        if _has_instance():
            import dagster as dg

            with dg.DagsterInstance.get() as instance:
                last, pg = last_run(instance, "rebuild"), postgres_url(instance)
        checks = run_checks(
            home,
            settings.chroma_url,
            fingerprint,
            FailoverSettings.from_env().max_memory_mb,
            pg,
            last,
            load_model=False,
        )
        ok = healthy(checks)
        return {"healthy": ok, "checks": [c.as_dict() for c in checks]}, 200 if ok else 503

    def stats(request):
        from nova_pipeline.core.serving.stats import collect_stats
        from nova_pipeline.deploy.instance import last_materializations

        last = None
        if _has_instance():
            import dagster as dg

            with dg.DagsterInstance.get() as instance:
                last = last_materializations(instance, [VECTOR_INDEX]).get(VECTOR_INDEX, {}).get("metadata")
        return collect_stats(settings, fingerprint, last), 200

    def knowledge_base(request):
        try:
            limit = max(1, min(500, int(request.query_params.get("limit", "50"))))
            offset = max(0, int(request.query_params.get("offset", "0")))
        except ValueError:
            return {"error": "limit and offset must be whole numbers"}, 400
        col = active_store(home, settings.chroma_url).collection(fingerprint, create=False)
        got = col.get(limit=limit, offset=offset, include=["documents", "metadatas"])
        items = [
            {"id": i, "document": d, "metadata": m}
            for i, d, m in zip(got["ids"], got["documents"], got["metadatas"])
        ]
        return {"total": col.count(), "limit": limit, "offset": offset, "items": items}, 200

    def backups(request):
        return {
            "backups": [
                {"id": b.id, "bytes": b.size, "verified_level": b.verified_level(), "path": str(b.path)}
                for b in backup.list_backups(home)
            ]
        }, 200

    def launched(job: str, run_id: str, **extra) -> tuple[dict, int]:
        """The 202 answer of a launched run, with its status (and ``waiting_for`` when no daemon will
        dequeue it)."""
        import dagster as dg

        from nova_pipeline.deploy.instance import run_status

        with dg.DagsterInstance.get() as instance:
            found = run_status(instance, run_id) or {}
        return {
            "run_id": run_id,
            "job": job,
            **extra,
            **{k: found[k] for k in ("status", "waiting_for") if k in found},
        }, 202

    def launch_backup(request):
        from nova_pipeline.deploy.instance import launch_job

        return launched("backup", launch_job("backup", tags={"nova/requested_by": "admin api"}))

    def backup_run(request):
        from nova_pipeline.deploy.instance import run_status

        if not _has_instance():
            return {"error": "DAGSTER_HOME is not set: no Dagster instance to ask"}, 503
        import dagster as dg

        with dg.DagsterInstance.get() as instance:
            found = run_status(instance, request.path_params["run_id"])
        return (found, 200) if found else ({"error": f"no run {request.path_params['run_id']}"}, 404)

    def restore(request):
        from nova_pipeline.deploy.instance import launch_job

        backup_id = request.path_params["backup_id"]
        backup.find_backup(home, backup_id)  # a clear 500 now rather than a failed run later
        run_id = launch_job(
            "restore",
            {"ops": {"restore_op": {"config": {"backup_id": backup_id, "confirm": True}}}},
            tags={"nova/requested_by": "admin api"},
        )
        return launched("restore", run_id, backup_id=backup_id)

    def clear(request):
        from nova_pipeline.core.index.vector_store import existing_ids
        from nova_pipeline.core.index.verification import VerifiedRecord
        from nova_pipeline.core.locks import writer_lock

        store = active_store(home, settings.chroma_url)
        with writer_lock(home):
            col = store.collection(fingerprint, create=False)
            ids = sorted(existing_ids(col))
            for start in range(0, len(ids), 1000):
                col.delete(ids=ids[start : start + 1000])
            left = col.count()
        VerifiedRecord(home).forget()
        return {
            "cleared": len(ids),
            "left": left,
            "store": store.label,
            "next": "the next rebuild re-fills the index from the embedding cache, without re-embedding",
        }, 200

    def vacuum(request):
        from nova_pipeline.core.locks import writer_lock
        from nova_pipeline.deploy.instance import postgres_url

        done = {}
        pg = None
        if _has_instance():
            import dagster as dg

            with dg.DagsterInstance.get() as instance:
                pg = postgres_url(instance)
        if pg:
            import psycopg2

            conn = psycopg2.connect(pg)
            conn.autocommit = True
            try:
                with conn.cursor() as cur:
                    cur.execute("VACUUM ANALYZE")
            finally:
                conn.close()
            done["postgres"] = "VACUUM ANALYZE done"
        else:
            done["postgres"] = "not used by the instance"
        if settings.chroma_url:
            done["chroma"] = "server mode: the server maintains its own storage"
        else:
            import sys
            from pathlib import Path

            chroma = Path(sys.executable).with_name("chroma")
            with writer_lock(home):
                proc = subprocess.run(
                    [str(chroma), "vacuum", "--path", str(settings.layout.vectors), "--force"],
                    capture_output=True,
                    text=True,
                    timeout=600,
                )
            done["chroma"] = (
                "chroma vacuum done"
                if proc.returncode == 0
                else f"chroma vacuum failed: {proc.stderr[-300:]}"
            )
        return done, 200

    r = PREFIX
    return [
        Route(f"{r}/status", guarded("viewer", "status", status)),
        Route(f"{r}/health", guarded("viewer", "health", health)),
        Route(f"{r}/stats", guarded("viewer", "stats", stats)),
        Route(f"{r}/knowledge-base", guarded("viewer", "knowledge-base", knowledge_base)),
        Route(f"{r}/backups", guarded("viewer", "backups", backups)),
        Route(f"{r}/backup/{{run_id}}", guarded("viewer", "backup status", backup_run)),
        Route(f"{r}/backup", guarded("admin", "backup", launch_backup), methods=["POST"]),
        Route(
            f"{r}/restore/{{backup_id}}",
            guarded("admin", "restore", restore, destructive=True),
            methods=["POST"],
        ),
        Route(f"{r}/clear", guarded("admin", "clear", clear, destructive=True), methods=["DELETE"]),
        Route(f"{r}/vacuum", guarded("admin", "vacuum", vacuum), methods=["POST"]),
    ]


def _has_instance() -> bool:
    import os

    return bool(os.environ.get("DAGSTER_HOME"))
