"""The one Definitions object of the nova_pipeline code location."""

import dagster as dg

from nova_pipeline.defs import compression, embedding, jobs, scan
from nova_pipeline.resources import default_resources

defs = dg.Definitions(
    assets=[
        scan.source_files,
        compression.frequent_patterns,
        compression.compression_dictionary,
        compression.compressed_store,
        embedding.source_chunks,
        embedding.vector_index,
    ],
    asset_checks=[
        compression.dictionary_beats_no_dictionary,
        compression.store_round_trip,
        embedding.vector_count_matches_chunks,
        embedding.chunks_find_themselves,
    ],
    jobs=[jobs.rebuild_job],
    schedules=[jobs.nightly_rebuild],
    resources=default_resources(),
)
