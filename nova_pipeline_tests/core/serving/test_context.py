"""nova context: the best places packed under a token budget that is never exceeded, whole unless one
alone is over it, in file order."""

import random

import pytest

from nova_pipeline.core.errors import InvalidRequestError
from nova_pipeline.core.index.embedding import bundled_model_dir
from nova_pipeline.core.serving.context import MARKER, Piece, build_context, pack, token_counter
from nova_pipeline.core.serving.searcher import Searcher
from nova_pipeline.core.settings import Settings
from nova_pipeline_tests.conftest import FakeEmbedder, build_home


@pytest.fixture(scope="module")
def searcher(tmp_path_factory):
    import shutil

    from nova_pipeline_tests.conftest import STDLIB

    root = tmp_path_factory.mktemp("ctx")
    shutil.copytree(STDLIB / "json", root / "src" / "json", ignore=shutil.ignore_patterns("__pycache__"))
    build_home(root / "src", root / "home")
    s = Searcher(Settings.build(None, root / "home", require_source=False), FakeEmbedder())
    yield s
    s.close()


def test_random_budgets_are_never_exceeded_and_places_are_whole_in_file_order(searcher):
    _, count = token_counter()
    rng = random.Random(7)
    for budget in [rng.randint(20, 4000) for _ in range(25)] + [1, 5, 60]:
        ctx = build_context(searcher, "decode a JSON document", budget)
        out = ctx.markdown()
        assert ctx.tokens_used == count(out) <= budget, budget
        assert [(p.path, p.start_line) for p in ctx.pieces] == sorted(
            (p.path, p.start_line) for p in ctx.pieces
        )
        cut = [p for p in ctx.pieces if p.truncated]
        assert not cut or len(ctx.pieces) == 1, budget  # only a place alone over the budget is cut
        for p in ctx.pieces:
            assert (MARKER.split("{")[0] in p.text) == p.truncated
            assert out.count(p.header()) == 1
    big = build_context(searcher, "decode a JSON document", 100_000)
    assert len(big.pieces) == big.considered and not any(p.truncated for p in big.pieces)


def test_a_place_alone_over_the_budget_is_cut_with_a_visible_marker():
    _, count = token_counter()
    long = Piece(
        "a.py", 1, 400, "def long", 1.0, "\n".join(f"    line_{i} = compute({i})" for i in range(400))
    )
    short = Piece("b.py", 1, 2, "def short", 0.5, "return 1")
    pieces, used = pack([long, short], 120, count)
    assert used <= 120 and len(pieces) == 1 and pieces[0].truncated and pieces[0].path == "a.py"
    assert "[... truncated:" in pieces[0].text and pieces[0].end_line < 400
    short.score = 2.0
    pieces, used = pack([long, short], 120, count)  # the better one fits first: the long one is left out
    assert [p.path for p in pieces] == ["b.py"] and not pieces[0].truncated
    assert pack([long], 3, count)[0] == []  # not even the header fits
    with pytest.raises(InvalidRequestError):
        pack([short], 0, count)


def test_the_tokenizer_is_the_callers(tmp_path):
    name, count = token_counter(str(bundled_model_dir() / "tokenizer.json"))
    assert name == "tokenizer.json" and count("def decode(self, s)") > 3
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(InvalidRequestError, match="bad.json"):
        token_counter(str(tmp_path / "bad.json"))
    with pytest.raises(InvalidRequestError, match="nova-no-such-tokenizer"):
        token_counter("nova-no-such-tokenizer-xyz/none")


def test_expand_offers_the_graph_neighbours_of_the_top_hits_saying_why(searcher):
    from nova_pipeline_tests.service.test_mcp import write_graph

    home = searcher.settings.home
    plain = build_context(searcher, "JSONDecoder raw_decode", 100_000, k=1, mode="lexical")
    assert build_context(
        searcher, "JSONDecoder raw_decode", 100_000, k=1, mode="lexical", expand=True
    ).pieces == (plain.pieces)  # no graph built: nothing to add
    write_graph(home.parent / "src", home)
    wide = build_context(searcher, "JSONDecoder raw_decode", 100_000, k=1, mode="lexical", expand=True)
    added = [p for p in wide.pieces if p.why.startswith(("calls", "called by"))]
    assert len(wide.pieces) == len(plain.pieces) + len(added) and added
    assert all(f"({p.why})" in p.header() for p in added)
    assert wide.tokens_used <= 100_000
    tight = build_context(
        searcher, "JSONDecoder raw_decode", plain.tokens_used, k=1, mode="lexical", expand=True
    )
    assert [p.path for p in tight.pieces] == [
        p.path for p in plain.pieces
    ]  # hits first: the graph's are worth half
