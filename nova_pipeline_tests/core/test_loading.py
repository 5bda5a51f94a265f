import gc

import pytest

from nova_pipeline.core.loading import gc_paused


@pytest.fixture
def collector():
    was = gc.isenabled()
    gc.enable()
    yield
    (gc.enable if was else gc.disable)()


def test_the_block_runs_with_the_collector_off_and_what_it_made_is_frozen(collector):
    before = gc.get_freeze_count()
    with gc_paused():
        assert not gc.isenabled()
        made = [[i] for i in range(1000)]
    assert gc.isenabled() and gc.get_freeze_count() >= before + len(made)


def test_a_failing_block_turns_the_collector_back_on_and_freezes_nothing(collector):
    """The count may fall (a frozen object can still be freed, e.g. by another thread: it fell by 2 in one
    suite run), never rise: a freeze would add at least ``unfrozen``."""
    unfrozen = [[i] for i in range(1000)]  # tracked, not frozen: what a wrongful freeze would add
    assert all(gc.is_tracked(o) for o in unfrozen)
    before = gc.get_freeze_count()
    with pytest.raises(ImportError), gc_paused():
        raise ImportError("no such module")
    assert gc.isenabled() and gc.get_freeze_count() <= before


def test_a_collector_that_was_off_stays_off(collector):
    gc.disable()
    with gc_paused(freeze=False):
        pass
    assert not gc.isenabled()
