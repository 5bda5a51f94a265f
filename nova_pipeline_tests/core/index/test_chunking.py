import blake3
import pytest

from nova_pipeline.core.index.chunking import chunk_file, chunk_manifest, header, splice_chunks
from nova_pipeline.core.index.embedding import Tokenizer
from nova_pipeline.core.ingest.manifest import scan
from nova_pipeline.core.ingest.walk import ScanOptions


@pytest.fixture(scope="module")
def tok():
    return Tokenizer()


def chunks(tok, path, text, language):
    return chunk_file(path, text.encode(), language, tok.count, tok.max_seq_length)


def test_python_splits_on_top_level_definitions(tok):
    funcs = "\n\n".join(
        f'def func_{i}(a, b):\n    """Docstring {i} ' + "explains a lot of things " * 12 + '"""\n'
        f"    return a * {i} + b\n"
        for i in range(6)
    )
    src = "import os\nimport sys\n\n\n" + funcs + "\n\nclass Widget:\n    def run(self):\n        return 1\n"
    out = chunks(tok, "pkg/mod.py", src, "python")
    symbols = [c["symbol"] for c in out]
    assert any("def func_0" in s for s in symbols) and any("class Widget" in s for s in symbols)
    for c in out:
        assert c["n_tokens"] <= tok.max_seq_length and not c["truncated"]
        assert c["text"].startswith(header("pkg/mod.py", c["symbol"]))
        assert c["content_blake3"] == blake3.blake3(c["text"].encode()).hexdigest()
    # spans cover the file in order without overlap
    spans = [(c["start_line"], c["end_line"]) for c in out]
    assert spans == sorted(spans) and all(a[1] < b[0] for a, b in zip(spans, spans[1:]))


def test_small_neighbours_merge_and_large_bodies_split(tok):
    small = "\n".join(f"def f{i}():\n    return {i}\n" for i in range(10))
    out = chunks(tok, "s.py", small, "python")
    assert len(out) < 10  # merged
    big = "def huge():\n" + "".join(
        f"    value_{i} = compute_something({i}, 'argument')\n" for i in range(400)
    )
    out = chunks(tok, "b.py", big, "python")
    assert len(out) > 5 and all(c["symbol"] == "def huge" for c in out)
    assert all(c["n_tokens"] <= tok.max_seq_length for c in out)
    assert out[0]["start_line"] == 1 and out[-1]["end_line"] == 401


def test_markdown_splits_on_headings(tok):
    md = "# Title\nintro\n\n## Install\npip install x\n\n## Usage\n```\n# not a heading\n```\nrun it\n"
    out = chunk_file("README.md", md.encode(), "markdown", tok.count, tok.max_seq_length)
    assert out  # small sections merge; the heading of the first section names the chunk
    assert out[0]["symbol"].startswith("Title")
    long_md = "\n".join(f"## Section {i}\n" + ("words " * 150) for i in range(4))
    out = chunk_file("doc.md", long_md.encode(), "markdown", tok.count, tok.max_seq_length)
    assert [c["symbol"] for c in out] == [f"Section {i}" for i in range(4)]


def test_text_splits_on_blank_lines_then_lines(tok):
    text = "\n\n".join(("paragraph %d " % i) + "lorem ipsum dolor " * 30 for i in range(8))
    out = chunk_file("notes.txt", text.encode(), "text", tok.count, tok.max_seq_length)
    assert len(out) >= 4 and all(not c["truncated"] for c in out)


def test_a_line_longer_than_the_budget_is_truncated_and_counted(tok, tmp_path):
    (tmp_path / "long.txt").write_text("word " * 2000 + "\n")
    (tmp_path / "ok.py").write_text("x = 1\n")
    manifest = scan(ScanOptions(tmp_path)).manifest
    df, stats = chunk_manifest(tmp_path, manifest, None, tok.count, tok.max_seq_length)
    assert stats.truncated == 1 and stats.truncated_new == 1
    row = df[df["path"] == "long.txt"].iloc[0]
    assert row["truncated"] and row["n_tokens"] > tok.max_seq_length
    # chunked again with nothing changed: still counted, but not new (no warning on every nightly run)
    manifest["status"] = "unchanged"
    _, again = chunk_manifest(tmp_path, manifest, df, tok.count, tok.max_seq_length)
    assert again.truncated == 1 and again.truncated_new == 0 and again.files_reused == 2
    # another file changes: the long line is reused, not new
    (tmp_path / "ok.py").write_text("x = 2\n")
    manifest = scan(ScanOptions(tmp_path)).manifest
    _, edit = chunk_manifest(tmp_path, manifest, df, tok.count, tok.max_seq_length)
    assert edit.truncated == 1 and edit.truncated_new == 0 and edit.files_chunked == 1


