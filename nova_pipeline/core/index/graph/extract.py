"""What one file says: a Python module's symbols, imports, bindings and call sites (:mod:`ast`), or a
Markdown document's links (``markdown-it-py``), before names are resolved across the tree."""

from __future__ import annotations

import ast
import posixpath
from dataclasses import dataclass, field

import blake3

__all__ = ["FileGraph", "extract_markdown", "extract_python", "module_of", "parse_scope", "scope_text"]


def module_of(path: str, package: str = "") -> str:
    """The dotted module name of a tree path: ``json/decoder.py`` -> ``json.decoder``,
    ``json/__init__.py`` -> ``json``; a document keeps its path (``docs/intro.md``). ``package``: the name
    of the tree's root when the root is itself a package (``json`` for a tree rooted at ``.../json``)."""
    if not path.endswith(".py"):
        return path
    parts = [*([package] if package else []), *path[:-3].split("/")]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts) or path


def symbol_id(path: str, qualname: str) -> str:
    return blake3.blake3(f"{path}\0{qualname}".encode()).hexdigest()[:16]


@dataclass
class FileGraph:
    """What one file contributes before tree-wide resolution: its symbols, its import aliases, its class
    bases, and its relations (``CALLS`` targets still as site text, resolved by :func:`_resolve_tree`)."""

    module: str
    is_package: bool
    symbols: list[dict] = field(default_factory=list)
    aliases: dict[tuple[str, str], str] = field(default_factory=dict)  # (owner, local name) -> dotted target
    relations: list[dict] = field(default_factory=list)
    local_defs: dict[str, set[str]] = field(default_factory=dict)  # owner qualname -> names defined in it
    bound: dict[str, set[str]] = field(default_factory=dict)  # owner -> other names bound in it (assigned)
    # (owner, name) -> "callee NUL scope NUL module": every binding of name in owner is ``name = Callee(...)``
    # (owner: a function or the module), or of ``self.name = Callee(...)`` in the methods of class owner
    instances: dict[tuple[str, str, str], str] = field(default_factory=dict)  # key: (kind, owner, name)


class _Extractor(ast.NodeVisitor):
    """One pass over a module: definitions, imports, bases, and call sites with their lexical scope."""

    def __init__(self, path: str, module: str, is_package: bool):
        self.path, self.module, self.is_package = path, module, is_package
        self.graph = FileGraph(module, is_package)
        self.scope: list[tuple[str, str, set[str]]] = []  # (qualname, kind, local definitions)
        self.local_defs: dict[str, set[str]] = {module: set()}

    # -- helpers
    def _qual(self, name: str) -> str:
        return f"{self.scope[-1][0] if self.scope else self.module}.{name}"

    def _owner(self) -> str:
        return self.scope[-1][0] if self.scope else self.module

    def _binder(self) -> str:
        """The scope a name bound here lives in: the innermost function, or the module (a class body's
        names are not visible to its methods, so they bind nowhere that resolution looks)."""
        if self.scope and self.scope[-1][1] == "class":
            return f"{self.scope[-1][0]}#class"
        return self.scope[-1][0] if self.scope else self.module

    def _absolute(self, level: int, mod: str | None) -> str:
        if level == 0:
            return mod or ""
        base = self.module.split(".")
        if not self.is_package:
            base = base[:-1]
        base = base[: len(base) - (level - 1)] if level > 1 else base
        return ".".join([*base, *([mod] if mod else [])])

    def _define(self, node, kind: str) -> str:
        qual = self._qual(node.name)
        self.graph.symbols.append(
            {
                "qualname": qual,
                "kind": kind,
                "path": self.path,
                "start_line": min([node.lineno, *(d.lineno for d in node.decorator_list)]),
                "end_line": node.end_lineno or node.lineno,
            }
        )
        self.local_defs.setdefault(self._owner(), set()).add(node.name)
        self.graph.relations.append(self._rel(self._owner(), qual, qual, "CONTAINS", node.lineno))
        return qual

    def _rel(self, source: str, target: str, text: str, kind: str, line: int) -> dict:
        return {
            "source": source,
            "target": target,
            "target_text": text,
            "kind": kind,
            "path": self.path,
            "line": line,
        }

    # -- definitions
    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        qual = self._define(node, "class")
        for base in node.bases:
            text = _dotted(base)
            if text:
                self.graph.relations.append(
                    {**self._rel(qual, "", text, "INHERITS", node.lineno), "scope": self._scope_key()}
                )
        self.scope.append((qual, "class", set()))
        for name, callee in _self_instances(node).items():
            self.graph.instances[("attr_instance", qual, name)] = (
                f"{callee}\0{self._scope_key()}\0{self.module}"
            )
        self.generic_visit(node)
        self.scope.pop()

    def visit_FunctionDef(self, node) -> None:
        kind = "method" if self.scope and self.scope[-1][1] == "class" else "function"
        qual = self._define(node, kind)
        a = node.args
        params = [
            *a.posonlyargs,
            *a.args,
            *a.kwonlyargs,
            *([a.vararg] if a.vararg else []),
            *([a.kwarg] if a.kwarg else []),
        ]
        self.graph.bound.setdefault(qual, set()).update(p.arg for p in params)
        self.graph.bound[qual].update(_bindings(node.body))
        self.scope.append((qual, kind, set()))
        for name, callee in _instances(node.body).items():
            if name not in {p.arg for p in params}:
                self.graph.instances[("instance", qual, name)] = (
                    f"{callee}\0{self._scope_key()}\0{self.module}"
                )
        self.generic_visit(node)
        self.scope.pop()

    visit_AsyncFunctionDef = visit_FunctionDef

    # -- imports
    def visit_Import(self, node: ast.Import) -> None:
        for a in node.names:
            target = a.name
            local = a.asname or a.name.split(".")[0]
            value = target if a.asname else target.split(".")[0]
            self.graph.aliases[(self._binder(), local)] = value
            self.graph.relations.append(self._rel(self._owner(), target, target, "IMPORTS", node.lineno))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = self._absolute(node.level, node.module)
        for a in node.names:
            if a.name == "*":
                self.graph.aliases[(self._binder(), f"*{base}")] = base  # names looked up in it last
                self.graph.relations.append(self._rel(self._owner(), base, base, "IMPORTS", node.lineno))
                continue
            target = f"{base}.{a.name}" if base else a.name
            self.graph.aliases[(self._binder(), a.asname or a.name)] = target
            self.graph.relations.append(self._rel(self._owner(), target, target, "IMPORTS", node.lineno))

    # -- calls
    def visit_Call(self, node: ast.Call) -> None:
        text = _dotted(node.func) or _site_text(node.func)
        if text:
            self.graph.relations.append(
                {**self._rel(self._owner(), "", text, "CALLS", node.func.lineno), "scope": self._scope_key()}
            )
        self.generic_visit(node)

    def _scope_key(self) -> str:
        # the enclosing function scopes, innermost first, and the class of the method we are in (for
        # self/cls/super), as text: "f|g#Cls"
        chain = [q for q, k, _ in reversed(self.scope) if k != "class"]
        cls = next((q for q, k, _ in reversed(self.scope) if k == "class"), None)
        return scope_text((tuple(chain), cls))


