"""The ``code_graph`` tables of a tree: files parsed again only when their blake3 changed, then every
relation resolved over the whole tree."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import blake3
import numpy as np
import pandas as pd

from nova_pipeline.core.index.graph.extract import extract_markdown, extract_python, parse_scope, symbol_id
from nova_pipeline.core.index.graph.resolve import Tree, resolve_name
from nova_pipeline.core.tables import CODE_NAMES, CODE_RELATIONS, CODE_SYMBOLS

__all__ = [
    "GRAPH_VERSION",
    "inputs_digest",
    "NAME_COLUMNS",
    "RELATION_COLUMNS",
    "RELATION_KINDS",
    "SYMBOL_COLUMNS",
    "TABLES",
    "GraphStats",
    "build_graph",
]

log = logging.getLogger(__name__)

GRAPH_VERSION = "2"  # bump when extraction or resolution changes: every file is parsed again
SYMBOL_COLUMNS = [
    "symbol_id",
    "qualname",
    "kind",
    "path",
    "start_line",
    "end_line",
    "chunk_id",
    "file_blake3",
]
RELATION_COLUMNS = ["source", "target", "target_text", "kind", "path", "line", "file_blake3"]
NAME_COLUMNS = ["owner", "name", "target", "kind", "path", "file_blake3"]
TABLES = (CODE_SYMBOLS, CODE_RELATIONS, CODE_NAMES)
RELATION_KINDS = ("CALLS", "IMPORTS", "INHERITS", "CONTAINS", "LINKS")


@dataclass
class GraphStats:
    """What :func:`build_graph` did: files parsed again, reused, skipped (with why), and the table sizes."""

    files_parsed: int = 0
    files_reused: int = 0
    skipped: dict[str, str] = field(default_factory=dict)  # path -> reason
    symbols: int = 0
    relations: int = 0
    resolved_calls: int = 0
    calls: int = 0


def _empty(columns: list[str]) -> pd.DataFrame:
    ints = {"start_line", "end_line", "line"}
    return pd.DataFrame({c: pd.Series(dtype="int64" if c in ints else "str") for c in columns})


def inputs_digest(root, manifest: pd.DataFrame, chunks: pd.DataFrame | None) -> str:
    """What :func:`build_graph` reads, as 32 hex digits: the graph version, the tree's root, the live Python
    and Markdown files' ``(path, blake3)`` and the chunks' ``(chunk_id, path, start_line, end_line)``, each
    row hashed by pandas (vectorised) and sorted. An equal digest gives the same tables: an unchanged
    rebuild skips the graph."""
    live = manifest[(manifest["status"] != "deleted") & manifest["language"].isin(["python", "markdown"])]
    h = blake3.blake3(f"{GRAPH_VERSION}\0{Path(root).resolve()}".encode())
    h.update(np.sort(pd.util.hash_pandas_object(live[["path", "blake3"]], index=False).to_numpy()).tobytes())
    if chunks is not None:
        cols = ["chunk_id", "path", "start_line", "end_line"]
        h.update(np.sort(pd.util.hash_pandas_object(chunks[cols], index=False).to_numpy()).tobytes())
    return h.hexdigest()[:32]


def build_graph(
    root,
    manifest: pd.DataFrame,
    chunks: pd.DataFrame | None,
    previous: tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame] | None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, GraphStats]:
    """The ``(code_symbols, code_relations, code_names)`` tables of the tree at ``root`` (``manifest``).

    ``code_names`` (``owner, name, target, kind, path, file_blake3``) holds each file's import aliases
    (kind ``alias``) and local definitions (``local``): what resolution needs, so that an unchanged file is
    not parsed again. Files of ``previous`` whose ``(path, blake3)`` is unchanged keep their rows; others
    are read and parsed again (a file whose blake3 no longer matches, or that does not parse, is skipped,
    named in the stats and logged). Resolution runs over the whole tree every time, since one changed file
    can change what another file's names mean; it costs a few dictionary lookups per site. ``chunks``
    (``path, start_line, end_line, chunk_id``) gives each symbol its chunk.
    """
    stats = GraphStats()
    # a tree rooted at a package (``.../json``): its modules are named from the package (``json.decoder``)
    package = Path(root).resolve().name if (Path(root) / "__init__.py").is_file() else ""
    live = manifest[(manifest["status"] != "deleted") & manifest["language"].isin(["python", "markdown"])]
    present = set(manifest.loc[manifest["status"] != "deleted", "path"].tolist())
    live_keys = set(zip(live["path"].tolist(), live["blake3"].tolist()))
    frames: list[list[pd.DataFrame]] = [[], [], []]
    keep: set[tuple[str, str]] = set()
    if previous is not None and len(previous[0]):
        keep = set(zip(previous[0]["path"].tolist(), previous[0]["file_blake3"].tolist())) & live_keys
        wanted = {f"{p}\0{d}" for p, d in keep}
        for i, table in enumerate(previous):
            key = table["path"].astype(str) + "\0" + table["file_blake3"].astype(str)
            frames[i].append(table[key.isin(wanted).to_numpy()])
        stats.files_reused = len(keep)
    todo = [
        (p, d, lang)
        for p, d, lang in zip(live["path"].tolist(), live["blake3"].tolist(), live["language"].tolist())
        if (p, d) not in keep
    ]
    rows: list[list[dict]] = [[], [], []]
    for i, (path, digest, language) in enumerate(todo, 1):
        if progress is not None and (i % 50 == 0 or i == len(todo)):
            progress(i, len(todo))
        try:
            data = (Path(root) / path).read_bytes()
        except OSError as exc:
            stats.skipped[path] = f"unreadable ({exc.strerror or exc})"
            continue
        if blake3.blake3(data).hexdigest() != digest:
            stats.skipped[path] = "changed since the scan"
            continue
        text = data.decode("utf-8", errors="replace")
        try:
            g = (
                extract_python(path, text, package)
                if language == "python"
                else extract_markdown(path, text, present)
            )
        except (SyntaxError, ValueError, RecursionError) as exc:
            stats.skipped[path] = f"does not parse ({type(exc).__name__}: {exc})"
            continue
        stats.files_parsed += 1
        rows[0] += [{**s, "symbol_id": "", "chunk_id": "", "file_blake3": digest} for s in g.symbols]
        rows[1] += [{"scope": "", **r, "file_blake3": digest} for r in g.relations]
        rows[2] += [
            {"owner": owner, "name": k, "target": v, "kind": "alias", "path": path, "file_blake3": digest}
            for (owner, k), v in g.aliases.items()
        ]
        rows[2] += [
            {"owner": owner, "name": n, "target": t, "kind": kind, "path": path, "file_blake3": digest}
            for (kind, owner, n), t in g.instances.items()
        ]
        rows[2] += [
            {"owner": owner, "name": n, "target": "", "kind": "bound", "path": path, "file_blake3": digest}
            for owner, names in g.bound.items()
            for n in sorted(names)
        ]
        rows[2] += [
            {"owner": owner, "name": n, "target": "", "kind": "local", "path": path, "file_blake3": digest}
            for owner, names in g.local_defs.items()
            for n in sorted(names)
        ]
    for path, why in sorted(stats.skipped.items()):
        log.warning("code graph: %s skipped: %s", path, why)
    columns = [SYMBOL_COLUMNS, [*RELATION_COLUMNS, "scope"], NAME_COLUMNS]
    tables = []
    for i in range(3):
        if rows[i]:
            frames[i].append(pd.DataFrame.from_records(rows[i]))
        parts = [f for f in frames[i] if len(f)]
        tables.append(pd.concat(parts, ignore_index=True)[columns[i]] if parts else _empty(columns[i]))
    symbols, relations, names = tables
    symbols = symbols.assign(
        symbol_id=[symbol_id(p, q) for p, q in zip(symbols["path"], symbols["qualname"])],
        chunk_id=_chunk_of(symbols, chunks),
    )
    symbols = symbols.sort_values(["path", "start_line", "qualname"], ignore_index=True)
    relations = _resolve_tree(symbols, relations, names)
    calls = relations[relations["kind"] == "CALLS"]
    stats.calls, stats.resolved_calls = len(calls), int((calls["target"] != "").sum())
    stats.symbols, stats.relations = len(symbols), len(relations)
    for t, ints in ((symbols, ("start_line", "end_line")), (relations, ("line",))):
        for c in ints:
            t[c] = t[c].astype("int64")
    return symbols, relations, names.reset_index(drop=True), stats


def _resolve_tree(symbols: pd.DataFrame, relations: pd.DataFrame, names: pd.DataFrame) -> pd.DataFrame:
    """``relations`` with ``target`` resolved over the whole tree (``CALLS``, ``INHERITS``, ``IMPORTS``)."""
    aliases: dict[str, dict[str, str]] = {}
    local_defs: dict[str, set[str]] = {}
    bound: dict[str, set[str]] = {}
    instances: dict[tuple[str, str, str], str] = {}
    for owner, name, target, kind in zip(names["owner"], names["name"], names["target"], names["kind"]):
        if kind == "alias":
            aliases.setdefault(owner, {})[name] = target
        elif kind == "bound":
            bound.setdefault(owner, set()).add(name)
        elif kind in ("instance", "attr_instance"):
            instances[(kind, owner, name)] = target
        else:
            local_defs.setdefault(owner, set()).add(name)
    modules = symbols[symbols["kind"] == "module"]
    module_of_path = dict(zip(modules["path"], modules["qualname"]))
    tree = Tree(symbols, aliases, {})
    tree.bound = bound
    tree.instances = instances
    tree.local_defs = local_defs
    inherits = relations[relations["kind"] == "INHERITS"]
    for src, text, path, scope in zip(
        inherits["source"], inherits["target_text"], inherits["path"], inherits["scope"]
    ):
        hit = resolve_name(tree, module_of_path.get(path, ""), local_defs, text, parse_scope(scope))
        if hit:
            tree.bases.setdefault(src, []).append(hit)
    targets = []
    for kind, tgt, text, path, scope in zip(
        relations["kind"],
        relations["target"],
        relations["target_text"],
        relations["path"],
        relations["scope"],
    ):
        if kind in ("CALLS", "INHERITS"):
            hit = resolve_name(tree, module_of_path.get(path, ""), local_defs, text, parse_scope(scope))
            targets.append(hit if hit and hit not in tree.modules else "")  # a module is never called
        elif kind == "IMPORTS":
            targets.append(tree.follow(tgt) or "")
        else:
            targets.append(tgt)
    return relations.assign(target=targets).reset_index(drop=True)


def _chunk_of(symbols: pd.DataFrame, chunks: pd.DataFrame | None) -> list[str]:
    """The chunk holding each symbol's first line ("" when none): of a file's chunks that hold it, the first
    in the chunk table's order. One comparison matrix per file (its symbols by its chunks), not a lookup
    per symbol: 10,000 symbols cost about 0.55 s one at a time, and a few ms so."""
    if chunks is None or not len(chunks) or not len(symbols):
        return [""] * len(symbols)
    out = np.full(len(symbols), "", dtype=object)
    starts = chunks["start_line"].to_numpy(dtype=np.int64)
    ends = chunks["end_line"].to_numpy(dtype=np.int64)
    ids = chunks["chunk_id"].to_numpy(dtype=object)
    lines = np.maximum(symbols["start_line"].to_numpy(dtype=np.int64), 1)
    of_path = chunks.groupby("path", sort=False).indices  # path -> row positions, in table order
    for path, rows in symbols.groupby("path", sort=False).indices.items():
        cols = of_path.get(path)
        if cols is None:
            continue
        at = lines[rows][:, None]
        holds = (starts[cols][None, :] <= at) & (ends[cols][None, :] >= at)
        found = holds.any(axis=1)
        out[rows[found]] = ids[cols[holds.argmax(axis=1)[found]]]
    return out.tolist()


# -- queries -------------------------------------------------------------------------------------------
