"""Names resolved across the tree: re-exports, inheritance, scopes and single-class instances (see the
package docstring for the rules and their measured precision)."""

from __future__ import annotations

import pandas as pd

from nova_pipeline.core.index.graph.extract import parse_scope

__all__ = ["MAX_REEXPORT_HOPS", "Tree", "resolve_name"]

MAX_REEXPORT_HOPS = 8


class Tree:
    """Tree-wide name resolution over every file's symbols and aliases."""

    def __init__(
        self, symbols: pd.DataFrame, aliases: dict[str, dict[str, str]], bases: dict[str, list[str]]
    ):
        self.defined = set(symbols["qualname"].tolist())
        self.modules = set(symbols.loc[symbols["kind"] == "module", "qualname"].tolist())
        self.classes = set(symbols.loc[symbols["kind"] == "class", "qualname"].tolist())
        self.aliases = aliases  # owner (module or function) -> {local: dotted}
        self.bound: dict[str, set[str]] = {}  # owner -> names assigned in it
        self.instances: dict[tuple[str, str, str], str] = {}  # see FileGraph.instances
        self.local_defs: dict[str, set[str]] = {}
        self.bases = bases  # class qualname -> resolved base qualnames
        # the modules whose facts the current resolution consulted (None: not recorded); see touch()
        self.seen: set[str] | None = None
        self._prefixes: dict[str, tuple[str, ...]] = {}

    def touch(self, key: str) -> None:
        """Record that a resolution consulted a fact keyed by the dotted name ``key`` (a qualname, or the
        owner of aliases, bindings, definitions or instances): every module that is a prefix of it. A
        module's facts (its symbols, and the names owned in it) all come from its own file, so a resolution
        whose recorded modules are all unchanged, over the same set of modules and the same bases, gives
        the same answer (:func:`~nova_pipeline.core.index.graph.build.build_graph` re-resolves the others)."""
        if self.seen is None:
            return
        mods = self._prefixes.get(key)
        if mods is None:
            parts = key.split(".")
            mods = tuple(
                m for m in (".".join(parts[:i]) for i in range(1, len(parts) + 1)) if m in self.modules
            )
            self._prefixes[key] = mods
        self.seen.update(mods)

    def follow(self, dotted: str) -> str | None:
        """``dotted`` as a defined qualname, following re-exports (``json.JSONDecoder`` ->
        ``json.decoder.JSONDecoder``); None when it is not in the tree."""
        for _ in range(MAX_REEXPORT_HOPS):
            self.touch(dotted)  # covers its parent and every prefix looked up below
            parent, _, last = dotted.rpartition(".")
            alias = self.aliases.get(parent, {}).get(last) if parent in self.modules else None
            if alias is not None and alias != dotted:
                dotted = alias  # a package's own name shadows its submodule (unittest.main: the function)
                continue
            if dotted in self.defined:
                return dotted
            # the longest module prefix, then its alias for the next part
            parts = dotted.split(".")
            for i in range(len(parts) - 1, 0, -1):
                mod = ".".join(parts[:i])
                if mod in self.modules:
                    alias = self.aliases.get(mod, {}).get(parts[i])
                    if alias is None:
                        return None
                    dotted = ".".join([alias, *parts[i + 1 :]])
                    break
            else:
                return None
        return None

    def instance_of(self, kind: str, owner: str, name: str, depth: int) -> str | None:
        """The class whose instance ``name`` always holds in ``owner`` (``kind`` ``instance``: a function or
        module; ``attr_instance``: a class, its bases searched too), or None."""
        if depth > 3:
            return None
        owners = [owner]
        if kind == "attr_instance":
            owners += self.ancestors(owner)
        for o in owners:
            self.touch(o)
            raw = self.instances.get((kind, o, name))
            if raw is None:
                continue
            callee, scope, module = raw.split("\0")
            made = resolve_name(self, module, self.local_defs, callee, parse_scope(scope), depth + 1)
            if made is not None:
                self.touch(made)
            return made if made in self.classes else None
        return None

    def ancestors(self, cls: str, seen: frozenset = frozenset()) -> list[str]:
        self.touch(cls)
        out: list[str] = []
        for base in self.bases.get(cls, []):
            if base not in seen:
                out += [base, *self.ancestors(base, seen | {cls})]
        return out

    def attribute(self, cls: str, name: str, seen: frozenset = frozenset()) -> str | None:
        """``name`` looked up on class ``cls`` and its bases in the tree (method resolution, depth first)."""
        if cls in seen:
            return None
        self.touch(f"{cls}.{name}")  # and so cls, whose bases are read below
        if f"{cls}.{name}" in self.defined:
            return f"{cls}.{name}"
        for base in self.bases.get(cls, []):
            hit = self.attribute(base, name, seen | {cls})
            if hit:
                return hit
        return None