def test_syntax_error_falls_back_to_paragraphs(tok):
    out = chunks(tok, "bad.py", "def broken(:\n    pass\n\nx = 1\n", "python")
    assert out and all(c["symbol"] == "" for c in out)


def test_edit_at_the_end_keeps_earlier_chunk_texts(tok, stdlib_tree):
    path = stdlib_tree / "json" / "decoder.py"
    before = chunks(tok, "json/decoder.py", path.read_text(), "python")
    after = chunks(
        tok, "json/decoder.py", path.read_text() + "\n\ndef added_at_the_end():\n    return 42\n", "python"
    )
    # every chunk but the last (which the new function may merge into) keeps its id and text
    assert [c["chunk_id"] for c in before[:-1]] == [c["chunk_id"] for c in after[: len(before) - 1]]
    new_texts = {c["content_blake3"] for c in after} - {c["content_blake3"] for c in before}
    assert 1 <= len(new_texts) <= 2


def test_unchanged_files_reuse_their_chunks(tok, stdlib_tree):
    m1 = scan(ScanOptions(stdlib_tree)).manifest
    df1, s1 = chunk_manifest(stdlib_tree, m1, None, tok.count, tok.max_seq_length)
    non_empty = int((m1["size"] > 0).sum())
    assert s1.files_chunked == non_empty and s1.chunks == len(df1) > 100
    (stdlib_tree / "json" / "tool.py").write_text("def main():\n    return 0\n")
    m2 = scan(ScanOptions(stdlib_tree), m1).manifest
    df2, s2 = chunk_manifest(stdlib_tree, m2, df1, tok.count, tok.max_seq_length)
    assert s2.files_chunked == 1 and s2.files_reused == non_empty - 1
    assert set(df2[df2["path"] != "json/tool.py"]["chunk_id"]) == set(
        df1[df1["path"] != "json/tool.py"]["chunk_id"]
    )
    assert df1["chunk_id"].is_unique and df2["chunk_id"].is_unique
    # the reused rows are spliced around the changed files, not sorted again: the same table as chunking
    # the tree afresh, with files added before, between and after the others and one deleted
    for rel in ("a_first.py", "email/mime/between.py", "zz_last.py"):
        (stdlib_tree / rel).write_text("def added(x):\n    return x + 1\n")
    (stdlib_tree / "json" / "scanner.py").unlink()
    m3 = scan(ScanOptions(stdlib_tree), m2).manifest
    df3, s3 = chunk_manifest(stdlib_tree, m3, df2, tok.count, tok.max_seq_length)
    fresh, _ = chunk_manifest(stdlib_tree, m3, None, tok.count, tok.max_seq_length)
    assert s3.files_chunked == 3 and df3.equals(fresh)
    changed = m3.loc[m3["status"] != "unchanged", "path"].tolist()
    assert sorted(changed) == ["a_first.py", "email/mime/between.py", "json/scanner.py", "zz_last.py"]
    assert splice_chunks(df2, changed, fresh[fresh["path"].isin(changed)]).equals(fresh)


def long_class(body_of_b: str = "return x * 2") -> str:
    methods = "\n".join(
        f"    def method_{i}(self, x: int, *, scale: float = 1.0) -> float:\n"
        f'        """Method {i} ' + "does careful arithmetic on its input " * 6 + '"""\n'
        f"        return x * {i} * scale\n"
        for i in range(8)
    )
    return (
        'class Calculator(Base):\n    """A calculator with many methods."""\n\n    precision = 4\n\n'
        + methods
        + f"\n    def b(self, x):\n        {body_of_b}\n"
        + "\n\nclass Small:\n    def run(self):\n        return 1\n"
    )


def test_a_class_over_the_budget_is_split_per_method_with_qualified_symbols_and_signatures(tok):
    out = chunks(tok, "pkg/calc.py", long_class(), "python")
    symbols = [c["symbol"] for c in out]
    # the head (class line, docstring, attributes) is small: merged with the first method, naming both
    assert symbols[0] == "class Calculator, def Calculator.method_0"
    assert "precision = 4" in out[0]["text"]
    sig = "def Calculator.method_3(self, x: int, *, scale: float=1.0) -> float"
    m3 = next(c for c in out if c["symbol"] == sig)
    assert m3["text"].startswith(f"pkg/calc.py {sig}\n") and "return x * 3 * scale" in m3["text"]
    assert any(s.endswith("class Small") for s in symbols)  # a class within the budget: not split
    for c in out:
        assert c["n_tokens"] <= tok.max_seq_length and not c["truncated"]
    # every line of the class is in exactly one chunk
    lines = sorted(ln for c in out for ln in range(c["start_line"], c["end_line"] + 1))
    assert len(lines) == len(set(lines))


