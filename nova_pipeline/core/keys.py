"""The name of every asset and asset group, said once.

The Dagster UI shows these names; ``defs/`` declares the assets under them, ``core/<group>/`` holds their
logic, the CLI and the service report them, and ``nova_pipeline_tests/test_structure.py`` pins the whole
set. A DataFrame asset's table under ``NOVA_HOME/tables`` is named by its key too
(:mod:`nova_pipeline.core.tables`). Plain strings: nothing here imports Dagster.
"""

from __future__ import annotations

__all__ = [
    "ASSETS",
    "BACKUPS",
    "COMPRESSED_STORE",
    "COMPRESSION",
    "COMPRESSION_DICTIONARY",
    "FREQUENT_PATTERNS",
    "GOLDEN_COPY",
    "GROUPS",
    "INDEX",
    "INGEST",
    "CODE_GRAPH",
    "LEXICAL_INDEX",
    "PROTECT",
    "SERVING",
    "SOURCE_CHUNKS",
    "SOURCE_FILES",
    "VECTOR_INDEX",
]

# asset groups, in the order data flows through them (core/<group>/ imports only the groups before it)
INGEST = "ingest"
COMPRESSION = "compression"
INDEX = "index"
PROTECT = "protect"
SERVING = "serving"  # sensors and jobs only: it has no asset of its own
GROUPS = (INGEST, COMPRESSION, INDEX, PROTECT, SERVING)

# assets, in pipeline order
SOURCE_FILES = "source_files"  # ingest: the manifest of the tree
FREQUENT_PATTERNS = "frequent_patterns"  # compression
COMPRESSION_DICTIONARY = "compression_dictionary"  # compression
COMPRESSED_STORE = "compressed_store"  # compression
SOURCE_CHUNKS = "source_chunks"  # index
LEXICAL_INDEX = "lexical_index"  # index
VECTOR_INDEX = "vector_index"  # index
CODE_GRAPH = "code_graph"  # index
GOLDEN_COPY = "golden_copy"  # protect
BACKUPS = "backups"  # protect
ASSETS = (
    SOURCE_FILES,
    FREQUENT_PATTERNS,
    COMPRESSION_DICTIONARY,
    COMPRESSED_STORE,
    SOURCE_CHUNKS,
    LEXICAL_INDEX,
    VECTOR_INDEX,
    CODE_GRAPH,
    GOLDEN_COPY,
    BACKUPS,
)
