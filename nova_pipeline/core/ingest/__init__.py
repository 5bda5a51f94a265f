"""The ``ingest`` group: the scan of a source tree into the manifest of the ``source_files`` asset.

Owns the walk and its ignore rules (:mod:`.walk`), file languages (:mod:`.languages`), and hashing and the
manifest (:mod:`.manifest`). Imports only the ``core`` root.
"""

__all__ = ["languages", "manifest", "walk"]
