"""Live updates of the index from file events (``nova watch``): :mod:`.updater` applies a change,
:mod:`.watcher` turns events into updates. Not an asset group: a live update applies the groups' own
functions (ingest, compression, index; through serving's ``writing_to``) and reports runless
materializations of their assets; it may import every group."""

__all__ = ["updater", "watcher"]
