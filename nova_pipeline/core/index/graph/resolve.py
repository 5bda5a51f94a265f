"""Names resolved across the tree: re-exports, inheritance, scopes and single-class instances (see the
package docstring for the rules and their measured precision)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from nova_pipeline.core.index.graph.extract import parse_scope

__all__ = ["MAX_REEXPORT_HOPS", "NameFacts", "Tree", "resolve_name"]

MAX_REEXPORT_HOPS = 8
MEMO_HELD = 262_144  # entries each resolver memo holds at once (owners' facts: about 1.4 KB each)


class NameFacts:
    """The ``code_names`` rows (``owner, name, target, kind``) grouped by owner, each owner's turned into
    Python values the first time a resolution consults it: its import aliases, bound names, local
    definitions and single-class instances (the kinds of :func:`~nova_pipeline.core.index.graph.build_graph`;
    rows of any other kind in ``skip`` are left out).

    A one-file edit resolves the changed file's sites, the import and inheritance sites, and the sites that
    consulted a changed module. At 10,000 files those consulted 7,134 of 277,447 owners, and building every
    owner's facts from the 1.5 million rows took 2.4-2.9 s of the edit's graph build, against 0.65 s now
    (Arrow's ``dictionary_encode`` of the owners, one integer sort, and the owners asked for). A build that
    consults every owner pays about 25 µs an owner instead: at 3,000 files a cold build's resolution took
    5.0 s against 3.4 s, of a 70 s build. At most :data:`MEMO_HELD` owners are held at once (as are the
    resolver's other memos), so a cold build of 100,000 files (2.8 million owners) does not hold them all.
    At 10,000 files, 32,768 took its peak from 2,029-2,062 MB to 1,673 MB, but an edit at 100,000 files
    consults about 71,000 owners, and building them again cost it 8-10 s.
    """

    ALIAS, BOUND, LOCAL, INSTANCE = range(4)

    def __init__(self, names: pd.DataFrame, skip: tuple[str, ...] = ()):
        def arrow(column: str) -> pa.Array:
            a = pa.array(names[column], pa.large_string())
            return a.combine_chunks() if isinstance(a, pa.ChunkedArray) else a

        codes, dictionary = _encoded(pa.array(names["owner"], pa.large_string()))
        if codes is None:  # the chunks were encoded with dictionaries of their own: encode them as one
            codes, dictionary = _encoded(arrow("owner"))
        order = np.argsort(codes, kind="stable")  # each owner's rows together, in table order
        self._code = {o: i for i, o in enumerate(dictionary)}
        self._starts = np.concatenate([[0], np.cumsum(np.bincount(codes, minlength=len(self._code)))])
        take = pa.array(order)
        self._columns = [arrow(c).take(take) for c in ("name", "target", "kind")]
        self._skip = frozenset(skip)
        self._facts: dict[str, tuple[dict, set, set, dict]] = {}

    def of(self, owner: str) -> tuple[dict[str, str], set[str], set[str], dict[tuple[str, str], str]]:
        """``owner``'s ``(aliases {local: dotted}, bound names, local definitions, instances {(kind, name):
        target})``, built on the first call."""
        facts = self._facts.get(owner)
        if facts is None:
            if len(self._facts) >= MEMO_HELD:
                self._drop()
            facts = self._facts[owner] = ({}, set(), set(), {})
            i = self._code.get(owner)
            if i is not None:
                at, n = int(self._starts[i]), int(self._starts[i + 1] - self._starts[i])
                aliases, bound, local, instances = facts
                for name, target, kind in zip(*(c.slice(at, n).to_pylist() for c in self._columns)):
                    if kind == "alias":
                        aliases[name] = target
                    elif kind == "bound":
                        bound.add(name)
                    elif kind in ("instance", "attr_instance"):
                        instances[(kind, name)] = target
                    elif kind not in self._skip:
                        local.add(name)
        return facts

    def _drop(self) -> None:
        """Let go of every owner's facts: memory stays bounded (an owner asked again is built again)."""
        self._facts.clear()

    def view(self, which: int) -> _OwnerView:
        """A read-only mapping owner -> one of :meth:`of`'s facts (:data:`ALIAS`, :data:`BOUND`,
        :data:`LOCAL`), with ``get`` and ``[]``; an owner without such facts is absent."""
        return _OwnerView(self, which)

    def instance(self, key: tuple[str, str, str]) -> str | None:
        """The target of the instance row ``(kind, owner, name)``, or None."""
        kind, owner, name = key
        return self.of(owner)[3].get((kind, name))


def _encoded(values: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray | None, list[str]]:
    """``values`` dictionary-encoded: ``(codes, dictionary)``. A chunked column (a table read from Parquet has
    a chunk per row group) is encoded without copying its strings into one array; Arrow gives every chunk
    the same dictionary, which is checked (the same buffers), and ``(None, [])`` says it was not so."""
    encoded = pc.dictionary_encode(values)
    chunks = encoded.chunks if isinstance(encoded, pa.ChunkedArray) else [encoded]
    if not chunks or not len(values):
        return np.zeros(0, dtype=np.int64), []
    buffers = {tuple(b.address for b in c.dictionary.buffers() if b is not None) for c in chunks}
    if len(buffers) > 1:
        return None, []
    codes = np.concatenate([c.indices.to_numpy(zero_copy_only=False) for c in chunks])
    return codes, chunks[0].dictionary.to_pylist()


class _OwnerView:
    """One kind of :class:`NameFacts` as the resolver reads a dict of owners: ``get(owner, default)`` and
    ``[owner]``."""

    def __init__(self, facts: NameFacts, which: int):
        self.facts, self.which = facts, which

    def get(self, owner: str, default=None):
        got = self.facts.of(owner)[self.which]
        return got if got else default

    def __getitem__(self, owner: str):
        """``owner``'s facts of this kind, empty when it has none (the resolver asks only after ``get``)."""
        return self.facts.of(owner)[self.which]


class _InstanceView:
    """:class:`NameFacts`' instances as the resolver reads its dict ``{(kind, owner, name): target}``."""

    def __init__(self, facts: NameFacts):
        self.facts = facts

    def get(self, key: tuple[str, str, str], default=None):
        got = self.facts.instance(key)
        return default if got is None else got


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
        self.facts: NameFacts | None = None  # see use_facts
        # the modules whose facts the current resolution consulted (None: not recorded); see touch()
        self.seen: set[str] | None = None
        self._prefixes: dict[str, tuple[str, ...]] = {}

    def use_facts(self, facts: NameFacts) -> None:
        """Read ``aliases``, ``bound``, ``local_defs`` and ``instances`` from ``facts``, an owner at a
        time."""
        self.facts = facts
        self.aliases = facts.view(NameFacts.ALIAS)
        self.bound = facts.view(NameFacts.BOUND)
        self.local_defs = facts.view(NameFacts.LOCAL)
        self.instances = _InstanceView(facts)

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
            if len(self._prefixes) >= MEMO_HELD:
                self._prefixes.clear()
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
