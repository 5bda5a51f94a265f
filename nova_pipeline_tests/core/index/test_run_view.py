"""The view of the primary that a run's steps share: kept through the run's own writes, left behind by any
other writer's, closed when the run ends, and never kept outside a run."""

import pytest

from nova_pipeline.core.index import run_view
from nova_pipeline.core.index.vector_store import (
    fresh_client,
    get_collection,
    give_view_slot,
    open_client_at,
    take_view_slot,
)
from nova_pipeline.core.locks import writer_lock
from nova_pipeline_tests.conftest import FakeEmbedder, build_home, run_python

FP = FakeEmbedder.fingerprint


@pytest.fixture
def home(json_tree, tmp_path):
    h = tmp_path / "home"
    build_home(json_tree, h)
    return h


@pytest.fixture
def sharing():
    run_view.begin()
    yield
    run_view.end()


def add(client, n: int) -> None:
    col = get_collection(client, FP)
    col.upsert(ids=[f"extra-{n}"], embeddings=FakeEmbedder().embed([f"extra {n}"]), metadatas=[{"path": "x"}])


def count(client) -> int:
    return get_collection(client, FP).count()


def test_outside_a_run_every_fresh_client_is_a_new_view(home):
    with fresh_client(home) as a:
        count(a)
    with fresh_client(home) as b:
        assert b is not a


def test_a_runs_steps_share_one_view_through_their_own_writes(home, sharing):
    with fresh_client(home) as reader:
        n = count(reader)
    with writer_lock(home), fresh_client(home) as writer:  # a writer step: its hold marks a new generation
        assert writer is reader
        add(writer, 1)
    with fresh_client(home) as again:
        assert again is reader and count(again) == n + 1


def test_another_processes_write_leaves_the_kept_view_behind(home, sharing):
    with fresh_client(home) as first:
        n = count(first)
    run_python(
        "from nova_pipeline.core.serving.failover import writing_to\n"
        f"with writing_to({str(home)!r}, None) as store:\n"
        f"    col = store.collection({FP!r})\n"
        "    col.upsert(ids=['extra-2'], embeddings=[[0.5] * 384], metadatas=[{'p': 1}])\n"
    )
    with fresh_client(home) as second:
        assert second is not first and count(second) == n + 1
        assert get_collection(second, FP).get(ids=["extra-2"])["ids"] == ["extra-2"]


def test_a_write_through_another_client_of_this_process_leaves_it_behind_too(home, sharing):
    with fresh_client(home) as first:
        n = count(first)
    with writer_lock(home):  # as nova watch's own client writes: not through the kept view
        other = open_client_at(home / "vectors", view=97)
        add(other, 3)
        other.close()
    with fresh_client(home) as second:
        assert second is not first and count(second) == n + 1


def test_a_hold_that_wrote_nothing_through_the_view_leaves_it_behind(home, sharing):
    with fresh_client(home) as first:
        count(first)
    with writer_lock(home):  # e.g. the runtime copy's writer: the kept view cannot tell, so it is not trusted
        pass
    with fresh_client(home) as second:
        assert second is not first


def test_the_end_of_the_run_closes_the_kept_view_and_a_forgotten_one_is_not_handed_out(home):
    free = [take_view_slot(), take_view_slot()]  # the two lowest free slots (other tests' views hold some)
    for slot in free:
        give_view_slot(slot)
    run_view.begin()
    with fresh_client(home) as a:
        count(a)
    run_view.forget(home / "vectors")  # its files are about to be copied or replaced
    with fresh_client(home) as b:
        assert b is not a
    run_view.end()
    after = [take_view_slot(), take_view_slot()]  # the run's two views took them: both closed and freed
    for slot in after:
        give_view_slot(slot)
    assert after == free
    with fresh_client(home) as c:
        assert c is not b and count(c) > 0