def _dotted(node: ast.AST) -> str | None:
    """``a.b.c`` for a Name/Attribute chain; ``super().x`` and ``Cls().x`` (an attribute of a new instance)
    for chains on a call; else None."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    elif isinstance(node, ast.Call) and parts:
        inner = _dotted(node.func)
        if inner is None or "()" in inner:
            return None
        parts.append("super()" if inner == "super" else f"{inner}()")
    else:
        return None
    return ".".join(reversed(parts))


_SCOPES = (
    ast.FunctionDef,
    ast.AsyncFunctionDef,
    ast.ClassDef,
    ast.Lambda,
    ast.ListComp,
    ast.SetComp,
    ast.DictComp,
    ast.GeneratorExp,
)


def _bindings(body: list[ast.stmt]) -> set[str]:
    """Names a block binds by assignment (``=``, ``for``, ``with ... as``, ``except ... as``, ``:=``,
    ``del``, ``match``), not entering nested scopes; minus its ``global``/``nonlocal`` names."""
    out: set[str] = set()
    free: set[str] = set()
    stack: list[ast.AST] = list(body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            out.add(node.id)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            out.add(node.name)
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            free.update(node.names)
        elif isinstance(node, ast.MatchAs | ast.MatchStar) and node.name:
            out.add(node.name)
        for child in ast.iter_child_nodes(node):
            if not isinstance(child, _SCOPES):
                stack.append(child)
    return out - free


def _walk_scope(body: list[ast.stmt]):
    """Every node of a block, not entering nested scopes."""
    stack: list[ast.AST] = list(body)
    while stack:
        node = stack.pop()
        yield node
        stack.extend(c for c in ast.iter_child_nodes(node) if not isinstance(c, _SCOPES))


def _constructed(value: ast.AST | None) -> str | None:
    """``Callee`` of a value ``Callee(...)`` (a Name/Attribute chain), else None."""
    if isinstance(value, ast.Call):
        text = _dotted(value.func)
        if text and "()" not in text:
            return text
    return None


def _instances(body: list[ast.stmt]) -> dict[str, str]:
    """Names of a block whose every binding is ``name = Callee(...)`` with one and the same callee: the
    constructor-call inference of type checkers, kept to the cases with a single possible class."""
    bindings: dict[str, int] = {}
    made: dict[str, list[str]] = {}
    for node in _walk_scope(body):
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            bindings[node.id] = bindings.get(node.id, 0) + 1
        elif isinstance(node, (ast.Global, ast.Nonlocal, ast.ExceptHandler, ast.MatchAs, ast.MatchStar)):
            for n in getattr(node, "names", None) or [getattr(node, "name", None)]:
                if n:
                    bindings[n] = bindings.get(n, 0) + 2  # never a single-class binding
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            callee = _constructed(node.value)
            if callee and len(targets) == 1 and isinstance(targets[0], ast.Name):
                made.setdefault(targets[0].id, []).append(callee)
    return {n: c[0] for n, c in made.items() if len(set(c)) == 1 and bindings.get(n) == len(c)}


def _self_instances(cls: ast.ClassDef) -> dict[str, str]:
    """Attributes of a class's instances whose every assignment in its methods is ``self.name =
    Callee(...)`` with one and the same callee (and that the class body does not also define)."""
    stores: dict[str, int] = {}
    made: dict[str, list[str]] = {}
    in_body = {
        n.name for n in cls.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
    }
    in_body |= _bindings(cls.body)
    for fn in cls.body:
        if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef) or not fn.args.args:
            continue
        me = fn.args.args[0].arg
        for node in _walk_scope(fn.body):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.ctx, (ast.Store, ast.Del))
                and isinstance(node.value, ast.Name)
                and node.value.id == me
            ):
                stores[node.attr] = stores.get(node.attr, 0) + 1
            if isinstance(node, ast.Assign | ast.AnnAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                callee = _constructed(node.value)
                t = targets[0] if len(targets) == 1 else None
                if (
                    callee
                    and isinstance(t, ast.Attribute)
                    and isinstance(t.value, ast.Name)
                    and t.value.id == me
                ):
                    made.setdefault(t.attr, []).append(callee)
    return {
        n: c[0] for n, c in made.items() if len(set(c)) == 1 and stores.get(n) == len(c) and n not in in_body
    }


def _site_text(node: ast.AST) -> str:
    """What a call site says, for an unresolved target: the callee's source, at most 80 characters."""
    try:
        text = ast.unparse(node)
    except (ValueError, TypeError, RecursionError):
        return "?"
    return text if len(text) <= 80 else text[:77] + "..."


