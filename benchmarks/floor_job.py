"""Orchestration floors for bench_warm, run with the executor ``rebuild`` uses (in-process).

* ``floor``: a trivial 2-asset job (the issue's floor);
* ``shape_floor``: no-op assets and checks with the exact shape of ``rebuild`` (7 assets, 5 checks, the
  same dependencies), under a ``floor/`` key prefix: what Dagster itself costs for that graph.
"""

import dagster as dg


@dg.asset
def floor_a() -> int:
    return 1


@dg.asset
def floor_b(floor_a: int) -> int:
    return floor_a + 1


SHAPE = {  # asset: upstream assets, as in the rebuild job
    "source_files": [],
    "frequent_patterns": ["source_files"],
    "compression_dictionary": ["frequent_patterns"],
    "compressed_store": ["compression_dictionary"],
    "source_chunks": ["source_files"],
    "vector_index": ["source_chunks"],
    "golden_copy": ["vector_index", "compressed_store"],
}
CHECKS = [
    ("compression_dictionary", False),
    ("compressed_store", True),
    ("vector_index", True),
    ("vector_index", True),
    ("golden_copy", True),
]


def _asset(name, upstream):
    @dg.asset(name=name, key_prefix="floor", deps=[dg.AssetKey(["floor", u]) for u in upstream])
    def _noop() -> dg.MaterializeResult:
        return dg.MaterializeResult(metadata={"rows": 0})

    return _noop


def _check(asset, n, blocking):
    @dg.asset_check(asset=dg.AssetKey(["floor", asset]), name=f"check_{n}", blocking=blocking)
    def _noop() -> dg.AssetCheckResult:
        return dg.AssetCheckResult(passed=True)

    return _noop


shape_assets = [_asset(n, u) for n, u in SHAPE.items()]
shape_checks = [_check(a, i, b) for i, (a, b) in enumerate(CHECKS)]

floor = dg.define_asset_job("floor", selection=[floor_a, floor_b], executor_def=dg.in_process_executor)
shape_floor = dg.define_asset_job(
    "shape_floor", selection=dg.AssetSelection.key_prefixes("floor"), executor_def=dg.in_process_executor
)
defs = dg.Definitions(
    assets=[floor_a, floor_b, *shape_assets], asset_checks=shape_checks, jobs=[floor, shape_floor]
)
