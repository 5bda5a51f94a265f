"""The code graph: which symbols a tree defines, and who calls, imports, inherits or links to whom.

Two tables, kept beside the chunks (``NOVA_HOME/tables``) and rebuilt per file only when its blake3 changed:

* ``code_symbols``: ``symbol_id, qualname, kind, path, start_line, end_line, chunk_id, file_blake3``.
  ``qualname`` is the dotted name a reader writes (``json.decoder.JSONDecoder.decode``); ``kind`` is
  ``module``, ``class``, ``function``, ``method`` or ``document``; ``chunk_id`` is the chunk holding the
  symbol's first line ("" when none does); ``symbol_id`` is the blake3 of ``path NUL qualname`` (16 hex).
* ``code_relations``: ``source, target, target_text, kind, path, line, file_blake3, scope, deps, base``.
  ``source`` and ``target`` are qualnames (``target`` is "" when unresolved, and ``target_text`` keeps what
  the site says, e.g. ``self.scan_once``); ``kind`` is ``CALLS``, ``IMPORTS``, ``INHERITS``, ``CONTAINS``
  or ``LINKS`` (a Markdown document's link to another document of the tree); ``line`` is 1-based;
  ``scope`` is the site's enclosing functions and class (``f|g#Cls``), kept so unchanged files need no
  parsing; ``deps`` the modules (newline-separated) whose facts resolving the site consulted; ``base`` the
  base an ``INHERITS`` site named when the tree's bases were found (so the next build compares bases
  without building the last tree again).
* ``code_names``: what resolution needs of each file (aliases, definitions, bindings, instances).

**How names are resolved, and why not jedi.** Python files are parsed with the standard library's
:mod:`ast`; each name at a site is resolved with the scopes Python itself uses, most certain first: a
definition in an enclosing function or the module, an ``import``/``from ... import`` alias (relative and
star imports included, and followed through re-exports such as ``json/__init__.py``'s ``from .decoder
import JSONDecoder``), ``self.x``/``cls.x`` in a method to the class's or a base class's attribute,
``super().x`` to a base's, ``Module.x``/``Class.x`` chains, and ``Cls().x``. Type checkers' constructor
inference, kept to the certain case: a name (or ``self.attr``) whose every binding in its scope (or in the
class's methods) is ``Cls(...)`` of one class resolves ``name.m()`` (``self.attr.m()``) to that class's
``m``. Anything else (a value returned by a function, a parameter, a name bound two ways, a builtin, a
name defined outside the tree) stays unresolved, with its text: the graph prefers no edge to a wrong one.
``benchmarks/bench_graph.py`` measures this against jedi 0.20's ``goto`` on sampled stdlib call sites:
precision 1.000, recall 0.82 to 0.91 (two seeds of 600 sites). jedi itself as the resolver costs about
10 ms per call site at p50 (plus parsing), at about 84 sites per file some 14 minutes per 1,000 files;
this module builds 1,000 files in about 16 s (6.5x reading and ``ast.parse``-ing them), and a rebuild with
one changed file resolves again only the sites whose answer may have changed: each site records the
modules its resolution consulted (``code_relations.deps``), and a test checks the result equals a full
resolution after body edits, added methods found through a base, changed aliases, re-exports, bases and
instances.
Markdown is parsed with ``markdown-it-py`` (the parser rich uses); relative links to files of the tree
become ``LINKS`` edges.
"""

from nova_pipeline.core.index.graph.build import (
    GRAPH_VERSION,
    NAME_COLUMNS,
    RELATION_COLUMNS,
    RELATION_KINDS,
    SPAN_COLUMNS,
    SYMBOL_COLUMNS,
    TABLES,
    UNPARSED,
    GraphStats,
    build_graph,
    chunk_spans_digest,
    inputs_digest,
)
from nova_pipeline.core.index.graph.extract import FileGraph, extract_markdown, extract_python, module_of
from nova_pipeline.core.index.graph.query import (
    Graph,
    callees,
    callers,
    expand,
    find_symbol,
    imports,
    load,
    load_or_none,
)
from nova_pipeline.core.index.graph.resolve import resolve_name
from nova_pipeline.core.index.graph.stored import MIXED, kept_attrs, write_tables

__all__ = [
    "GRAPH_VERSION",
    "MIXED",
    "NAME_COLUMNS",
    "RELATION_COLUMNS",
    "RELATION_KINDS",
    "SPAN_COLUMNS",
    "SYMBOL_COLUMNS",
    "TABLES",
    "UNPARSED",
    "FileGraph",
    "Graph",
    "GraphStats",
    "build_graph",
    "callees",
    "callers",
    "expand",
    "extract_markdown",
    "extract_python",
    "find_symbol",
    "imports",
    "chunk_spans_digest",
    "inputs_digest",
    "kept_attrs",
    "load",
    "load_or_none",
    "module_of",
    "resolve_name",
    "write_tables",
]
