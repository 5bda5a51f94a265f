"""Plain-Python logic of nova_pipeline. Nothing in this package imports dagster.

The root holds only the shared foundations: settings, layout (paths under ``NOVA_HOME``), tables, errors,
atomic writes, locks (the one lock order) and loading. The rest is grouped by the asset groups a user
sees in the Dagster UI, each a package imported in this order, lowest first; a group imports only from
the root and from the groups before it (``nova_pipeline_tests/test_structure.py`` checks it):

1. ``ingest``: the scan of the tree into a manifest (walk, ignore rules, hashing);
2. ``compression``: pattern analysis, the zstd dictionary, the content-addressed store;
3. ``index``: chunking, embeddings, the vector store, the lexical index, ranking;
4. ``protect``: golden versions, backups, the mass-deletion guard, the audit log;
5. ``serving``: search with failover, the failover pointer and journal, the breaker, tokens, health,
   stats and plans.
"""

GROUPS = ("ingest", "compression", "index", "protect", "serving")
