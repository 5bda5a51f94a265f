"""Live updates of the index from file events (``nova watch``): :mod:`.updater` applies a change,
:mod:`.watcher` turns events into updates."""
