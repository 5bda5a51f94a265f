"""The ``serving`` group: answering searches through failures, and operating the store.

Owns the searcher with its per-query fallback, the failover pointer, journal, probe, resource estimate and
breaker, API tokens, health checks, stats and rebuild plans. Imports the ``core`` root and every other
group; nothing in ``core`` imports it.
"""

__all__ = [
    "backup_store",
    "breaker",
    "estimate",
    "failover",
    "health",
    "journal",
    "plan",
    "pointer",
    "probe",
    "query_breaker",
    "search_api",
    "searcher",
    "stats",
    "tokens",
    "views",
]
