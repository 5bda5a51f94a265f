"""Code-aware chunking with a token budget counted by the embedding model's own tokenizer.

* Python splits on top-level functions and classes (stdlib :mod:`ast`); the code between them (imports,
  constants) forms its own units. A class over the budget is split into its members: the class head
  (``class Name``: decorators, docstring, attributes), one unit per method with the qualified symbol and
  its signature (``def Name.method(self, x) -> int``), and the code between them. Small neighbours are
  merged (``def Name.a, def Name.b``) and large bodies split on line boundaries.
* Markdown splits on headings.
* Other text splits on blank lines, then on lines.

Every chunk is embedded as ``header + body`` where the header is ``"<path> <symbol>\\n"``. The header names
the file and symbol without line numbers, so inserting lines above a chunk changes its span (and its id)
but not its text: its embedding is reused from the cache. The budget counts the header, the body and the
two special tokens (``[CLS]``/``[SEP]``) against the model's max sequence length (256 word pieces for
all-MiniLM-L6-v2). A single line longer than the budget cannot be split on a line boundary; such a chunk
is kept whole, marked ``truncated`` (the model sees only its first 256 word pieces) and counted.
"""

from __future__ import annotations

import ast
import logging
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import blake3
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from nova_pipeline.core.errors import EmbeddingError
from nova_pipeline.core.keys import SOURCE_CHUNKS
from nova_pipeline.core.tables import in_order, joined_keys, read_rows, read_table, splice_sorted

__all__ = [
    "CHUNKER_VERSION",
    "CHUNK_COLUMNS",
    "COUNT_BATCH_FILES",
    "MAX_SIGNATURE",
    "META_COLUMNS",
    "MIN_CHUNK_TOKENS",
    "SPECIAL_TOKENS",
    "ChunkStats",
    "TokenCounter",
    "chunk_file",
    "chunk_manifest",
    "header",
]

log = logging.getLogger(__name__)

CHUNK_COLUMNS = [
    "chunk_id",
    "path",
    "start_line",
    "end_line",
    "symbol",
    "language",
    "content_blake3",
    "n_tokens",
    "truncated",
    "file_blake3",
    "text",
]
# The chunks table without the texts: what every reader of it needs but the embedder, the lexical index's
# builder and the self-retrieval check. The texts are most of the table's bytes (about 85 % of the 1 MB file
# of 2,895 stdlib chunks; reading it took 10 ms with them and 1.6 ms without).
META_COLUMNS = [c for c in CHUNK_COLUMNS if c != "text"]
SPECIAL_TOKENS = 2  # [CLS] and [SEP]
MIN_CHUNK_TOKENS = 48  # neighbours smaller than this are merged
_HEADING = re.compile(r"^#{1,6}\s")

TokenCounter = Callable[[Sequence[str]], list[int]]
COUNT_BATCH_FILES = 64  # files whose lines are counted in one tokenizer call
FRAME_RECORDS = 16_384  # chunks held as dicts (3.9 KB each) before they become a frame (about their text)


CHUNKER_VERSION = "2"  # 2: classes over the budget split per method; source_chunks re-chunks on a change


@dataclass
class _Unit:
    """A span of lines (1-based, inclusive) with the symbol it belongs to; a class also carries ``parts``,
    its per-member units, used when the whole class is over the budget."""

    start: int
    end: int
    symbol: str
    parts: list[_Unit] | None = None


MAX_SIGNATURE = 120  # characters of a method's signature kept in its symbol


def _method_symbol(cls: str, node: ast.AST) -> str:
    """The symbol of a member of class ``cls``: ``def Cls.name(args) -> ret``, or ``class Cls.Inner``."""
    if isinstance(node, ast.ClassDef):
        return f"class {cls}.{node.name}"
    try:
        sig = ast.unparse(node.args)
        if node.returns is not None:
            sig += f") -> {ast.unparse(node.returns)}"
        else:
            sig += ")"
    except (ValueError, RecursionError):
        sig = ")"
    if len(sig) > MAX_SIGNATURE:
        sig = sig[: MAX_SIGNATURE - 2] + "…)"
    prefix = "async def" if isinstance(node, ast.AsyncFunctionDef) else "def"
    return f"{prefix} {cls}.{node.name}({sig}"


