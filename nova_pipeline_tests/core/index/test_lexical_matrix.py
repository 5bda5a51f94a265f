"""The BM25 matrix built from slices of documents equals bm25s's own build, on real code."""

import bm25s
import numpy as np
import pandas as pd
import pytest

from nova_pipeline.core.index import lexical_matrix
from nova_pipeline.core.index.chunking import chunk_manifest
from nova_pipeline.core.index.code_tokens import code_tokens, token_ids
from nova_pipeline.core.index.embedding import Tokenizer
from nova_pipeline.core.index.lexical_matrix import SlicedBM25
from nova_pipeline.core.ingest.manifest import scan
from nova_pipeline.core.ingest.walk import ScanOptions


@pytest.fixture
def texts(stdlib_tree):
    root = stdlib_tree  # the standard library's json/ and email/
    tok = Tokenizer()
    chunks, _ = chunk_manifest(root, scan(ScanOptions(root)).manifest, None, tok.count, tok.max_seq_length)
    # a document without a term ("" is its only term) and one that repeats a term, among the real ones
    return pd.concat([chunks["text"], pd.Series(["", "(( ))", "error error error"])], ignore_index=True)


def _arrays(retriever):
    return {k: np.asarray(retriever.scores[k]) for k in ("data", "indices", "indptr")}


@pytest.mark.parametrize("slice_docs", [7, lexical_matrix.SLICE_DOCS])
def test_the_sliced_build_equals_bm25s_own_on_real_code(texts, slice_docs, monkeypatch):
    monkeypatch.setattr(lexical_matrix, "SLICE_DOCS", slice_docs)
    corpus = token_ids(texts)
    assert len(texts) > 500 and len(corpus) == len(texts)
    ours = SlicedBM25(k1=1.2, b=0.75, method="lucene")
    ours.index(token_ids(texts), show_progress=False)
    theirs = bm25s.BM25(k1=1.2, b=0.75, method="lucene")
    theirs.index((corpus.as_lists(), dict(corpus.vocab)), show_progress=False)

    a, b = _arrays(ours), _arrays(theirs)
    assert ours.scores["num_docs"] == theirs.scores["num_docs"] == len(texts)
    assert np.array_equal(a["indptr"], b["indptr"])
    assert np.array_equal(a["indices"], b["indices"])
    assert a["data"].dtype == b["data"].dtype and np.array_equal(a["data"], b["data"])  # bit for bit
    assert ours.vocab_dict == theirs.vocab_dict
    for query in ("decode json document", "parse email header", "error"):
        terms = [t for t in code_tokens(query) if t in ours.vocab_dict]
        assert np.array_equal(ours.get_scores(terms), theirs.get_scores(terms))


def test_other_methods_and_corpora_go_to_bm25s_own_build(texts):
    corpus = token_ids(texts.iloc[:50])
    theirs = bm25s.BM25(method="bm25+")
    theirs.index((corpus.as_lists(), dict(corpus.vocab)), show_progress=False)  # before index() adds ""
    ours = SlicedBM25(method="bm25+")  # scores documents without a term: not built from slices
    ours.index(corpus, show_progress=False)
    assert all(np.array_equal(x, y) for x, y in zip(_arrays(ours).values(), _arrays(theirs).values()))


def test_a_term_id_outside_the_vocabulary_is_refused(texts):
    corpus = token_ids(texts.iloc[:5])
    corpus.terms = corpus.terms.copy()
    corpus.terms[0] = len(corpus.vocab) + 3
    with pytest.raises(ValueError):  # never an array written out of bounds
        SlicedBM25().build_index_from_ids(list(range(len(corpus.vocab))), corpus, show_progress=False)