def test_editing_one_method_changes_only_its_chunk_texts(tok):
    before = {c["text"] for c in chunks(tok, "pkg/calc.py", long_class(), "python")}
    after = {c["text"] for c in chunks(tok, "pkg/calc.py", long_class("return x * 3"), "python")}
    changed = after - before
    assert len(changed) == 1 and "return x * 3" in next(iter(changed))  # the embedding cache keeps the rest


def test_chunks_counted_from_their_lines_equal_chunks_whose_texts_are_counted_again(tok, stdlib_tree):
    """BERT's pre-tokenizer splits at whitespace, so a chunk's word pieces are its header's plus its lines':
    the chunker adds them up instead of tokenizing every chunk text a second time, and gets the same table
    (ids, spans and counts) on real code, long lines and truncated chunks included."""
    long_line = "x = [" + ", ".join(f"'item_{i}'" for i in range(400)) + "]\n"
    (stdlib_tree / "json" / "wide.py").write_text(f"def f():\n    {long_line}    return x\n\n{long_line}")
    (stdlib_tree / "notes.md").write_text(
        "# Title\n\nSome text, with punctuation!\n\n## Two\n\u00e9t\u00e9 \u4e2d\u6587\n"
    )
    m = scan(ScanOptions(stdlib_tree)).manifest
    assert tok.lines_add_up()
    texts_counted = []

    def counting(texts):
        texts_counted.extend(texts)
        return tok.count(texts)

    added, _ = chunk_manifest(stdlib_tree, m, None, counting, tok.max_seq_length, lines_add_up=True)
    whole = [t for t in texts_counted if "\n" in t.rstrip("\n")]  # a text of several lines: a chunk's
    counted, _ = chunk_manifest(stdlib_tree, m, None, tok.count, tok.max_seq_length, lines_add_up=False)
    assert added.equals(counted) and len(added) > 300 and added["truncated"].sum() >= 1
    assert whole == []  # no chunk text was tokenized: only lines and headers


def test_a_tokenizer_whose_pieces_cross_lines_does_not_add_them_up(tmp_path):
    """A byte-level BPE keeps the newline inside its pieces: its counts are not added up from lines."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, pre_tokenizers

    from nova_pipeline.core.index.embedding import bundled_model_dir

    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "sentence_bert_config.json").write_text(
        (bundled_model_dir() / "sentence_bert_config.json").read_text()
    )
    bpe = HFTokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel()
    bpe.save(str(model_dir / "tokenizer.json"))
    assert not Tokenizer(model_dir).lines_add_up() and Tokenizer().lines_add_up()


def test_whether_lines_add_up_is_asked_once_and_only_when_a_file_is_chunked(tok, stdlib_tree):
    """Asking loads the tokenizer, so a run that chunks nothing (a file deleted) does not ask."""
    m = scan(ScanOptions(stdlib_tree)).manifest
    asked = []

    def ask():
        asked.append(1)
        return True

    df, _ = chunk_manifest(stdlib_tree, m, None, tok.count, tok.max_seq_length, lines_add_up=ask)
    assert len(asked) == 1 and len(df) > 100
    gone = m.assign(status=m["status"].where(m["path"] != "json/tool.py", "deleted"))
    less, stats = chunk_manifest(stdlib_tree, gone, df, tok.count, tok.max_seq_length, lines_add_up=ask)
    assert len(asked) == 1 and stats.files_chunked == 0 and "json/tool.py" not in set(less["path"])


def test_chunks_made_into_frames_as_they_go_give_the_table_of_one_frame_in_any_manifest_order(
    tok, stdlib_tree, monkeypatch
):
    from nova_pipeline.core.index import chunking

    manifest = scan(ScanOptions(stdlib_tree)).manifest
    whole, s1 = chunk_manifest(stdlib_tree, manifest, None, tok.count, tok.max_seq_length)
    monkeypatch.setattr(chunking, "FRAME_RECORDS", 7)  # a frame every batch of files,
    monkeypatch.setattr(chunking, "COUNT_BATCH_FILES", 2)  # of two files
    framed, s2 = chunk_manifest(stdlib_tree, manifest, None, tok.count, tok.max_seq_length)
    assert framed.equals(whole) and s2 == s1 and s1.truncated_new == s1.truncated > 0
    # the frames come in the manifest's order; out of path order, the table is sorted all the same
    backwards = manifest.iloc[::-1].reset_index(drop=True)
    assert chunk_manifest(stdlib_tree, backwards, None, tok.count, tok.max_seq_length)[0].equals(whole)
