"""The ``compression`` group: ``frequent_patterns``, ``compression_dictionary`` and ``compressed_store``.

Owns the repeat analysis (:mod:`.repeats`, :mod:`.patterns`), zstd dictionaries (:mod:`.dictionary`) and
the content-addressed store with its own GC roots (:mod:`.store`). Imports the ``core`` root and ``ingest``.
"""

__all__ = ["dictionary", "patterns", "repeats", "store"]
