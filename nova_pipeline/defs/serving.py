"""Keeping search answering: the health sensors of the primary vector store and the ops of the failover and
failback jobs (the jobs are in ``jobs.py``). The logic is in :mod:`nova_pipeline.core.serving.failover`.

The sensors are RUNNING by default when ``NOVA_CHROMA_URL`` names a Chroma server (each tick probes it in a
subprocess), and STOPPED for the embedded store (turn them on in the UI to guard an embedded data dir).
"""

import datetime as dt
import json
import os

import dagster as dg

from nova_pipeline.core.keys import SOURCE_CHUNKS, VECTOR_INDEX
from nova_pipeline.core.protect import audit
from nova_pipeline.core.serving.failover import FailoverSettings, activate_backup, fail_back
from nova_pipeline.core.serving.pointer import read_state, set_breaker
from nova_pipeline.core.serving.probe import probe
from nova_pipeline.core.tables import require_table
from nova_pipeline.defs.resources import EmbedderResource, NovaSettings

# Read when the definitions load, on purpose: Dagster needs a sensor's interval and default status then.
# Everything else (thresholds, timeouts, delays) is read when a tick or an op runs.
PROBE_INTERVAL_S = FailoverSettings.from_env().probe_interval_s
DEFAULT_STATUS = (
    dg.DefaultSensorStatus.RUNNING if os.environ.get("NOVA_CHROMA_URL") else dg.DefaultSensorStatus.STOPPED
)


def _probe(nova: NovaSettings, embedder: EmbedderResource):
    settings = nova.settings(require_source=False)
    timeout = FailoverSettings.from_env().probe_timeout_s
    return lambda: probe(settings.home, settings.chroma_url, embedder.fingerprint(), timeout)


@dg.sensor(
    name="primary_vector_store_health",
    job_name="failover",
    default_status=DEFAULT_STATUS,
    minimum_interval_seconds=PROBE_INTERVAL_S,
    description="Probes the primary vector store (heartbeat, count, one query, in a subprocess) through "
    "a circuit breaker kept in the cursor; requests the failover job when it opens.",
)
def primary_vector_store_health(
    context: dg.SensorEvaluationContext, nova: NovaSettings, embedder: EmbedderResource
):
    from nova_pipeline.core.serving.breaker import (  # pybreaker: only the sensor needs it
        evaluate,
        make_breaker,
    )

    home = nova.settings(require_source=False).home
    failover = FailoverSettings.from_env()
    breaker, storage = make_breaker(json.loads(context.cursor) if context.cursor else None, failover)
    tick = evaluate(breaker, _probe(nova, embedder))
    context.update_cursor(json.dumps(storage.data))
    state = set_breaker(home, tick.after)
    if tick.skipped:
        return dg.SkipReason(
            f"breaker open since {storage.data['opened_at']}: no probe until it half-opens "
            f"({failover.half_open_after_s:g} s)"
        )
    if tick.opened:
        context.log.warning(f"primary vector store failed {len(tick.probes)} probes: {tick.errors[-1]}")
        if not state.failed_over:
            return dg.RunRequest(
                run_key=f"failover-{storage.data['opened_at']}", tags={"nova/reason": tick.errors[-1][:200]}
            )
        return dg.SkipReason("breaker opened; already failed over")
    if tick.probes and tick.probes[-1]:
        return dg.SkipReason(f"primary healthy (breaker {tick.after})")
    return dg.SkipReason(
        f"primary failed a probe ({tick.errors[-1] if tick.errors else '?'}); "
        f"breaker {tick.after}, {storage.counter} of {failover.failure_threshold} failures"
    )


@dg.sensor(
    name="primary_recovered",
    job_name="failback",
    default_status=DEFAULT_STATUS,
    minimum_interval_seconds=PROBE_INTERVAL_S,
    description="While failed over, requests the failback job once the primary has passed every probe "
    "for the restore delay.",
)
def primary_recovered(context: dg.SensorEvaluationContext, nova: NovaSettings, embedder: EmbedderResource):
    home = nova.settings(require_source=False).home
    if not read_state(home).failed_over:
        context.update_cursor(None)
        return dg.SkipReason("on the primary store: nothing to recover")
    result = _probe(nova, embedder)()
    if not result.ok:
        context.update_cursor(None)
        return dg.SkipReason(f"primary still down: {result.error}")
    now = dt.datetime.now(dt.timezone.utc)
    since = dt.datetime.fromisoformat(context.cursor) if context.cursor else now
    healthy_for = (now - since).total_seconds()
    restore_delay_s = FailoverSettings.from_env().restore_delay_s
    if healthy_for < restore_delay_s:
        context.update_cursor(since.isoformat())
        return dg.SkipReason(
            f"primary healthy for {healthy_for:.0f} s of the {restore_delay_s:g} s restore delay"
        )
    context.update_cursor(None)
    return dg.RunRequest(run_key=f"failback-{since.isoformat()}")


def _who(context) -> str:
    return audit.actor(context.run.tags.get("dagster/user") or context.run.tags.get("dagster/sensor_name"))


@dg.op
def failover_op(context: dg.OpExecutionContext, nova: NovaSettings):
    """Estimate the backup's resources, bring the on-disk backup store to CURRENT, flip the pointer to the
    backup, audit. A refused failover (no golden copy, not enough memory or disk) fails the run, saying
    why."""
    home = nova.settings(require_source=False).home
    reason = context.run.tags.get("nova/reason", "requested by hand")
    entry = activate_backup(home, FailoverSettings.from_env(), reason, _who(context))
    context.log.warning(f"failover: {entry['outcome']}; searches now come from the backup store")
    context.log_event(
        dg.AssetObservation(
            asset_key=VECTOR_INDEX,
            metadata={"failover": entry["outcome"], "audit": dg.MetadataValue.json(entry)},
        )
    )


@dg.op
def failback_op(context: dg.OpExecutionContext, nova: NovaSettings, embedder: EmbedderResource):
    """Replay the journal into the primary (refilling an empty one from the golden copy first), check count
    and self-retrieval against the chunks, flip the pointer back, audit. Nothing is embedded again."""
    settings = nova.settings(require_source=False)
    # what the primary must hold after the replay, read under the writer lock (no run can change it between)
    chunks = lambda: require_table(settings.layout, SOURCE_CHUNKS)  # noqa: E731
    entry = fail_back(settings.home, settings.chroma_url, embedder.fingerprint(), chunks, _who(context))
    context.log.info(f"failback: {entry['outcome']}")
    context.log_event(
        dg.AssetObservation(
            asset_key=VECTOR_INDEX,
            metadata={"failback": entry["outcome"], "audit": dg.MetadataValue.json(entry)},
        )
    )


@dg.sensor(
    name="dead_runs",
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=60,
    description="Fails runs of this host that are still STARTED although their process is gone (killed or "
    "crashed), saying why in an engine event, and frees their pool slots, so `nova resume` can re-execute "
    "them and they never keep the vector_index_writer pool full.",
)
def dead_runs(context: dg.SensorEvaluationContext):
    from nova_pipeline.deploy.runs import reap_dead_runs

    reaped = reap_dead_runs(context.instance)
    if not reaped:
        return dg.SkipReason("no run of this host lost its process")
    for dead in reaped:
        context.log.warning(f"run {dead.run_id} ({dead.job_name}): {dead.reason}; marked failed, slots freed")
    return dg.SkipReason(f"marked {len(reaped)} dead runs failed: {', '.join(d.run_id[:8] for d in reaped)}")
