"""The ``code_graph`` tables of a tree: files parsed again only when their blake3 changed, then the call
sites whose answer may have changed resolved again over the whole tree (:func:`_resolve_tree`)."""

from __future__ import annotations

import contextlib
import gc
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import blake3
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from nova_pipeline.core.index.graph.extract import extract_markdown, extract_python, parse_scope, symbol_id
from nova_pipeline.core.index.graph.resolve import MEMO_HELD, NameFacts, Tree, resolve_name
from nova_pipeline.core.tables import CODE_NAMES, CODE_RELATIONS, CODE_SYMBOLS, drop_runs, replace_at

__all__ = [
    "GRAPH_VERSION",
    "chunk_spans_digest",
    "inputs_digest",
    "NAME_COLUMNS",
    "RELATION_COLUMNS",
    "RELATION_KINDS",
    "SPAN_COLUMNS",
    "SYMBOL_COLUMNS",
    "TABLES",
    "GraphStats",
    "build_graph",
]

log = logging.getLogger(__name__)

GRAPH_VERSION = "3"  # bump when extraction or resolution changes: every file is parsed again
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
UNPARSED = "unparsed"  # a code_names row of a file that does not parse: its name is why (not parsed again)
TABLES = (CODE_SYMBOLS, CODE_RELATIONS, CODE_NAMES)
RELATION_KINDS = ("CALLS", "IMPORTS", "INHERITS", "CONTAINS", "LINKS")
PY_SLICE = 50_000  # table rows turned into Python values at a time (_python_rows)


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
    calls_kept: int = 0  # call sites of unchanged files whose target was kept (nothing they read changed)


def _empty(columns: list[str]) -> pd.DataFrame:
    ints = {"start_line", "end_line", "line"}
    return pd.DataFrame({c: pd.Series(dtype="int64" if c in ints else "str") for c in columns})


SPAN_COLUMNS = ["chunk_id", "path", "start_line", "end_line"]  # what the graph reads of the chunks table


def chunk_spans_digest(chunks: pd.DataFrame | None) -> str:
    """The chunks' ``(chunk_id, path, start_line, end_line)`` (:data:`SPAN_COLUMNS`) as 32 hex digits: each
    row hashed by pandas (vectorised), sorted, then blake3; "" for no table. The part of
    :func:`inputs_digest` that grows with the chunks (0.34 s at 342,000), so a caller can keep it per version
    of the chunks table (:func:`~nova_pipeline.core.tables.memo`)."""
    if chunks is None:
        return ""
    rows = pd.util.hash_pandas_object(chunks[SPAN_COLUMNS], index=False).to_numpy()
    return blake3.blake3(np.sort(rows).tobytes()).hexdigest()[:32]


def inputs_digest(root, manifest: pd.DataFrame, spans: str) -> str:
    """What :func:`build_graph` reads, as 32 hex digits: the graph version, the tree's root, the live Python
    and Markdown files' ``(path, blake3)`` (each row hashed by pandas, vectorised, and sorted) and ``spans``,
    the chunks' :func:`chunk_spans_digest`. An equal digest gives the same tables: an unchanged rebuild skips
    the graph."""
    live = manifest[(manifest["status"] != "deleted") & manifest["language"].isin(["python", "markdown"])]
    h = blake3.blake3(f"{GRAPH_VERSION}\0{Path(root).resolve()}\0{spans}".encode())
    h.update(np.sort(pd.util.hash_pandas_object(live[["path", "blake3"]], index=False).to_numpy()).tobytes())
    return h.hexdigest()[:32]


def build_graph(
    root,
    manifest: pd.DataFrame,
    chunks: pd.DataFrame | None,
    previous: tuple[pd.DataFrame | pa.Table, pd.DataFrame | pa.Table, pd.DataFrame | pa.Table] | None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, GraphStats]:
    """The ``(code_symbols, code_relations, code_names)`` tables of the tree at ``root`` (``manifest``).

    ``code_names`` (``owner, name, target, kind, path, file_blake3``) holds each file's import aliases
    (kind ``alias``) and local definitions (``local``): what resolution needs, so that an unchanged file is
    not parsed again. Files of ``previous`` (the last build's three tables, as DataFrames or, cheaper, as the
    Arrow tables read from Parquet) whose ``(path, blake3)`` is unchanged keep their rows; others
    are read and parsed again (a file whose blake3 no longer matches, or that does not parse, is skipped,
    named in the stats and logged; one that does not parse is remembered, as a ``code_names`` row of kind
    :data:`UNPARSED`, so the same bytes are neither parsed nor logged again, and stay in the stats).

    One changed file can change what another file's names mean, so each call site keeps, in
    ``code_relations.deps``, the modules its resolution consulted; a site of an unchanged file is resolved
    again only when one of them changed (:func:`_resolve_tree`). ``chunks`` (``path, start_line, end_line,
    chunk_id``) gives each symbol its chunk.
    """
    with _collector_paused():
        return _build(root, manifest, chunks, previous, progress)


