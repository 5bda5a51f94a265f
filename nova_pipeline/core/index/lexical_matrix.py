"""The lexical index's BM25 matrix, built from slices of documents.

bm25s (Lù, 2024) keeps the BM25 score of every (document, term) pair in a CSC matrix: ``data`` (the
scores), ``indices`` (the documents, ascending within each term) and ``indptr`` (where each term's run
starts). Its own build, ``BM25.index`` → ``build_index_from_ids``, counts each document's terms with a
``collections.Counter`` and a set intersection, keeps three arrays of every pair (12 bytes each) and has
scipy sort them into the matrix (8 bytes a pair), so its peak holds every pair three to four times, and its
time goes to a Python loop per document.

:class:`SlicedBM25` overrides ``build_index_from_ids``, the extension point bm25s documents for building
the index another way, and makes the same arrays from a :class:`~.code_tokens.Corpus` in two passes over
:data:`SLICE_DOCS` documents at a time. The first counts each term's documents. The second scores each
slice's pairs with bm25s's own idf and term-frequency functions (``bm25s.scoring``, for the retriever's
``method``) and places them by counting sort straight into the finished arrays: a term's run fills in
document order because slices go in document order. Each slice's pairs are found in both passes rather
than kept between them, since keeping them is the 12 bytes a pair this build avoids. The peak is the
finished arrays, the corpus and one slice's pairs. A test compares every array with bm25s's own build
on real code.
"""

from __future__ import annotations

import bm25s
import numpy as np
from bm25s import scoring

from nova_pipeline.core.index.code_tokens import Corpus

__all__ = ["SLICE_DOCS", "SlicedBM25"]

SLICE_DOCS = 8192  # documents per slice: at most a few million pairs, tens of MB of int64 keys


class SlicedBM25(bm25s.BM25):
    """``bm25s.BM25`` whose index of a :class:`~.code_tokens.Corpus` is built from slices (module docstring).

    Any other corpus goes to bm25s's own build. Methods that score documents without a term (BM25L, BM25+)
    go there too, since their non-occurrence scores are not part of the slices.
    """

    def build_index_from_ids(
        self, unique_token_ids, corpus_token_ids, show_progress=True, leave_progress=False
    ):
        """The score matrix of ``corpus_token_ids`` over ``len(unique_token_ids)`` terms:
        ``{"data": float32[pairs], "indices": int32[pairs], "indptr": int64[terms + 1], "num_docs": int}``
        (bm25s's shape; ``dtype`` and ``int_dtype`` are the retriever's).

        Raises:
            ValueError: a term id outside ``range(len(unique_token_ids))`` (numpy's, counting documents).
        """
        if not isinstance(corpus_token_ids, Corpus) or self.method in self.methods_requiring_nonoccurrence:
            if isinstance(corpus_token_ids, Corpus):
                corpus_token_ids = corpus_token_ids.as_lists()
            return super().build_index_from_ids(
                unique_token_ids, corpus_token_ids, show_progress, leave_progress
            )
        corpus, self.nonoccurrence_array = corpus_token_ids, None
        n_docs, n_terms = len(corpus), len(unique_token_ids)
        lengths = np.diff(corpus.offsets)
        avg_doc_len = lengths.mean() if n_docs else np.float64(0.0)

        doc_freqs = np.zeros(n_terms, dtype=np.int64)
        for start in range(0, n_docs, SLICE_DOCS):
            terms, _, _ = _pairs(corpus, start, min(start + SLICE_DOCS, n_docs))
            doc_freqs += np.bincount(terms, minlength=n_terms)

        idf_of = scoring._select_idf_scorer(self.idf_method)
        idf = np.zeros(n_terms, dtype=self.dtype)
        for term in np.flatnonzero(doc_freqs).tolist():
            idf[term] = idf_of(int(doc_freqs[term]), N=n_docs)
        tfc_of = scoring._select_tfc_scorer(self.method)

        indptr = np.zeros(n_terms + 1, dtype=np.int64)
        np.cumsum(doc_freqs, out=indptr[1:])
        del doc_freqs
        data = np.empty(int(indptr[-1]), dtype=self.dtype)
        indices = np.empty(int(indptr[-1]), dtype=self.int_dtype)
        heads = indptr[:-1].copy()  # where each term's next pair goes
        for start in range(0, n_docs, SLICE_DOCS):
            terms, docs, tf = _pairs(corpus, start, min(start + SLICE_DOCS, n_docs))
            docs += start
            # the expression bm25s evaluates per document (a Python int l_d there, an int64 array here)
            tfc = tfc_of(
                tf_array=tf.astype(self.dtype),
                l_d=lengths[docs],
                l_avg=avg_doc_len,
                k1=self.k1,
                b=self.b,
                delta=self.delta,
            )
            firsts = np.flatnonzero(np.r_[True, terms[1:] != terms[:-1]])
            runs = np.diff(np.r_[firsts, len(terms)])
            at = heads[terms] + (np.arange(len(terms)) - np.repeat(firsts, runs))
            data[at] = idf[terms] * tfc
            indices[at] = docs
            heads[terms[firsts]] += runs
        return {"data": data, "indices": indices, "indptr": indptr, "num_docs": n_docs}


def _pairs(corpus: Corpus, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The distinct (term, document) pairs of documents ``start:stop``, sorted by term, then document:
    ``(terms, documents counted from start, times the term occurs)``, int64 arrays of one length."""
    span = corpus.offsets[start : stop + 1]
    terms = corpus.terms[span[0] : span[-1]].astype(np.int64)
    docs = np.repeat(np.arange(stop - start, dtype=np.int64), np.diff(span))
    width = max(stop - start, 1)
    keys, counts = np.unique(terms * width + docs, return_counts=True)
    return keys // width, keys % width, counts.astype(np.int64)
