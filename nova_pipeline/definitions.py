"""The one Definitions object of the nova_pipeline code location."""

import dagster as dg

from nova_pipeline.defs import compression, embedding, golden, jobs, scan
from nova_pipeline.resources import default_resources

defs = dg.Definitions(
    assets=[
        scan.source_files,
        compression.frequent_patterns,
        compression.compression_dictionary,
        compression.compressed_store,
        embedding.source_chunks,
        embedding.vector_index,
        golden.golden_copy,
        golden.backups,
    ],
    asset_checks=[
        compression.dictionary_beats_no_dictionary,
        compression.store_round_trip,
        embedding.vector_count_matches_chunks,
        embedding.chunks_find_themselves,
        golden.golden_copy_verifies,
        golden.backup_structure,
        golden.backup_full_read,
        golden.backup_restore_drill,
    ],
    jobs=[jobs.rebuild_job, jobs.backup_job, golden.reset_index, golden.restore, golden.restore_drill],
    schedules=[jobs.nightly_rebuild, jobs.daily_backup, jobs.weekly_restore_drill],
    resources=default_resources(),
)