@contextlib.contextmanager
def _collector_paused():
    """Python's cyclic garbage collector off while a build makes millions of small containers (dicts, sets,
    tuples; no cycles among them). Each collection of the oldest generation walks every object of the
    process, and a rebuild run holds large tables: measured alone at 10,000 files, a build took 6.4 s with
    the collector and 5.5 s without."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _build(root, manifest, chunks, previous, progress):
    """:func:`build_graph`'s work."""
    stats = GraphStats()
    # a tree rooted at a package (``.../json``): its modules are named from the package (``json.decoder``)
    package = Path(root).resolve().name if (Path(root) / "__init__.py").is_file() else ""
    live = manifest[(manifest["status"] != "deleted") & manifest["language"].isin(["python", "markdown"])]
    present = set(manifest.loc[manifest["status"] != "deleted", "path"].tolist())
    live_keys = set(zip(live["path"].tolist(), live["blake3"].tolist()))
    frames: list[list[pd.DataFrame]] = [[], [], []]
    keep: set[tuple[str, str]] = set()
    unparsed: dict[tuple[str, str], str] = {}  # (path, blake3) -> why, of files that did not parse last time
    if previous is not None:
        previous = tuple(_as_arrow(t) for t in previous)
    if previous is not None and previous[0].num_rows:
        names0 = previous[2]
        last = names0.filter(pc.equal(names0.column("kind"), UNPARSED))
        unparsed = {
            k: why
            for k, why in zip(
                zip(last.column("path").to_pylist(), last.column("file_blake3").to_pylist()),
                last.column("name").to_pylist(),
            )
            if k in live_keys
        }
        symbols0 = previous[0]
        keep = set(zip(symbols0.column("path").to_pylist(), symbols0.column("file_blake3").to_pylist()))
        keep &= live_keys
        keep |= set(unparsed)  # the same bytes do not parse now either: not read again, nor logged again
        kept_paths = {p for p, _ in keep}
        for i, table in enumerate(previous):
            frames[i].append(_without_paths(table, kept_paths))
        stats.files_reused = len(keep) - len(unparsed)
    todo = [
        (p, d, lang)
        for p, d, lang in zip(live["path"].tolist(), live["blake3"].tolist(), live["language"].tolist())
        if (p, d) not in keep
    ]
    columns = [SYMBOL_COLUMNS, [*RELATION_COLUMNS, "scope", "deps", "base"], NAME_COLUMNS]
    rows = [_Columns(c) for c in columns]
    parsed: set[str] = set()
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
            why = f"does not parse ({type(exc).__name__}: {exc})"
            stats.skipped[path] = why
            rows[2].add(
                [{"owner": "", "name": why, "target": "", "kind": UNPARSED}], path=path, file_blake3=digest
            )
            continue
        stats.files_parsed += 1
        parsed.add(path)
        rows[0].add(g.symbols, symbol_id="", chunk_id="", file_blake3=digest)
        rows[1].add(g.relations, file_blake3=digest, deps="", base="")
        file_names = [
            {"owner": o, "name": k, "target": v, "kind": "alias"} for (o, k), v in g.aliases.items()
        ]
        file_names += [
            {"owner": o, "name": n, "target": t, "kind": k} for (k, o, n), t in g.instances.items()
        ]
        for kind, of_owner in (("bound", g.bound), ("local", g.local_defs)):
            file_names += [
                {"owner": o, "name": n, "target": "", "kind": kind}
                for o, ns in of_owner.items()
                for n in sorted(ns)
            ]
        rows[2].add(file_names, path=path, file_blake3=digest)
    for path, why in sorted(stats.skipped.items()):
        log.warning("code graph: %s skipped: %s", path, why)
    stats.skipped.update({p: why for (p, _), why in unparsed.items()})  # still not in the graph (logged then)
    tables = []
    for i in range(3):
        parts = [f for f in frames[i] if len(f)] + ([rows[i].frame()] if rows[i].n else [])
        rows[i] = frames[i] = None  # each table held once from here: resolution comes next, and needs room
        if len(parts) > 1:
            parts = [pd.concat(parts, ignore_index=True)]
        tables.append(parts[0][columns[i]] if parts else _empty(columns[i]))
        del parts
    symbols, relations, names = tables
    ids = symbols["symbol_id"].fillna("").to_numpy(dtype=object)  # kept rows have theirs; new rows ""
    new = np.flatnonzero(ids == "")
    fresh = symbols.iloc[new]
    ids[new] = [symbol_id(p, q) for p, q in zip(fresh["path"].tolist(), fresh["qualname"].tolist())]
    symbols = symbols.assign(symbol_id=ids, chunk_id=_chunk_of(symbols, chunks))
    symbols = symbols.sort_values(["path", "start_line", "qualname"], ignore_index=True)
    since = None
    if previous is not None and previous[0].num_rows:
        before = set(pc.unique(previous[0].column("path")).to_pylist())
        gone = before - {p for p, _ in live_keys}
        # the files whose facts may differ: parsed now, or had facts before (one skipped both times has none)
        since = (_facts_before(previous), {p for p, _, _ in todo if p in parsed or p in before} | gone)
    relations, stats.calls_kept = _resolve_tree(symbols, relations, names, since)
    is_call = (relations["kind"] == "CALLS").to_numpy()
    stats.calls = int(is_call.sum())
    stats.resolved_calls = int((is_call & (relations["target"] != "").to_numpy()).sum())
    stats.symbols, stats.relations = len(symbols), len(relations)
    for t, ints in ((symbols, ("start_line", "end_line")), (relations, ("line",))):
        for c in ints:
            t[c] = t[c].astype("int64")
    return symbols, relations, names.reset_index(drop=True), stats