def resolve_name(
    tree: Tree, module: str, local_defs: dict[str, set[str]], text: str, scope: tuple, depth: int = 0
) -> str | None:
    """The qualname a site's ``text`` (``f``, ``mod.f``, ``self.m``, ``super().m``, ``Cls.m``) refers to,
    in ``module`` with the enclosing function scopes and class of ``scope``; None when not certain."""
    chain, cls = scope
    parts = text.split(".")
    head, rest = parts[0], parts[1:]
    if head in ("self", "cls") and cls and rest:
        if len(rest) == 2 and head == "self":  # self.attr.method(): when attr is always one class's instance
            made = tree.instance_of("attr_instance", cls, rest[0], depth)
            return tree.attribute(made, rest[1]) if made else None
        if len(rest) != 1:
            return None
        return tree.attribute(cls, rest[0])
    if "()." in text and head != "super()":
        callee, _, attr = text.partition("().")
        made = resolve_name(tree, module, local_defs, callee, scope, depth + 1) if "." not in attr else None
        if made is not None:
            tree.touch(made)
        if made is None or made not in tree.classes:
            return None  # a call of a function: what it returns is not known
        return tree.attribute(made, attr)
    if head == "super()" and cls and len(rest) == 1:
        tree.touch(cls)
        for base in tree.bases.get(cls, []):
            hit = tree.attribute(base, rest[0])
            if hit:
                return hit
        return None
    start = None
    for owner in (*chain, module):  # Python's order: enclosing functions, innermost first, then the module
        tree.touch(owner)
        kinds = {
            k
            for k, where in (
                ("def", local_defs.get(owner, ())),
                ("alias", tree.aliases.get(owner, {})),
                ("bound", tree.bound.get(owner, ())),
            )
            if head in where
        }
        if not kinds:
            continue
        if kinds == {"bound"} and 1 <= len(rest) <= 2:  # x.m() or x.attr.m(), x always one class's instance
            made = tree.instance_of("instance", owner, head, depth)
            if made and len(rest) == 2:
                made = tree.instance_of("attr_instance", made, rest[0], depth)
            return tree.attribute(made, rest[-1]) if made else None
        if kinds != {"def"} and kinds != {"alias"}:
            return None  # assigned, or bound two ways: which value a call sees is not known statically
        start = f"{owner}.{head}" if kinds == {"def"} else tree.aliases[owner][head]
        break
    if start is None:  # last, a name that a star import brings: when that module defines it
        tree.touch(module)
        for key, star in tree.aliases.get(module, {}).items():
            if key.startswith("*") and tree.follow(f"{star}.{head}"):
                start = f"{star}.{head}"
                break
    if start is None:
        return None
    dotted = ".".join([start, *rest])
    hit = tree.follow(dotted)
    if hit is None and rest:
        base = tree.follow(".".join([start, *rest[:-1]]))
        if base is not None:
            tree.touch(base)
        if base is not None and base not in tree.modules:
            hit = tree.attribute(base, rest[-1])  # Class.method inherited from a base
    return hit
