"""Questions to a built code graph: callers, callees, imports of a name, and the places related to search
hits."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from nova_pipeline.core.errors import InvalidRequestError
from nova_pipeline.core.tables import CODE_RELATIONS, CODE_SYMBOLS

__all__ = ["Graph", "callees", "callers", "expand", "find_symbol", "imports", "load", "load_or_none"]


@dataclass(frozen=True)
class Graph:
    """The code graph of a ``NOVA_HOME``, loaded (:func:`load`)."""

    symbols: pd.DataFrame
    relations: pd.DataFrame

    def query(self, kind: str, name: str) -> tuple[str, list[dict]]:
        """``kind``: ``callers``, ``callees`` or ``imports``; see those functions.

        Raises:
            InvalidRequestError: an unknown kind, or no symbol / several symbols for ``name``.
        """
        fn = {"callers": callers, "callees": callees, "imports": imports}.get(kind)
        if fn is None:
            raise InvalidRequestError(f"unknown graph query {kind!r}: callers, callees or imports")
        return fn(self.symbols, self.relations, name)


def expand(graph: Graph, places: list[tuple[str, int, int]], per_place: int = 3) -> list[dict]:
    """Places related to search hits through calls: for each ``(path, start_line, end_line)``, the callers
    and callees of the functions and classes defined in it, up to ``per_place`` of each, not already in
    ``places``. Each: ``path, start_line, end_line, qualname, reason`` (``"called by json.decoder.
    JSONDecoder.decode"``: the added place is called by the hit's function; ``"calls ..."``: it calls it)."""
    sym = graph.symbols[graph.symbols["kind"].isin(["function", "method", "class"])]
    by_name = {
        q: (p, a, b) for q, p, a, b in zip(sym["qualname"], sym["path"], sym["start_line"], sym["end_line"])
    }
    calls = graph.relations[(graph.relations["kind"] == "CALLS") & (graph.relations["target"] != "")]
    seen = {(p, a) for p, a, _ in places}
    out: list[dict] = []
    for path, start, end in places:
        inside = sym[(sym["path"] == path) & (sym["start_line"] >= start) & (sym["start_line"] <= end)]
        names = set(inside["qualname"])
        found: list[tuple[str, str]] = []
        for q in sorted(names):
            found += [(t, f"called by {q}") for t in dict.fromkeys(calls.loc[calls["source"] == q, "target"])]
            found += [(src, f"calls {q}") for src in dict.fromkeys(calls.loc[calls["target"] == q, "source"])]
        kept = {"called by": 0, "calls": 0}
        for q, reason in found:
            kind = "called by" if reason.startswith("called by") else "calls"
            where = by_name.get(q)
            if where is None or q in names or (where[0], where[1]) in seen or kept[kind] >= per_place:
                continue
            seen.add((where[0], where[1]))
            kept[kind] += 1
            out.append(
                {
                    "path": where[0],
                    "start_line": int(where[1]),
                    "end_line": int(where[2]),
                    "qualname": q,
                    "reason": reason,
                }
            )
    return out


def load(home) -> Graph:
    """The code graph of ``home`` as its last ``code_graph`` materialization left it (the relations'
    :data:`~.build.RELATION_COLUMNS`: what queries read; ``scope``, ``deps`` and ``base`` serve only the
    next build).

    Raises:
        TableNotMaterializedError: no code graph was built yet (the message says to run the rebuild job).
    """
    from nova_pipeline.core.index.graph.build import RELATION_COLUMNS
    from nova_pipeline.core.tables import require_table

    return Graph(require_table(home, CODE_SYMBOLS), require_table(home, CODE_RELATIONS, RELATION_COLUMNS))


def load_or_none(home) -> Graph | None:
    """:func:`load`, or None when no code graph was built yet."""
    from nova_pipeline.core.errors import TableNotMaterializedError

    try:
        return load(home)
    except TableNotMaterializedError:
        return None


def find_symbol(symbols: pd.DataFrame, name: str) -> str:
    """The one qualname ``name`` means: itself, else the unique qualname ending in ``.name``.

    Raises:
        InvalidRequestError: no symbol, or several (the message lists up to 10).
    """
    names = symbols["qualname"]
    if (names == name).any():
        return name
    hits = sorted(set(names[names.str.endswith("." + name)].tolist()))
    if not hits:
        raise InvalidRequestError(f"no symbol named {name!r} in the code graph")
    if len(hits) > 1:
        shown = ", ".join(hits[:10]) + (f" and {len(hits) - 10} more" if len(hits) > 10 else "")
        raise InvalidRequestError(f"{name!r} is ambiguous: {shown}; give more of the qualified name")
    return hits[0]


def _sites(relations: pd.DataFrame, mask) -> list[dict]:
    rows = relations[mask].sort_values(["path", "line"])
    return rows[["source", "target", "target_text", "kind", "path", "line"]].to_dict("records")


def callers(symbols: pd.DataFrame, relations: pd.DataFrame, name: str) -> tuple[str, list[dict]]:
    """``(qualname, sites)``: every resolved call of ``name`` (sites: source, target, path, line)."""
    q = find_symbol(symbols, name)
    return q, _sites(relations, (relations["kind"] == "CALLS") & (relations["target"] == q))


def callees(symbols: pd.DataFrame, relations: pd.DataFrame, name: str) -> tuple[str, list[dict]]:
    """``(qualname, sites)``: every call made directly in ``name``'s body, resolved or not."""
    q = find_symbol(symbols, name)
    return q, _sites(relations, (relations["kind"] == "CALLS") & (relations["source"] == q))


def imports(symbols: pd.DataFrame, relations: pd.DataFrame, name: str) -> tuple[str, list[dict]]:
    """``(qualname, sites)``: what module ``name`` imports, and (kind ``IMPORTED_BY``) who imports it."""
    q = find_symbol(symbols, name)
    out = _sites(relations, (relations["kind"] == "IMPORTS") & (relations["source"] == q))
    by = relations[(relations["kind"] == "IMPORTS") & (relations["target"] == q)].sort_values(
        ["path", "line"]
    )
    out += [
        {**r, "kind": "IMPORTED_BY"}
        for r in by[["source", "target", "target_text", "kind", "path", "line"]].to_dict("records")
    ]
    return q, out
