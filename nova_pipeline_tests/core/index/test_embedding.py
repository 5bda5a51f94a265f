"""The real all-MiniLM-L6-v2 behind ``SentenceTransformerEmbedder``, on real standard-library code."""

from __future__ import annotations

import ast

import numpy as np

from nova_pipeline.core.index.embedding import SentenceTransformerEmbedder


def _definitions(stdlib, names=("json/decoder.py", "json/encoder.py", "json/scanner.py", "textwrap.py")):
    """The source of every function and method of a few modules: texts of many lengths and indentations."""
    out = []
    for name in names:
        source = (stdlib / name).read_text()
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.FunctionDef):
                out.append(ast.get_source_segment(source, node))
    return out


def test_forward_passes_take_texts_in_word_piece_order_and_vectors_come_back_in_the_order_given(stdlib):
    texts = _definitions(stdlib)
    assert len(texts) > 40
    model = SentenceTransformerEmbedder(batch_size=8)
    passes = []
    encode = model.model.encode
    model.model.encode = lambda batch, **kw: passes.append(list(batch)) or encode(batch, **kw)

    vecs = model.embed(texts)

    assert vecs.shape == (len(texts), model.dimension) and vecs.dtype == np.float32
    assert sorted(t for p in passes for t in p) == sorted(texts) and max(map(len, passes)) == 8
    # each pass holds the texts next in word pieces: its longest is no longer than the next pass's shortest
    pieces = [model.token_lengths(p) for p in passes]
    assert all(a.max() <= b.min() for a, b in zip(pieces, pieces[1:]))
    # encode() alone orders by characters, and indented code has characters that make no word piece
    by_chars = sorted(texts, key=len)
    chars = [model.token_lengths(by_chars[i : i + 8]) for i in range(0, len(texts), 8)]
    assert sum(int(c.max()) * len(c) for c in chars) > sum(int(p.max()) * len(p) for p in pieces)
    # each text's own vector, in the order given
    model.model.encode = encode
    alone = np.stack([model.embed([t])[0] for t in texts[:12]])
    assert np.allclose(vecs[:12], alone, atol=1e-5)
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