class _Columns:
    """The new rows of one table, kept as a list per column until they become a DataFrame: 8 bytes a cell,
    where a dict per row costs about 270 bytes (10 keys, ``sys.getsizeof``). A cold build at 10,000 files
    makes about 3.1 million rows, held while the tree is resolved: as dicts they were most of the code graph
    step's peak memory."""

    def __init__(self, columns: list[str]):
        self.cols: dict[str, list] = {c: [] for c in columns}
        self.n = 0

    def add(self, rows: list[dict], **fixed) -> None:
        """Append ``rows``: a column of ``fixed`` takes its value in every row, another the row's value
        ("" where the row has none)."""
        for c, col in self.cols.items():
            col.extend([fixed[c]] * len(rows) if c in fixed else [r.get(c, "") for r in rows])
        self.n += len(rows)

    def frame(self) -> pd.DataFrame:
        """The rows as a DataFrame of these columns; the lists are let go."""
        cols, self.cols = self.cols, {}
        return pd.DataFrame(cols)


def _as_arrow(table: pd.DataFrame | pa.Table) -> pa.Table:
    return table if isinstance(table, pa.Table) else pa.Table.from_pandas(table, preserve_index=False)


def _without_paths(table: pa.Table, kept_paths: set[str]) -> pd.DataFrame:
    """The rows of a previous table whose ``path`` is in ``kept_paths``, as a DataFrame. A table's rows of one
    path all come from one build, so one blake3: the paths not kept (after an edit, a handful) are dropped,
    as slices (:func:`~nova_pipeline.core.tables.drop_runs`: a file's rows lie together) before pandas sees
    the rows."""
    paths = table.column("path")
    drop = set(pc.unique(paths).to_pylist()) - kept_paths
    if drop:
        hit = pc.is_in(paths, value_set=pa.array(sorted(drop), pa.string()))
        table = drop_runs(table, hit.to_numpy(zero_copy_only=False))
    return table.to_pandas()


def _facts_before(previous: tuple[pa.Table, pa.Table, pa.Table]) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """What :func:`_changed_modules` needs of the previous tables: their modules (``path, qualname``) and
    their named bases (``source, base`` of the ``INHERITS`` rows with a base, in table order; None when the
    tables predate the ``deps`` and ``base`` columns)."""
    symbols0, relations0, _ = previous
    modules0 = symbols0.filter(pc.equal(symbols0.column("kind"), "module")).select(["path", "qualname"])
    if not {"deps", "base"} <= set(relations0.column_names):
        return modules0.to_pandas(), None
    named = pc.and_(
        pc.equal(relations0.column("kind"), "INHERITS"),
        pc.not_equal(pc.fill_null(relations0.column("base"), ""), ""),
    )
    return modules0.to_pandas(), relations0.filter(named).select(["source", "base"]).to_pandas()