def extract_python(path: str, text: str, package: str = "") -> FileGraph:
    """The symbols, aliases and unresolved relations of one Python file (``path``: tree-relative POSIX;
    ``package``: as for :func:`module_of`).

    Raises:
        SyntaxError: the file does not parse (the caller logs and skips it).
    """
    module = module_of(path, package)
    ex = _Extractor(path, module, path.endswith("__init__.py"))
    tree = ast.parse(text, filename=path)
    ex.graph.symbols.append(
        {
            "qualname": module,
            "kind": "module",
            "path": path,
            "start_line": 1,
            "end_line": max(1, text.count("\n") + 1),
        }
    )
    ex.visit(tree)
    ex.graph.local_defs = ex.local_defs
    ex.graph.bound.setdefault(module, set()).update(_bindings(tree.body))
    for name, callee in _instances(tree.body).items():
        ex.graph.instances[("instance", module, name)] = f"{callee}\0{scope_text(((), None))}\0{module}"
    return ex.graph


def extract_markdown(path: str, text: str, present: set[str]) -> FileGraph:
    """A document's symbol and its ``LINKS`` to other files of the tree (``present``: the tree's paths).
    Links to URLs, anchors of the same document and missing files are not edges."""
    from markdown_it import MarkdownIt

    graph = FileGraph(path, False)
    graph.symbols.append(
        {
            "qualname": path,
            "kind": "document",
            "path": path,
            "start_line": 1,
            "end_line": text.count("\n") + 1,
        }
    )
    tokens = MarkdownIt("commonmark").parse(text)
    for tok in tokens:
        for child in tok.children or []:
            if child.type != "link_open":
                continue
            href = str(child.attrs.get("href", ""))
            if not href or "://" in href or href.startswith(("#", "mailto:")):
                continue
            target = posixpath.normpath(posixpath.join(posixpath.dirname(path), href.split("#")[0]))
            line = (tok.map[0] + 1) if tok.map else 1
            graph.relations.append(
                {
                    "source": path,
                    "target": target if target in present else "",
                    "target_text": href,
                    "kind": "LINKS",
                    "path": path,
                    "line": line,
                }
            )
    return graph


def scope_text(scope: tuple) -> str:
    chain, cls = scope
    return "|".join(chain) + "#" + (cls or "")


def parse_scope(text: str) -> tuple:
    chain, _, cls = text.partition("#")
    return (tuple(c for c in chain.split("|") if c), cls or None)
