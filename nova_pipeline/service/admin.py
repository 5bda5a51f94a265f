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
``rebuild``                  POST      admin   launches the ``rebuild`` job (seed 002's "train")
``runs/{run_id}``            GET       viewer  per-phase progress, counts and ETA from the run's event log
``runs/{run_id}/events``     GET       viewer  the same as Server-Sent Events until the run ends
===========================  ========  ======  ===========================================================

Authentication: ``Authorization: Bearer <token>`` (``nova token create --role viewer|admin``). With no token
file, admin calls are refused with a message saying how to create one, and the service listens on
loopback only. Every admin call, allowed or refused, is a line in ``NOVA_HOME/audit.log`` naming the
token (never the token itself). Jobs run on the Dagster instance, so the run is in the UI; the API
returns its id.
"""

from __future__ import annotations

import logging
import re
import subprocess
from dataclasses import asdict

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from nova_pipeline.core.errors import (
    BackupNotFoundError,
    ConfirmationRequired,
    IndexNotBuiltError,
    InvalidRequestError,
    LockTimeoutError,
    NovaError,
)
from nova_pipeline.core.index.embedding import bundled_fingerprint
from nova_pipeline.core.keys import VECTOR_INDEX
from nova_pipeline.core.protect import backup
from nova_pipeline.core.serving.failover import FailoverSettings, active_client, writing_to
from nova_pipeline.core.serving.pointer import read_state
from nova_pipeline.core.settings import Settings
from nova_pipeline.service.auth import Gate, error

log = logging.getLogger("nova_pipeline.service.admin")
PREFIX = "/api/v1/admin"
BACKUP_ID = re.compile(r"^(?:backup_)?\d{8}T\d{6}Z(?:-\d+)?(?:\.tar\.zst)?$")
RUN_ID = re.compile(r"^[0-9a-fA-F-]{8,36}$")
RUN_EVENTS_MAX_S = 6 * 3600  # an SSE stream of a run ends after this, even if the run has not


class _Reply(Exception):
    """Raised by a handler to answer with ``status`` and ``message`` (a 4xx the caller should see)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def _status_of(exc: NovaError) -> int:
    """The HTTP status of an error of core: what it means to the caller."""
    if isinstance(exc, BackupNotFoundError):
        return 404
    if isinstance(exc, (ConfirmationRequired, InvalidRequestError)):
        return 400
    if isinstance(exc, LockTimeoutError):
        return 409  # another writer holds the store: try again
    if isinstance(exc, IndexNotBuiltError):
        return 503
    return 500


def admin_routes(settings: Settings, gate: Gate, searcher=None) -> list[Route]:
    """The admin routes for ``settings``, behind ``gate``; ``searcher`` is the service's (its model is
    loaded)."""
    home = settings.home
    fingerprint = searcher.fingerprint if searcher is not None else bundled_fingerprint()

    def guarded(need: str, action: str, handler, destructive: bool = False):
        async def endpoint(request: Request) -> JSONResponse:
            caller = await gate.check(request, need, f"admin {action}")
            if isinstance(caller, JSONResponse):
                return caller
            details = {
                "method": request.method,
                "path": request.url.path,
                "client": caller.client,
                "token": caller.name,
                **request.path_params,
            }
            if destructive and request.query_params.get("confirm") != "true":
                return await gate.refuse(
                    request,
                    f"admin {action}",
                    400,
                    f"{action} is destructive: repeat the call with ?confirm=true",
                    caller.token,
                )
            try:
                body, status = await run_in_threadpool(handler, request)
            except _Reply as reply:
                await gate.record(f"admin {action}", f"error ({reply.status})", caller.name, **details)
                return error(reply.status, reply.message, home)
            except NovaError as exc:
                status = _status_of(exc)
                log.warning("admin %s failed (%d): %s", action, status, exc)
                await gate.record(f"admin {action}", f"failed ({status}): {exc}", caller.name, **details)
                return error(status, str(exc), home)
            except Exception as exc:  # noqa: BLE001 - a generic 500 to the caller; the cause to log and audit
                log.exception("admin %s failed", action)
                await gate.record(
                    f"admin {action}", f"failed: {type(exc).__name__}: {exc}", caller.name, **details
                )
                return error(500, f"{action} failed: the service log (NOVA_HOME/logs) has the details")
            if isinstance(body, dict) and body.get("run_id"):
                details["run_id"] = body["run_id"]
            await gate.record(
                f"admin {action}", "ok" if status < 400 else f"error ({status})", caller.name, **details
            )
            return JSONResponse(body, status_code=status)

        return endpoint

    def status(request):
        from nova_pipeline.core.serving.stats import describe_state

        state = read_state(home)
        return {
            "pointer": {k: v for k, v in asdict(state).items() if k != "recovered_from"},
            "assets": describe_state(settings, fingerprint, FailoverSettings.from_env().max_memory_mb),
        }, 200

    def health(request):
        from nova_pipeline.core.serving.health import RunFacts, healthy, run_checks
        from nova_pipeline.defs.jobs import BACKUP_INTERVAL_S, daily_backup
        from nova_pipeline.deploy.instance import postgres_url, run_facts

        facts, pg = RunFacts(), None
        strict = request.query_params.get("strict") == "true"
        if _has_instance():
            import dagster as dg

            with dg.DagsterInstance.get() as instance:
                # reading only: a service does not fail runs (the dead_runs sensor and nova health do)
                facts = run_facts(instance, daily_backup.name, BACKUP_INTERVAL_S, reap=False)
                pg = postgres_url(instance)
        checks = run_checks(
            home,
            settings.chroma_url,
            fingerprint,
            FailoverSettings.from_env().max_memory_mb,
            pg,
            facts,
            load_model=False,
        )
        ok = healthy(checks, strict=strict)
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
            limit = int(request.query_params.get("limit", "50"))
            offset = int(request.query_params.get("offset", "0"))
        except ValueError:
            raise _Reply(400, "limit and offset must be whole numbers") from None
        if not 1 <= limit <= 500 or offset < 0:
            raise _Reply(400, "limit must be from 1 to 500 and offset at least 0")
        from nova_pipeline.core.index import lexical_delta
        from nova_pipeline.core.index.vector_store import get_collection

        with active_client(home, settings.chroma_url) as client:  # a view of now, closed after
            col = get_collection(client, fingerprint, create=False)
            got = col.get(limit=limit, offset=offset, include=["documents", "metadatas"])
            total = col.count()
        # slim records hold path and language: the text, lines and symbol come from the document table
        table = lexical_delta.load_live(home)
        docs = table.documents(got["ids"]) if table is not None else {}
        items = []
        for i, d, m in zip(got["ids"], got["documents"], got["metadatas"]):
            doc = docs.get(i)
            if doc is not None:
                lines = {"start_line": doc.start_line, "end_line": doc.end_line, "symbol": doc.symbol}
                m = {**(m or {}), **lines}
                d = doc.text if doc.text is not None else d
            items.append({"id": i, "document": d, "metadata": m})
        return {"total": total, "limit": limit, "offset": offset, "items": items}, 200

    def backups(request):
        return {
            "backups": [
                {"id": b.id, "bytes": b.size, "verified_level": b.verified_level(), "file": b.path.name}
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

        run_id = request.path_params["run_id"]
        if not RUN_ID.match(run_id):
            raise _Reply(400, "a run id is 8 to 36 hexadecimal digits and dashes")
        if not _has_instance():
            raise _Reply(503, "DAGSTER_HOME is not set: no Dagster instance to ask")
        import dagster as dg

        with dg.DagsterInstance.get() as instance:
            found = run_status(instance, run_id)
        if not found:
            raise _Reply(404, f"no run {run_id} in the Dagster instance")
        return found, 200

    def restore(request):
        from nova_pipeline.deploy.instance import launch_job

        backup_id = request.path_params["backup_id"]
        if not BACKUP_ID.match(backup_id):
            raise _Reply(400, "a backup id reads like 20260101T000000Z (nova backup list shows them)")
        backup.find_backup(home, backup_id)  # a 404 now rather than a failed run later
        run_id = launch_job(
            "restore",
            {"ops": {"restore_op": {"config": {"backup_id": backup_id, "confirm": True}}}},
            tags={"nova/requested_by": "admin api"},
        )
        return launched("restore", run_id, backup_id=backup_id)

    def clear(request):
        from nova_pipeline.core.index.vector_store import existing_ids
        from nova_pipeline.core.index.verification import VerifiedRecord

        # the writer lock (and, under it, the pointer), like a rebuild's writer: never a second writer
        with writing_to(home, settings.chroma_url) as store:
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
            if proc.returncode != 0:
                log.error("chroma vacuum failed: %s", proc.stderr[-2000:])
            done["chroma"] = (
                "chroma vacuum done" if proc.returncode == 0 else "chroma vacuum failed: see the log"
            )
        return done, 200

    def launch_rebuild(request):
        from nova_pipeline.deploy.instance import launch_job

        if not _has_instance():
            raise _Reply(503, "DAGSTER_HOME is not set: no Dagster instance to launch the rebuild on")
        run_id = launch_job("rebuild", tags={"nova/requested_by": "admin api"})
        body, status = launched("rebuild", run_id)
        body["progress"] = f"{PREFIX}/runs/{run_id}"
        body["events"] = f"{PREFIX}/runs/{run_id}/events"
        return body, status

    def _run_id(request) -> str:
        run_id = request.path_params["run_id"]
        if not RUN_ID.match(run_id):
            raise _Reply(400, "a run id is 8 to 36 hexadecimal digits and dashes")
        if not _has_instance():
            raise _Reply(503, "DAGSTER_HOME is not set: no Dagster instance to ask")
        return run_id

    def run_progress(request):
        import dagster as dg

        from nova_pipeline.deploy import run_progress as rp
        from nova_pipeline.deploy.runs import resolve_run

        run_id = _run_id(request)
        with dg.DagsterInstance.get() as instance:
            try:
                run = resolve_run(instance, run_id)
            except NovaError:
                raise _Reply(404, f"no run {run_id} in the Dagster instance (or more than one)") from None
            progress = rp.RunProgress(run.run_id, run.job_name)
            cursor, more = None, True
            while more:
                _, cursor, more = rp.read(instance, run.run_id, progress, cursor)
            progress.status = instance.get_run_by_id(run.run_id).status.value
        return progress.as_json(), 200

    async def run_events(request: Request):
        """Server-Sent Events of a run's progress until it ends (sse-starlette: pings every 15 s)."""
        import json

        from sse_starlette.sse import EventSourceResponse
        from starlette.concurrency import iterate_in_threadpool

        caller = await gate.check(request, "viewer", "admin run events")
        if isinstance(caller, JSONResponse):
            return caller
        details = {"method": "GET", "path": request.url.path, "client": caller.client}
        try:
            run_id = _run_id(request)
        except _Reply as reply:
            await gate.record("admin run events", f"error ({reply.status})", caller.name, **details)
            return error(reply.status, reply.message, home)
        import dagster as dg

        from nova_pipeline.deploy import run_progress as rp

        def events():
            with dg.DagsterInstance.get() as instance:
                yield from rp.follow(instance, run_id, timeout_s=RUN_EVENTS_MAX_S)

        stream = events()
        try:  # the first event now, in a thread: an unknown run is a 404, not an empty stream
            first = await run_in_threadpool(next, stream, None)
        except KeyError:
            await gate.record("admin run events", "error (404)", caller.name, run_id=run_id, **details)
            return error(404, f"no run {run_id} in the Dagster instance")
        await gate.record("admin run events", "ok", caller.name, run_id=run_id, **details)

        async def body():
            if first is not None:
                yield {"event": first["type"], "data": json.dumps(first, default=str)}
            async for ev in iterate_in_threadpool(stream):
                yield {"event": ev["type"], "data": json.dumps(ev, default=str)}

        return EventSourceResponse(body(), ping=15)

    r = PREFIX
    return [
        Route(f"{r}/rebuild", guarded("admin", "rebuild", launch_rebuild), methods=["POST"]),
        Route(f"{r}/runs/{{run_id}}", guarded("viewer", "run progress", run_progress)),
        Route(f"{r}/runs/{{run_id}}/events", run_events),
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