def _tree(symbols: pd.DataFrame, names: pd.DataFrame) -> tuple[Tree, dict[str, str]]:
    """The tree-wide facts of ``symbols`` and ``names`` (no bases yet; the names' facts built per owner as
    resolution asks for them, :class:`NameFacts`), and each file's module."""
    modules = symbols[symbols["kind"] == "module"]
    tree = Tree(symbols, {}, {})
    tree.use_facts(NameFacts(names, skip=(UNPARSED,)))
    return tree, dict(zip(modules["path"].tolist(), modules["qualname"].tolist()))


class _Sites:
    """Resolution of sites over one tree, with the modules each consulted (:meth:`Tree.touch`) joined by
    newlines; each distinct deps text is held once (sites share them: they consult the same modules)."""

    def __init__(self, tree: Tree, module_of_path: dict[str, str]):
        self.tree, self.module_of_path = tree, module_of_path
        self.scopes: dict[str, tuple] = {}
        self.deps_texts: dict[str, str] = {}

    def resolve(self, path: str, text: str, scope: str) -> str | None:
        parsed = self.scopes.get(scope)
        if parsed is None:
            if len(self.scopes) >= MEMO_HELD:
                self.scopes.clear()
            parsed = self.scopes[scope] = parse_scope(scope)
        tree = self.tree
        return resolve_name(tree, self.module_of_path.get(path, ""), tree.local_defs, text, parsed)

    def site(self, path: str, text: str, scope: str) -> tuple[str, str]:
        """``(target or "", deps)`` of a call or inheritance site (a module is never called)."""
        self.tree.seen = set()
        found = self.resolve(path, text, scope)
        deps = "\n".join(sorted(self.tree.seen))
        self.tree.seen = None
        target = found if found and found not in self.tree.modules else ""
        return target, self.deps_texts.setdefault(deps, deps)

    def sites(self, rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """``(targets, deps)`` of each of ``rows`` (relations: ``path, scope, target_text``), each distinct
        site resolved once. Only the distinct sites become Python values (:func:`_python_rows`): at
        10,000 files a cold build has nearly a million call sites, and a memo keyed by their strings was
        the largest thing the build held."""
        keys = ["path", "scope", "target_text"]
        code = rows.groupby(keys, sort=False, dropna=False).ngroup().to_numpy()  # numbered as first seen
        first = np.unique(code, return_index=True)[1]
        targets, deps = np.empty(len(first), dtype=object), np.empty(len(first), dtype=object)
        for j, (path, scope, text) in enumerate(_python_rows(rows.iloc[first], keys)):
            targets[j], deps[j] = self.site(path, text, scope)
        return targets[code], deps[code]

    def inherit(self, relations: pd.DataFrame) -> tuple[np.ndarray, list[str]]:
        """Fill the tree's bases from the ``INHERITS`` sites, in table order (a site may go through the bases
        found before it). Returns the positions of the ``INHERITS`` rows and, for each, the base it named (""
        for one not found): the ``base`` column, from which the next build knows these bases without the
        tree. Only the ``INHERITS`` rows (about 1 in 60) are turned into Python values."""
        at = np.flatnonzero((relations["kind"] == "INHERITS").to_numpy())
        rows = relations.iloc[at]
        found = []
        for src, text, path, scope in zip(
            *(rows[c].tolist() for c in ("source", "target_text", "path", "scope"))
        ):
            hit = self.resolve(path, text, scope)
            if hit:
                self.tree.bases.setdefault(src, []).append(hit)
            found.append(hit or "")
        return at, found


def _python_rows(table: pd.DataFrame, columns: list[str]) -> Iterator[tuple]:
    """The rows of ``table``'s ``columns`` as tuples of Python values, :data:`PY_SLICE` rows converted at a
    time (a whole Arrow-backed column as Python strings is about 60 bytes a row: at 10,000 files the code
    names alone are 1.5 million rows)."""
    for at in range(0, len(table), PY_SLICE):
        part = table.iloc[at : at + PY_SLICE]
        yield from zip(*(part[c].tolist() for c in columns))


def _resolve_tree(
    symbols: pd.DataFrame,
    relations: pd.DataFrame,
    names: pd.DataFrame,
    since: tuple[tuple[pd.DataFrame, pd.DataFrame | None], set[str]] | None = None,
) -> tuple[pd.DataFrame, int]:
    """``relations`` with ``target`` (``CALLS``, ``INHERITS``, ``IMPORTS``) and ``deps`` resolved over the
    whole tree, and how many call sites kept their target.

    ``since``: what resolution needs of the previous tables (:func:`_facts_before`) and the paths parsed
    again or gone since. Then a call site of an unchanged file keeps its target when none of the modules its
    resolution consulted (``deps``) changed, nor the bases of a class in them: the same facts give the same
    answer, and :func:`_changed_modules` says when it cannot tell (a module added or removed, a non-Python
    file) and every site is resolved again. Import and inheritance sites are always resolved again (a few
    per cent of the sites). A test compares this with a full resolution after edits, additions and
    deletions.

    Only the rows resolved again become Python values (iterating an Arrow-backed column costs about 0.6 µs
    per value), and a site's resolution is computed once per distinct ``(path, scope, text)``."""
    tree, module_of_path = _tree(symbols, names)
    sites = _Sites(tree, module_of_path)
    inherits, bases = sites.inherit(relations)
    changed = _changed_modules(tree, since) if since is not None and "deps" in relations.columns else None
    n, kind = len(relations), relations["kind"]
    deps_in = pc.fill_null(_strings(relations["deps"]), "") if "deps" in relations.columns else None
    keep = np.zeros(n, dtype=bool)
    if changed is not None:
        # an unchanged file's call site, over unchanged facts, keeps its answer; decided per distinct deps
        # string (they repeat: a site's deps are the modules it consulted), not per row
        touched = [d for d in pc.unique(deps_in).to_pylist() if changed & set(d.split("\n"))]
        keep = (
            (kind == "CALLS").to_numpy()
            & ~relations["path"].isin(since[1]).to_numpy()
            & ~pc.is_in(deps_in, value_set=pa.array(touched, deps_in.type)).to_numpy(zero_copy_only=False)
        )
    redo = np.flatnonzero(kind.isin(["CALLS", "INHERITS"]).to_numpy() & ~keep)
    at = relations[["path", "scope", "target_text"]].iloc[redo]
    targets, deps = sites.sites(at) if len(redo) else ([], [])
    imports = np.flatnonzero((kind == "IMPORTS").to_numpy())
    # from what the site says: a kept row's target is last run's
    followed = [tree.follow(text) or "" for text in relations["target_text"].iloc[imports].tolist()]
    blank = pa.repeat(pa.scalar("", pa.large_string()), n)
    kept_deps = blank if changed is None else pc.if_else(pa.array(keep), deps_in, blank)
    out = relations.assign(  # pandas arrays, not Series: placed by position, whatever the frame's index
        target=_pandas(replace_at(_strings(relations["target"]), (redo, targets), (imports, followed))),
        deps=_pandas(replace_at(kept_deps, (redo, deps))),
        base=_pandas(replace_at(blank, (inherits, bases))),
    )
    return out.reset_index(drop=True), int(keep.sum())


def _strings(column: pd.Series) -> pa.Array:
    """A string column's values as an Arrow ``large_string`` array (no copy when the column is Arrow-backed
    already, as a read table's are)."""
    return pa.array(column, pa.large_string())


def _pandas(values: pa.Array):
    """Arrow strings as a pandas array of the ``str`` dtype, without a Python value per row."""
    return values.to_pandas().array


def _changed_modules(
    tree: Tree, since: tuple[tuple[pd.DataFrame, pd.DataFrame | None], set[str]]
) -> set[str] | None:
    """The modules whose facts changed since the previous tables (``since``: :func:`_facts_before` of them,
    and the paths parsed again or gone): those of the files parsed again, and of each class whose bases
    changed. None when that is not enough to know which sites to resolve again: the previous tables have no
    ``deps``, a module was added or removed, or a file parsed again or gone is no Python module."""
    (modules0, named), redo = since
    if named is None:
        return None
    if set(modules0["qualname"].tolist()) != tree.modules:
        return None
    module_of = dict(zip(modules0["path"].tolist(), modules0["qualname"].tolist()))
    if any(p not in module_of for p in redo):
        return None
    old_bases: dict[str, list[str]] = {}  # as the last build found them, in its table order
    for src, base in zip(named["source"].tolist(), named["base"].tolist()):
        old_bases.setdefault(src, []).append(base)
    changed = {module_of[p] for p in redo}
    for cls in set(old_bases) | set(tree.bases):
        if old_bases.get(cls) != tree.bases.get(cls):
            tree.seen = set()
            tree.touch(cls)
            changed |= tree.seen
            tree.seen = None
    return changed


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