def _class_parts(node: ast.ClassDef, start: int, end: int) -> list[_Unit]:
    """A class as units: its head (decorators, ``class`` line, docstring, attributes before the first
    member), each method or nested class (symbol :func:`_method_symbol`), and the code between them."""
    members = [n for n in node.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
    parts: list[_Unit] = []
    cursor = start
    own = f"class {node.name}"
    for m in members:
        m_start = min([m.lineno] + [d.lineno for d in m.decorator_list])
        m_end = m.end_lineno or m.lineno
        if m_start > cursor:
            parts.append(_Unit(cursor, m_start - 1, own))
        parts.append(_Unit(m_start, m_end, _method_symbol(node.name, m)))
        cursor = m_end + 1
    if cursor <= end:
        parts.append(_Unit(cursor, end, own))
    return parts


def _merged_symbol(a: str, b: str) -> str:
    """The symbol of two merged neighbours: both names (method signatures left out: the bodies have them)."""

    def name(sym: str) -> str:
        return sym.split("(", 1)[0] if sym.startswith(("def ", "async def ")) else sym

    if not a or not b or a == b:
        return a or b
    return f"{name(a)}, {name(b)}"


def header(path: str, symbol: str) -> str:
    """The text put before every chunk body: path and symbol, no line numbers."""
    return f"{path} {symbol}\n" if symbol else f"{path}\n"


def _python_units(text: str, n_lines: int) -> list[_Unit] | None:
    """Top-level definitions and the code between them; None when the file does not parse."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    units: list[_Unit] = []
    cursor = 1
    for node in tree.body:
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        start = min([node.lineno] + [d.lineno for d in node.decorator_list])
        end = node.end_lineno or node.lineno
        if start > cursor:
            units.append(_Unit(cursor, start - 1, ""))
        if isinstance(node, ast.ClassDef):
            units.append(_Unit(start, end, f"class {node.name}", _class_parts(node, start, end)))
        else:
            units.append(_Unit(start, end, f"def {node.name}"))
        cursor = end + 1
    if cursor <= n_lines:
        units.append(_Unit(cursor, n_lines, ""))
    return units


def _markdown_units(lines: Sequence[str]) -> list[_Unit]:
    """One unit per heading section; the symbol is the heading."""
    units: list[_Unit] = []
    start, symbol = 1, ""
    in_fence = False
    for i, line in enumerate(lines, 1):
        if line.lstrip().startswith("```"):
            in_fence = not in_fence
        if not in_fence and _HEADING.match(line) and i > start:
            units.append(_Unit(start, i - 1, symbol))
            start = i
        if not in_fence and _HEADING.match(line):
            symbol = line.strip().lstrip("#").strip()[:80]
    if start <= len(lines):
        units.append(_Unit(start, len(lines), symbol))
    return units


def _paragraph_units(lines: Sequence[str]) -> list[_Unit]:
    """Units separated by blank lines."""
    units: list[_Unit] = []
    start = None
    for i, line in enumerate(lines, 1):
        if line.strip():
            if start is None:
                start = i
        elif start is not None:
            units.append(_Unit(start, i - 1, ""))
            start = None
    if start is not None:
        units.append(_Unit(start, len(lines), ""))
    return units


def _pack(
    units: list[_Unit], line_tokens: list[int], budget: int, min_tokens: int
) -> list[tuple[_Unit, bool]]:
    """Split units over budget on line boundaries, then merge small neighbours; ``(unit, oversize)``."""

    def tokens(u: _Unit) -> int:
        return sum(line_tokens[u.start - 1 : u.end])

    pieces: list[tuple[_Unit, bool]] = []
    for u in units:
        if tokens(u) <= budget:
            pieces.append((u, False))
            continue
        start, acc = u.start, 0
        for ln in range(u.start, u.end + 1):
            t = line_tokens[ln - 1]
            if acc and acc + t > budget:
                pieces.append((_Unit(start, ln - 1, u.symbol), False))
                start, acc = ln, 0
            acc += t
        pieces.append((_Unit(start, u.end, u.symbol), acc > budget))
    # a piece over budget here is a single line that cannot be split
    pieces = [(p, tokens(p) > budget) for p, _ in pieces]

    merged: list[tuple[_Unit, bool]] = []
    for piece, over in pieces:
        if merged:
            last, last_over = merged[-1]
            small = tokens(last) < min_tokens or tokens(piece) < min_tokens
            if small and not over and not last_over and tokens(last) + tokens(piece) <= budget:
                symbol = _merged_symbol(last.symbol, piece.symbol)
                merged[-1] = (_Unit(last.start, piece.end, symbol[:200]), False)
                continue
        merged.append((piece, over))
    return merged


def chunk_file(
    path: str,
    data: bytes,
    language: str,
    count_tokens: TokenCounter,
    max_tokens: int,
    file_blake3: str = "",
    line_tokens: list[int] | None = None,
    lines_add_up: bool = False,
) -> list[dict]:
    """Chunks of one file as records with :data:`CHUNK_COLUMNS`.

    Args:
        path: root-relative path (goes into the header and the chunk id).
        data: the file's bytes; decoded as UTF-8 with replacement of invalid bytes.
        language: from the manifest; ``python`` and ``markdown`` get syntax-aware units.
        count_tokens: the model tokenizer's word-piece counts, without special tokens.
        max_tokens: the model's max sequence length, special tokens included.
        file_blake3: the file's blake3, kept so unchanged files are not chunked again.
        line_tokens: ``count_tokens`` of the text's lines (``str.splitlines(keepends=True)``), when the
            caller counted them (:func:`chunk_manifest` counts many files' lines in one call).
        lines_add_up: a text's count is the sum over its lines (``Tokenizer.lines_add_up``): a chunk's is
            its header's plus its lines', its text not tokenized again (that was 41 of 66 s at 3,000 files).

    Raises:
        EmbeddingError: ``line_tokens`` does not have one count per line.
    """
    text = data.decode("utf-8", errors="replace")
    lines = text.splitlines(keepends=True)
    if not lines or not text.strip():
        return []
    if line_tokens is not None and len(line_tokens) != len(lines):
        raise EmbeddingError(f"{path}: the tokenizer gave {len(line_tokens)} counts for {len(lines)} lines")
    units = None
    if language == "python":
        units = _python_units(text, len(lines))
    elif language == "markdown":
        units = _markdown_units(lines)
    if units is None:
        units = _paragraph_units(lines)
    if line_tokens is None:
        line_tokens = count_tokens(lines)
    if any(u.parts for u in units):  # a class over the budget is split into its members
        header_tokens = max(count_tokens([header(path, u.symbol) for u in units]), default=0)
        budget = max(16, max_tokens - SPECIAL_TOKENS - header_tokens)
        units = [
            p
            for u in units
            for p in (u.parts if u.parts and sum(line_tokens[u.start - 1 : u.end]) > budget else [u])
        ]
    units = [u for u in units if any(line.strip() for line in lines[u.start - 1 : u.end])]
    header_tokens = max(count_tokens([header(path, u.symbol) for u in units] or [path]), default=0)
    budget = max(16, max_tokens - SPECIAL_TOKENS - header_tokens)
    packed = _pack(units, line_tokens, budget, MIN_CHUNK_TOKENS)
    heads = [header(path, u.symbol) for u, _ in packed]
    texts = [head + "".join(lines[u.start - 1 : u.end]) for head, (u, _) in zip(heads, packed)]
    if lines_add_up:
        distinct = sorted(set(heads))
        head_tokens = dict(zip(distinct, count_tokens(distinct)))
        counts = [head_tokens[h] + sum(line_tokens[u.start - 1 : u.end]) for h, (u, _) in zip(heads, packed)]
    else:
        counts = count_tokens(texts)
    out = []
    for (u, _), body_text, n in zip(packed, texts, counts):
        # trim blank lines at the edges so spans point at content
        start, end = u.start, u.end
        while start < end and not lines[start - 1].strip():
            start += 1
        while end > start and not lines[end - 1].strip():
            end -= 1
        content = blake3.blake3(body_text.encode()).hexdigest()
        chunk_id = blake3.blake3(f"{path}\0{start}\0{end}\0{content}".encode()).hexdigest()[:32]
        out.append(
            {
                "chunk_id": chunk_id,
                "path": path,
                "start_line": start,
                "end_line": end,
                "symbol": u.symbol,
                "language": language,
                "content_blake3": content,
                "n_tokens": n + SPECIAL_TOKENS,
                "truncated": n + SPECIAL_TOKENS > max_tokens,
                "file_blake3": file_blake3,
                "text": body_text,
            }
        )
    return out


@dataclass
class ChunkStats:
    """Counts of one :func:`chunk_manifest` call: ``truncated`` over all chunks, ``truncated_new`` over the
    chunks of the files chunked by this call (the ones worth a warning: the others were reported when they
    were made)."""

    files_chunked: int = 0
    files_reused: int = 0
    chunks: int = 0
    truncated: int = 0
    truncated_new: int = 0
    skipped: int = 0


_TYPES = {"start_line": "int64", "end_line": "int64", "n_tokens": "int64", "truncated": "bool"}  # else str


def _empty_chunks() -> pd.DataFrame:
    """An empty chunks table with the right columns."""
    return pd.DataFrame({c: pd.Series(dtype=_TYPES.get(c, "str")) for c in CHUNK_COLUMNS})


def _assemble(frames: list[pd.DataFrame], previous=None, drop: np.ndarray | None = None) -> pd.DataFrame:
    """One chunk table from parts: sorted by ``(path, start_line)``, :data:`CHUNK_COLUMNS`, typed. With a
    ``previous`` table: its rows but the ``drop`` ones, and the parts' rows, as slices of the sorted table
    around the changed files where it can (:func:`~nova_pipeline.core.tables.splice_sorted`)."""
    frames, df = [f for f in frames if len(f)], None
    if previous is not None:
        fresh = pd.concat(frames, ignore_index=True) if frames else previous.iloc[:0]
        df = splice_sorted(previous[CHUNK_COLUMNS], drop, fresh[CHUNK_COLUMNS], ["path", "start_line"])
        frames = frames if df is not None else [previous[~drop], *frames]
    if df is None:
        df = pd.concat(frames, ignore_index=True) if frames else _empty_chunks()
        if not in_order(df, "path", "start_line"):  # a cold build's frames come in path order: no sort
            df = df.sort_values(["path", "start_line"], ignore_index=True)
    return df[CHUNK_COLUMNS].astype(_TYPES)


def splice_chunks(previous: pd.DataFrame | None, paths: Iterable[str], fresh: pd.DataFrame) -> pd.DataFrame:
    """``previous`` with every chunk of ``paths`` replaced by ``fresh`` (the chunks those paths have now; a
    deleted path has none): what :func:`chunk_manifest` gives for the tree after those files changed, when
    ``fresh`` is its output for them."""
    if previous is None or not len(previous):
        return _assemble([fresh])
    changed = pa.array(sorted(set(paths)), pa.string())
    gone = pc.is_in(
        pa.array(previous["path"].astype(str).to_numpy(dtype=object), pa.string()), value_set=changed
    )
    return _assemble([fresh], previous, gone.to_numpy(zero_copy_only=False))


def read_texts(home, chunks: pd.DataFrame, ids: list[str]) -> pd.DataFrame | None:
    """``chunk_id, text`` of the chunks ``ids``, read from ``home``'s chunks table; None if there is none.
    ``chunks`` (the table without its texts, or at least its ``chunk_id, path``) gives each id its file, so
    only the row groups of those files are decoded (:func:`~nova_pipeline.core.tables.read_rows`). For more
    than half of the table (a first build), the whole text column is read instead, with no filter."""
    if len(ids) > len(chunks) // 2:
        return read_table(home, SOURCE_CHUNKS, ["chunk_id", "text"])
    paths = chunks.loc[chunks["chunk_id"].isin(ids), "path"]
    return read_rows(home, SOURCE_CHUNKS, "chunk_id", ids, ["chunk_id", "text"], paths=paths)


def manifest_key(manifest: pd.DataFrame, max_tokens: int) -> str:
    """What :func:`chunk_manifest` chunks, as 32 hex digits: blake3 over the chunker version, the token budget
    and the sorted row hashes of the present files' ``path, blake3, size``. Two manifests with the same key
    give the same chunks, so ``source_chunks`` can tell that its last table still holds, without reading it.
    Row hashes: pandas' ``hash_pandas_object`` (as :func:`~nova_pipeline.core.index.lexical.chunks_digest`).
    """
    live = manifest.loc[manifest["status"] != "deleted", ["path", "blake3", "size"]]
    rows = pd.util.hash_pandas_object(live, index=False).to_numpy()
    h = blake3.blake3(f"{CHUNKER_VERSION}/{max_tokens}".encode())
    h.update(np.sort(rows).tobytes())
    return h.hexdigest()[:32]


def chunk_manifest(
    root,
    manifest: pd.DataFrame,
    previous: pd.DataFrame | None,
    count_tokens: TokenCounter,
    max_tokens: int,
    progress: Callable[[int, int], None] | None = None,
    lines_add_up: bool | Callable[[], bool] = False,
) -> tuple[pd.DataFrame, ChunkStats]:
    """Chunks of every present file; files whose blake3 is unchanged reuse their previous chunks.

    A file that vanished or changed since the scan is skipped and logged; its chunks come back on the
    next rebuild. ``progress(files_done, files_to_chunk)`` is called as files are chunked. The lines of
    :data:`COUNT_BATCH_FILES` files are counted in one ``count_tokens`` call (spread over the cores); every
    :data:`FRAME_RECORDS` chunks become a frame (10,000 files cold: +479 MB at peak; +1,082 MB as dicts).
    ``lines_add_up``: see :func:`chunk_file`; a callable is asked once a file is chunked (``Tokenizer``'s
    loads the tokenizer: a run that chunks nothing loads none).
    """
    stats = ChunkStats()
    live = manifest[manifest["status"] != "deleted"]
    # the previous chunks of files that are still there unchanged, selected with Arrow's vectorised set
    # membership (a group per file and a concat of them cost 0.1 s per call at 1,800 files; Python sets
    # over 60,000 rows, 0.1 s more: too slow for a live update)
    live_keys = joined_keys(live["path"], live["blake3"])
    frames: list[pd.DataFrame] = []
    kept_from = None  # (previous, its rows to drop): spliced with the new chunks at the end
    reused_mask = np.zeros(len(live), dtype=bool)
    if previous is not None and len(previous):
        prev_keys = joined_keys(previous["path"], previous["file_blake3"])
        keep = pc.is_in(prev_keys, value_set=live_keys).to_numpy(zero_copy_only=False)
        reused_mask = pc.is_in(live_keys, value_set=prev_keys).to_numpy(zero_copy_only=False)
        if keep.all() and reused_mask[live["size"].to_numpy() > 0].all():
            # every file is as it was: the previous table is the answer (the common nightly case)
            stats.files_reused = int(reused_mask.sum())
            stats.chunks = len(previous)
            stats.truncated = int(previous["truncated"].sum())
            return previous.reset_index(drop=True), stats
        kept_from = (previous, ~keep)
    reused = {
        (p, d) for p, d in zip(live["path"][reused_mask].tolist(), live["blake3"][reused_mask].tolist())
    }
    stats.files_reused = len(reused)
    records: list[dict] = []
    to_chunk = sum(
        1
        for p, d, z in zip(live["path"].tolist(), live["blake3"].tolist(), live["size"].tolist())
        if z and (p, d) not in reused
    )
    done = 0
    batch: list[tuple[str, str, str, bytes]] = []

    def flush() -> None:
        nonlocal lines_add_up
        if not batch:
            return
        lines_add_up = bool(lines_add_up()) if callable(lines_add_up) else lines_add_up
        lines = [d.decode("utf-8", errors="replace").splitlines(keepends=True) for *_, d in batch]
        counts = count_tokens([line for ls in lines for line in ls])
        at = 0
        for (path, digest, language, data), ls in zip(batch, lines):
            mine, at = counts[at : at + len(ls)], at + len(ls)
            records.extend(
                chunk_file(path, data, language, count_tokens, max_tokens, digest, mine, lines_add_up)
            )
            stats.files_chunked += 1
        batch.clear()
        if len(records) >= FRAME_RECORDS:
            to_frame()

    def to_frame() -> None:
        if records:
            frames.append(pd.DataFrame.from_records(records, columns=CHUNK_COLUMNS).astype(_TYPES))
            stats.truncated_new += sum(1 for r in records if r["truncated"])
            records.clear()

    for path, digest, language, size in zip(
        live["path"].tolist(), live["blake3"].tolist(), live["language"].tolist(), live["size"].tolist()
    ):
        if size == 0 or (path, digest) in reused:
            continue  # nothing to chunk, or its chunks are reused
        done += 1
        if progress is not None and (done % 25 == 0 or done == to_chunk):
            progress(done, to_chunk)
        try:
            data = (Path(root) / path).read_bytes()
        except OSError as exc:
            stats.skipped += 1
            log.warning("not chunked: %s is unreadable (%s)", path, exc)
            continue
        if blake3.blake3(data).hexdigest() != digest:
            stats.skipped += 1
            log.warning("not chunked: %s changed since the scan; the next rebuild will chunk it", path)
            continue
        batch.append((path, digest, language, data))
        if len(batch) >= COUNT_BATCH_FILES:
            flush()
    flush()
    to_frame()
    df = _assemble(frames, *(kept_from or ()))
    stats.chunks = len(df)
    stats.truncated = int(df["truncated"].sum())
    if stats.truncated_new:
        log.warning(
            "%d new chunks exceed the model's %d word pieces and will be truncated by it (%d in all)",
            stats.truncated_new,
            max_tokens,
            stats.truncated,
        )
    return df, stats
