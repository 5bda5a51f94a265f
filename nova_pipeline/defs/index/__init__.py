"""Dagster glue of the ``index`` group: ``source_chunks`` and ``lexical_index`` (:mod:`.chunks`), and
``vector_index`` with its slices and checks (:mod:`.vectors`). Logic lives in :mod:`nova_pipeline.core.index`.
"""
