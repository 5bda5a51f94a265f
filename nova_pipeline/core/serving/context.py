"""Context for an LLM prompt: the best places for a question, packed under a token budget.

:func:`build_context` searches (hybrid, one hit per place: adjacent slices of one symbol merged), then packs
greedily by score: a place goes in whole when it fits in what is left of the budget, else it is left out;
a place is cut only when it alone is over the whole budget and nothing is packed yet, and then it ends with
a visible ``[... truncated: N of M tokens]`` line. The packed places are then ordered by file and line,
each under a header with its path, lines and symbol, as Markdown (default) or JSON.

The budget is counted in the tokenizer the caller names (:func:`token_counter`): a ``tokenizers`` JSON file,
a Hugging Face tokenizer name (online), or by default the embedding model's own word pieces. It is never
exceeded: the whole rendered output is counted again at the end, and the last place packed is dropped
while it does not fit (a tokenizer may count a concatenation differently from its parts).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from nova_pipeline.core.errors import InvalidRequestError

__all__ = ["Context", "Piece", "build_context", "pack", "token_counter"]

TokenCount = Callable[[str], int]
MARKER = "[... truncated: {kept} of {total} tokens]"


@dataclass
class Piece:
    """One place of the context: lines ``start_line``-``end_line`` (1-based, inclusive) of ``path``."""

    path: str
    start_line: int
    end_line: int
    symbol: str
    score: float
    text: str  # the code, without the chunk's header line
    tokens: int = 0  # of the rendered piece (header and code), in the budget's tokenizer
    truncated: bool = False
    why: str = ""  # how it was chosen (the search's reasons)

    def header(self) -> str:
        where = f"{self.path}:{self.start_line}-{self.end_line}"
        head = f"### {where} {self.symbol}".rstrip() if self.symbol else f"### {where}"
        # a place the code graph added says why it is here; a search hit's reasons are scores
        return f"{head} ({self.why})" if self.why.startswith(("called by", "calls")) else head

    def render(self) -> str:
        return f"{self.header()}\n```\n{self.text.rstrip()}\n```\n"


@dataclass
class Context:
    """What :func:`build_context` returns: the pieces in file order and the tokens they use."""

    question: str
    budget: int
    tokenizer: str
    pieces: list[Piece] = field(default_factory=list)
    tokens_used: int = 0
    considered: int = 0  # places the search offered
    store: str = ""  # which store answered: primary or backup
    stale_as_of: str | None = None

    def markdown(self) -> str:
        return "".join(p.render() for p in self.pieces)

    def as_json(self) -> dict:
        return {
            "question": self.question,
            "budget": self.budget,
            "tokenizer": self.tokenizer,
            "tokens_used": self.tokens_used,
            "considered": self.considered,
            "store": self.store,
            "stale_as_of": self.stale_as_of,
            "pieces": [asdict(p) for p in self.pieces],
        }


def token_counter(tokenizer: str | None = None) -> tuple[str, TokenCount]:
    """``(name, count)`` for a budget: ``count(text)`` is the number of tokens of ``text``.

    Args:
        tokenizer: a ``tokenizer.json`` file of the ``tokenizers`` library, or a Hugging Face tokenizer
            name (needs the network unless cached); None: the embedding model's word pieces.

    Raises:
        InvalidRequestError: the tokenizer cannot be loaded (the message says which and why).
    """
    from tokenizers import Tokenizer as HFTokenizer

    if tokenizer is None:
        from nova_pipeline.core.index.embedding import bundled_model_dir

        path, name = bundled_model_dir() / "tokenizer.json", "all-MiniLM-L6-v2 word pieces"
        tok = HFTokenizer.from_file(str(path))
    elif Path(tokenizer).is_file():
        name = Path(tokenizer).name
        try:
            tok = HFTokenizer.from_file(str(tokenizer))
        except Exception as exc:  # noqa: BLE001 - the library raises plain Exceptions for a bad file
            raise InvalidRequestError(f"{name} is not a tokenizers JSON file: {exc}") from exc
    else:
        name = tokenizer
        try:
            tok = HFTokenizer.from_pretrained(tokenizer)
        except Exception as exc:  # noqa: BLE001 - offline, unknown name, or a bad download: said as such
            raise InvalidRequestError(
                f"tokenizer {tokenizer!r} is neither a tokenizer.json file nor a Hugging Face tokenizer "
                f"that can be loaded here ({exc}); offline, pass the path of a tokenizer.json"
            ) from exc
    tok.no_truncation()
    tok.no_padding()

    def count(text: str) -> int:
        return len(tok.encode(text, add_special_tokens=False).ids)

    return name, count


def _truncate(piece: Piece, budget: int, count: TokenCount) -> Piece | None:
    """``piece`` cut to its first lines so that it, with the marker, fits ``budget``; None when not even
    its header and the marker fit."""
    lines = piece.text.rstrip().split("\n")
    total = piece.tokens

    def cut(n: int) -> Piece:
        kept = "\n".join(lines[:n])
        out = Piece(
            **{**asdict(piece), "text": kept, "truncated": True, "end_line": piece.start_line + n - 1}
        )
        out.text = kept + "\n" + MARKER.format(kept=count(out.render()), total=total)
        return out

    lo, hi, best = 0, len(lines), None
    while lo <= hi:  # the most lines that fit
        mid = (lo + hi) // 2
        candidate = cut(mid)
        candidate.tokens = count(candidate.render())
        if candidate.tokens <= budget:
            best, lo = candidate, mid + 1
        else:
            hi = mid - 1
    return best


def pack(candidates: Sequence[Piece], budget: int, count: TokenCount) -> tuple[list[Piece], int]:
    """Pack ``candidates`` (best first) under ``budget`` tokens; returns the pieces in file order and the
    tokens of their rendering (see the module docstring for the rules).

    Raises:
        InvalidRequestError: ``budget`` is not positive.
    """
    if budget <= 0:
        raise InvalidRequestError(f"the token budget must be positive, not {budget}")
    chosen: list[Piece] = []
    left = budget
    for cand in sorted(candidates, key=lambda p: -p.score):
        piece = Piece(**asdict(cand))
        piece.tokens = count(piece.render())
        if piece.tokens <= left:
            chosen.append(piece)
            left -= piece.tokens
        elif not chosen and piece.tokens > budget:  # alone over the whole budget: its start, marked
            cut = _truncate(piece, budget, count)
            if cut is not None:
                chosen.append(cut)
                left -= cut.tokens
    chosen.sort(key=lambda p: (p.path, p.start_line))
    used = count("".join(p.render() for p in chosen))
    while chosen and used > budget:  # the whole counted again: never over the budget
        worst = min(chosen, key=lambda p: p.score)
        chosen.remove(worst)
        used = count("".join(p.render() for p in chosen))
    return chosen, used


def _texts(table, ids: list[str]) -> dict[str, tuple[str, int, int]]:
    """chunk id -> (text without its header line, start, end), from the document table ``table`` (the
    lexical index of the store that answered; None: none)."""
    if not ids or table is None:
        return {}
    out = {}
    for cid, d in table.documents(ids).items():
        text = d.text or ""
        out[cid] = (text.split("\n", 1)[1] if "\n" in text else "", d.start_line, d.end_line)
    return out


def _expanded(home, hits) -> list[Piece]:
    """Pieces for the graph neighbours of ``hits`` (none when no code graph is built)."""
    import pyarrow.parquet as pq

    from nova_pipeline.core.index import graph
    from nova_pipeline.core.keys import SOURCE_CHUNKS
    from nova_pipeline.core.tables import table_path

    g = graph.load_or_none(home)
    if g is None or not table_path(home, SOURCE_CHUNKS).exists():
        return []
    seen = [(h.path, h.start_line, h.end_line) for h in hits]
    out: list[Piece] = []
    for h in hits:
        for a in graph.expand(g, [(h.path, h.start_line, h.end_line)]):
            if any(p == a["path"] and s <= a["start_line"] <= e for p, s, e in seen):
                continue
            seen.append((a["path"], a["start_line"], a["end_line"]))
            rows = pq.read_table(
                table_path(home, SOURCE_CHUNKS),
                columns=["text", "start_line", "end_line"],
                filters=[
                    ("path", "==", a["path"]),
                    ("start_line", "<=", a["end_line"]),
                    ("end_line", ">=", a["start_line"]),
                ],
            ).to_pylist()
            rows.sort(key=lambda r: r["start_line"])
            body = "\n".join(
                (r["text"].split("\n", 1)[1] if "\n" in r["text"] else "").rstrip("\n") for r in rows
            )
            if body:
                start = min(r["start_line"] for r in rows)
                end = max(r["end_line"] for r in rows)
                out.append(Piece(a["path"], start, end, a["qualname"], h.score / 2, body, why=a["reason"]))
    return out


def build_context(
    searcher,
    question: str,
    max_tokens: int,
    tokenizer: str | None = None,
    k: int = 20,
    mode: str = "hybrid",
    path: str | None = None,
    language: str | None = None,
    expand: bool = False,
) -> Context:
    """The context for ``question`` under ``max_tokens`` (see the module docstring).

    Args:
        searcher: a :class:`~nova_pipeline.core.serving.searcher.Searcher`.
        k: places the search offers to the packer (the budget usually takes fewer).
        mode, path, language: as for search.
        expand: also offer the callers and callees of the top 3 hits (the code graph, when built), each
            at half the score of the hit it came from and saying why (``called by ...``).

    Raises:
        InvalidRequestError: a bad budget or tokenizer; and the search's own errors.
    """
    if not question.strip():
        raise InvalidRequestError("an empty question has no context")
    name, count = token_counter(tokenizer)
    result = searcher.search(question, k, mode=mode, path=path, language=language)
    ids = [i for h in result.hits for i in (h.chunk_id, *h.merged)]
    texts = _texts(searcher.lexical_index(result.store), ids)
    candidates = []
    for h in result.hits:
        parts = sorted((texts[i] for i in (h.chunk_id, *h.merged) if i in texts), key=lambda t: t[1])
        body = "\n".join(t[0].rstrip("\n") for t in parts) if parts else (h.text.split("\n", 1)[-1])
        why = ", ".join(f"{k} {v}" for k, v in (("vector", h.vector_score), ("bm25", h.lexical_score)) if v)
        candidates.append(Piece(h.path, h.start_line, h.end_line, h.symbol, h.score, body, why=why))
    if expand:
        candidates += _expanded(searcher.settings.home, result.hits[:3])
    pieces, used = pack(candidates, max_tokens, count)
    return Context(
        question=question,
        budget=max_tokens,
        tokenizer=name,
        pieces=pieces,
        tokens_used=used,
        considered=len(candidates),
        store=result.store,
        stale_as_of=result.stale_as_of,
    )
