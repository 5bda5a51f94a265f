import pandas as pd
import pytest

from nova_pipeline.core.errors import MassDeletionError
from nova_pipeline.core.protect.guard import OVERRIDE, OVERRIDE_HINT, DeletionGuard


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


@pytest.mark.parametrize(
    "before, deleted, after, mass",
    [
        (1, 1, 0, True),  # 1 -> 0: emptying is always mass, whatever the floor
        (3, 3, 0, True),
        (0, 0, 0, False),  # nothing there
        (0, 5, 0, False),
        (5, 0, 5, False),  # nothing deleted
        (18, 9, 9, False),  # exactly 50 %: not more than the fraction
        (20, 11, 9, True),  # 55 %, 11 >= the floor
        (18, 10, 8, True),  # 55.6 %, exactly the floor of 10
        (18, 9, 9, False),
        (14, 9, 5, False),  # 64 %, one under the floor
        (100, 10, 90, False),  # at the floor, 10 %
        (100, 51, 49, True),
        (100, 50, 50, False),
    ],
)
def test_is_mass_at_the_edges(before, deleted, after, mass):
    assert DeletionGuard().is_mass(before, deleted, after) is mass


def test_the_edges_move_with_the_settings():
    assert DeletionGuard(min_deletions=3).is_mass(5, 3, 2) is True
    assert DeletionGuard(min_deletions=4).is_mass(5, 3, 2) is False
    assert DeletionGuard(max_delete_fraction=0.2).is_mass(50, 11, 39) is True  # 22 % > 20 %
    assert DeletionGuard(max_delete_fraction=0.2).is_mass(50, 10, 40) is False  # exactly 20 %
    assert DeletionGuard(allow=True).is_mass(1, 1, 0) is True  # the override lets it through, not hides it


def test_a_small_collection_emptied_and_one_file_lost_to_nothing_are_refused():
    with pytest.raises(MassDeletionError, match="delete 3 of 3 "):
        DeletionGuard().check_vectors(3, 0, "c")
    DeletionGuard().check_vectors(3, 1, "c")  # 2 of 3, under the floor
    one = manifest([("a.py", "ha", "unchanged")])
    with pytest.raises(MassDeletionError, match="delete 1 of 1 "):
        DeletionGuard().check_files(one, manifest([("a.py", "ha", "deleted")]))
    DeletionGuard().check_vectors(0, 0, "c")  # a first build: nothing to lose


def test_golden_current_going_from_one_to_none_is_refused_and_a_first_promotion_passes():
    with pytest.raises(MassDeletionError) as exc:
        DeletionGuard().check_golden(1, 0, "v000007")
    assert "golden_copy (CURRENT v000007)" in str(exc.value) and "delete 1 of 1 (100%" in str(exc.value)
    DeletionGuard().check_golden(0, 0, "none")  # nothing to protect yet
    DeletionGuard().check_golden(1, 1, "v1")
    DeletionGuard().check_golden(5, 1, "v1")  # shrinking is the vector guard's business, not emptying


def test_rows_already_marked_deleted_do_not_count_as_indexed():
    previous = manifest(
        [(f"old{i}.py", f"o{i}", "deleted") for i in range(30)]  # gone in an earlier run
        + [(f"f{i}.py", f"h{i}", "unchanged") for i in range(12)]
    )
    now = manifest([(f"f{i}.py", f"h{i}", "deleted" if i < 5 else "unchanged") for i in range(12)])
    assert DeletionGuard().check_files(previous, now) == 5  # 5 of 12, not of 42; under the floor
    gone = manifest([(f"f{i}.py", f"h{i}", "deleted" if i < 10 else "unchanged") for i in range(12)])
    with pytest.raises(MassDeletionError, match="delete 10 of 12 "):
        DeletionGuard().check_files(previous, gone)
    only_deleted = manifest([(f"old{i}.py", f"o{i}", "deleted") for i in range(30)])
    assert DeletionGuard().check_files(only_deleted, manifest([("a.py", "ha", "added")])) == 0


def test_the_first_run_returns_zero_lost():
    now = manifest([("a.py", "ha", "added")])
    assert DeletionGuard().check_files(None, now) == 0
    assert DeletionGuard().check_files(manifest([]), now) == 0


def test_the_refusal_names_the_lost_files_and_says_nothing_was_written():
    now = manifest([(f"f{i}.py", f"h{i}", "deleted" if i < 30 else "unchanged") for i in range(40)])
    with pytest.raises(MassDeletionError) as exc:
        DeletionGuard().check_files(PREVIOUS, now)
    msg = str(exc.value)
    assert msg.startswith("source_files: ")
    assert "e.g. f0.py, f1.py, f2.py are gone." in msg and "f3.py" not in msg
    assert "Nothing was written." in msg and "max_delete_fraction 50%" in msg
    assert "--allow-mass-delete" in msg


def test_a_missing_source_dir_names_the_dir_and_count_and_an_existing_one_passes(tmp_path):
    with pytest.raises(MassDeletionError) as exc:
        DeletionGuard().check_source_dir(tmp_path / "gone", PREVIOUS)
    assert f"NOVA_SOURCE_DIR={tmp_path / 'gone'} is missing, and 40 files are indexed" in str(exc.value)
    DeletionGuard().check_source_dir(tmp_path, PREVIOUS)  # there
    DeletionGuard().check_source_dir(None, PREVIOUS)  # not set: the settings say why
    DeletionGuard().check_source_dir(tmp_path / "gone", manifest([("a.py", "ha", "deleted")]))
    with pytest.raises(MassDeletionError):
        DeletionGuard(allow=True).check_source_dir(tmp_path / "gone", PREVIOUS)  # no override for a mount


def test_the_vector_refusal_names_the_collection_and_the_target():
    with pytest.raises(MassDeletionError) as exc:
        DeletionGuard().check_vectors(1000, 400, "chunks_abc")
    msg = str(exc.value)
    assert msg.startswith("vector_index (chunks_abc): this run would delete 600 of 1,000 (60%")
    assert "asks for 400 vectors" in msg
    DeletionGuard(allow=True).check_vectors(1000, 0, "c")
    DeletionGuard().check_vectors(1000, 1200, "c")  # growing


def test_nothing_deleted_is_never_mass_even_with_nothing_left():
    assert DeletionGuard().is_mass(5, 0, 0) is False  # the caller's count of deletions decides


def test_the_messages_say_what_to_check():
    with pytest.raises(MassDeletionError) as exc:
        DeletionGuard().check_source_dir("/mnt/src", PREVIOUS)
    assert str(exc.value) == (
        "source_files: NOVA_SOURCE_DIR=/mnt/src is missing, and 40 files are indexed from it. Is the volume "
        "mounted? Nothing was written. To empty the index on purpose, point NOVA_SOURCE_DIR at an empty "
        f"directory and rerun with {OVERRIDE}."
    )
    tiny = manifest([("a.py", "ha", "unchanged")])
    with pytest.raises(MassDeletionError) as exc:
        DeletionGuard().check_files(tiny, manifest([("a.py", "ha", "deleted")]))
    assert "The source tree is empty: is the volume mounted, is NOVA_SOURCE_DIR right? Nothing" in str(
        exc.value
    )
    with pytest.raises(MassDeletionError) as exc:
        DeletionGuard().check_golden(3, 0, "v2")
    assert str(exc.value) == (
        "golden_copy (CURRENT v2): this run would delete 3 of 3 (100%, max_delete_fraction 50%). "
        "The index is empty; promoting it would start pushing good versions out of retention. "
        "Nothing was written. "
        f"{OVERRIDE_HINT}"
    )
