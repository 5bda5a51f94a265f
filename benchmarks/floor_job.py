"""Orchestration floors for bench_warm, run with the executor ``rebuild`` uses (in-process).

* ``floor``: a trivial 2-asset job (the issue's floor);
* ``shape_floor``: no-op assets and checks with the exact shape of ``rebuild``'s unchanged run (8 assets,
  one of them a graph of two steps; 6 checks inside their assets' steps; the same dependencies), under a
  ``floor/`` key prefix: what Dagster itself costs for that graph.

With ``NOVA_BENCH_GC_FREEZE=1`` this module ends as ``nova_pipeline.definitions`` does, with ``gc.freeze()``
(README, "The warm path"), so the bench can show how much of the rebuild's gain that setting alone gives.
"""

import gc
import os

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
    "lexical_index": ["source_chunks"],
    "golden_copy": ["vector_index", "compressed_store", "lexical_index"],
}
CHECKS = {  # asset: its checks (run inside the asset's step, as rebuild's do), blocking or not
    "compression_dictionary": [False],
    "compressed_store": [True],
    "lexical_index": [True],
    "golden_copy": [True],
}
VECTOR_CHECKS = [True, True]  # vector_index: a graph of two steps on the unchanged path, checks in the last


def _specs(asset, blocking):
    return [
        dg.AssetCheckSpec(f"check_{i}", asset=dg.AssetKey(["floor", asset]), blocking=b)
        for i, b in enumerate(blocking)
    ]


def _asset(name, upstream):
    @dg.asset(
        name=name,
        key_prefix="floor",
        deps=[dg.AssetKey(["floor", u]) for u in upstream],
        check_specs=_specs(name, CHECKS.get(name, [])),
    )
    def _noop() -> dg.MaterializeResult:
        return dg.MaterializeResult(
            metadata={"rows": 0},
            check_results=[
                dg.AssetCheckResult(check_name=c.name, passed=True)
                for c in _specs(name, CHECKS.get(name, []))
            ],
        )

    return _noop


@dg.op(ins={"upstream": dg.In(dg.Nothing)})
def _plan() -> int:
    return 0


@dg.op(
    out={
        "result": dg.Out(),
        **{
            s.get_python_identifier(): dg.Out(dg.Nothing, is_required=False)
            for s in _specs("vector_index", VECTOR_CHECKS)
        },
    }
)
def _finish(plan: int):
    yield dg.Output(plan, "result")
    for spec in _specs("vector_index", VECTOR_CHECKS):
        yield dg.AssetCheckResult(check_name=spec.name, passed=True)


@dg.graph_asset(
    key=dg.AssetKey(["floor", "vector_index"]),
    ins={"upstream": dg.AssetIn(["floor", "source_chunks"], dagster_type=dg.Nothing)},
    check_specs=_specs("vector_index", VECTOR_CHECKS),
)
def _vector_index(upstream):
    outs = _finish(_plan(upstream))
    return {
        "result": outs[0],
        **{s.get_python_identifier(): o for s, o in zip(_specs("vector_index", VECTOR_CHECKS), outs[1:])},
    }


shape_assets = [_asset(n, u) for n, u in SHAPE.items()] + [_vector_index]

floor = dg.define_asset_job("floor", selection=[floor_a, floor_b], executor_def=dg.in_process_executor)
shape_floor = dg.define_asset_job(
    "shape_floor", selection=dg.AssetSelection.key_prefixes("floor"), executor_def=dg.in_process_executor
)
defs = dg.Definitions(assets=[floor_a, floor_b, *shape_assets], jobs=[floor, shape_floor])

if os.environ.get("NOVA_BENCH_GC_FREEZE") == "1":
    gc.freeze()
