import pandas as pd
import pytest

from nova_pipeline.core.errors import MassDeletionError
from nova_pipeline.core.protect.guard import DeletionGuard


def manifest(rows):
    return pd.DataFrame(rows, columns=["path", "blake3", "status"])


PREVIOUS = manifest([(f"f{i}.py", f"h{i}", "unchanged") for i in range(40)])


def test_losing_most_files_is_refused_naming_counts_and_the_override():
    now = manifest([(f"f{i}.py", f"h{i}", "deleted" if i < 30 else "unchanged") for i in range(40)])
    with pytest.raises(MassDeletionError) as exc:
        DeletionGuard().check_files(PREVIOUS, now)
    assert "delete 30 of 40 (75%" in str(exc.value) and "allow_mass_delete: true" in str(exc.value)
    assert DeletionGuard(allow=True).check_files(PREVIOUS, now) == 30
    assert DeletionGuard(max_delete_fraction=0.8).check_files(PREVIOUS, now) == 30


def test_a_moved_tree_is_not_a_loss():
    moved = manifest(
        [(f"f{i}.py", f"h{i}", "deleted") for i in range(40)]
        + [(f"new/f{i}.py", f"h{i}", "added") for i in range(40)]
    )
    assert DeletionGuard().check_files(PREVIOUS, moved) == 0


def test_small_deletions_pass_below_the_floor_but_emptying_always_counts():
    tiny = manifest([("a.py", "ha", "unchanged"), ("b.py", "hb", "unchanged"), ("c.py", "hc", "unchanged")])
    two_gone = manifest([("a.py", "ha", "deleted"), ("b.py", "hb", "deleted"), ("c.py", "hc", "unchanged")])
    assert DeletionGuard().check_files(tiny, two_gone) == 2  # 67%, but under min_deletions
    empty = manifest([("a.py", "ha", "deleted"), ("b.py", "hb", "deleted"), ("c.py", "hc", "deleted")])
    with pytest.raises(MassDeletionError, match="empty"):
        DeletionGuard().check_files(tiny, empty)


def test_a_missing_source_dir_with_files_indexed_is_refused(tmp_path):
    with pytest.raises(MassDeletionError, match="mounted"):
        DeletionGuard().check_source_dir(tmp_path / "gone", PREVIOUS)
    DeletionGuard().check_source_dir(
        tmp_path / "gone", None
    )  # nothing indexed yet: the settings error says why


def test_vectors_count_the_net_shrink_and_golden_never_goes_empty():
    DeletionGuard().check_vectors(1000, 990, "c")  # re-chunking: ids replaced one for one
    with pytest.raises(MassDeletionError, match="vector_index"):
        DeletionGuard().check_vectors(1000, 400, "c")
    with pytest.raises(MassDeletionError, match="golden_copy"):
        DeletionGuard().check_golden(98, 0, "v1")
    DeletionGuard(allow=True).check_golden(98, 0, "v1")
