import io
import json
import tarfile

import blake3
import pytest
import zstandard as zstd

from nova_pipeline.core.compression.store import ContentStore
from nova_pipeline.core.errors import BackupVerifyError, ConfirmationRequired
from nova_pipeline.core.index import lexical, lexical_delta
from nova_pipeline.core.index.vector_query import top_ids
from nova_pipeline.core.index.vector_store import existing_ids, get_collection, open_client
from nova_pipeline.core.protect import audit, backup, golden
from nova_pipeline.core.protect.backup import archive as archive_mod
from nova_pipeline_tests.conftest import FakeEmbedder, build_home, inject_crash

FP = FakeEmbedder.fingerprint


@pytest.fixture
def home(stdlib_tree, tmp_path):
    """json/ and email/ indexed, with a trained dictionary, and a golden copy."""
    h = tmp_path / "home"
    chunks = build_home(stdlib_tree, h)
    golden.promote(h, FP)
    return h, chunks


def read_members(b):
    with backup.open_archive(b.path) as tar:
        return [(ti.name, tar.extractfile(ti).read()) for ti in tar]


def rewrite(b, members, fix_checksum=True):
    """Write ``members`` [(name, bytes)] as the archive of ``b`` (and its checksum file)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tar.addfile(ti, io.BytesIO(data))
    raw = zstd.ZstdCompressor().compress(buf.getvalue())
    b.path.write_bytes(raw)
    if fix_checksum:
        b.checksum_path.write_text(f"{blake3.blake3(raw).hexdigest()}  {b.path.name}\n")


def test_create_list_and_verify_every_level(home):
    h, _ = home
    r = backup.create_backup(h)
    assert [b.id for b in backup.list_backups(h)] == [r.info.id]
    names = [n for n, _ in read_members(r.info)]
    assert names[-1] == backup.BACKUP_MANIFEST
    assert any(n.startswith("store/objects/") for n in names)
    assert any(n.endswith(".zdict") for n in names)
    for level in (1, 2, 3):
        assert backup.verify(h, r.info.id, level) == [], level


def test_flipped_bit_in_the_archive_fails_the_checksum(home):
    h, _ = home
    b = backup.create_backup(h).info
    raw = bytearray(b.path.read_bytes())
    raw[len(raw) // 2] ^= 0x04
    b.path.write_bytes(raw)
    failures = backup.verify(h, b.id, 1)
    assert failures and "does not match its checksum" in failures[0]


def test_flipped_bit_in_a_member_is_named(home):
    h, _ = home
    b = backup.create_backup(h).info
    members = read_members(b)
    name, data = next((n, d) for n, d in members if n.startswith("store/objects/"))
    flipped = bytearray(data)
    flipped[len(flipped) // 2] ^= 0x01
    rewrite(b, [(n, bytes(flipped) if n == name else d) for n, d in members])
    assert backup.verify(h, b.id, 1) == []  # a consistent archive and checksum...
    failures = backup.verify(h, b.id, 2)  # ...whose member no longer matches the manifest
    assert failures == [f"member {name} does not match its blake3 in the manifest"]


def test_truncated_archive_fails(home):
    h, _ = home
    b = backup.create_backup(h).info
    b.path.write_bytes(b.path.read_bytes()[: b.size // 2])
    assert backup.verify(h, b.id, 1)
    failures = backup.verify(h, b.id, 2)
    assert any("unreadable" in f or "checksum" in f for f in failures)


def test_missing_member_is_named(home):
    h, _ = home
    b = backup.create_backup(h).info
    members = read_members(b)
    gone = next(n for n, _ in members if n.endswith("model.json"))
    rewrite(b, [(n, d) for n, d in members if n != gone])
    assert f"member {gone} is missing from the archive" in backup.verify(h, b.id, 2)


def test_wrong_dictionary_fails_the_restore_drill_naming_it(home):
    h, _ = home
    b = backup.create_backup(h).info
    members = read_members(b)
    dict_name = next(n for n, _ in members if n.endswith(".zdict"))
    samples = [f"completely different text {i} ".encode() * 40 for i in range(200)]
    other = zstd.train_dictionary(4096, samples).as_bytes()
    manifest = json.loads(dict(members)[backup.BACKUP_MANIFEST])
    manifest["members"][dict_name] = {"blake3": blake3.blake3(other).hexdigest(), "size": len(other)}
    rewrite(
        b,
        [
            (
                n,
                other
                if n == dict_name
                else json.dumps(manifest).encode()
                if n == backup.BACKUP_MANIFEST
                else d,
            )
            for n, d in members
        ],
    )
    assert backup.verify(h, b.id, 2) == []  # the archive is self-consistent
    failures = backup.verify(h, b.id, 3)
    assert any(dict_name.rsplit("/", 1)[1] in f for f in failures)  # the golden manifest names the dictionary
    # and every store object compressed with the real dictionary fails, named, for want of it
    object_failures = [f for f in failures if f.startswith("object ") and "dict_id" in f]
    assert object_failures and all("store/objects" in f for f in object_failures)


def test_crafted_archive_with_dotdot_is_refused(home, tmp_path):
    h, _ = home
    b = backup.create_backup(h).info
    members = read_members(b)
    evil = b"owned\n"
    manifest = json.loads(dict(members)[backup.BACKUP_MANIFEST])
    manifest["members"]["../../evil.txt"] = {"blake3": blake3.blake3(evil).hexdigest(), "size": len(evil)}
    rewrite(
        b,
        [("../../evil.txt", evil)]
        + [(n, json.dumps(manifest).encode() if n == backup.BACKUP_MANIFEST else d) for n, d in members],
    )
    with pytest.raises(BackupVerifyError, match=r"\.\./\.\./evil\.txt"):
        backup.extract(b, tmp_path / "out")
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path.parent / "evil.txt").exists()


def test_a_crash_at_any_step_of_a_backup_leaves_nothing_partial(home, monkeypatch):
    h, _ = home
    first = backup.create_backup(h).info
    targets = [
        (archive_mod, "_add_bytes"),
        (archive_mod.os, "fsync"),
        (archive_mod, "atomic_write_bytes"),
        (archive_mod.os, "replace"),
        (archive_mod, "fsync_dir"),
    ]
    crashes = 0
    for fail_at in range(1, 400):
        with monkeypatch.context() as m:
            calls = inject_crash(m, targets, fail_at)
            try:
                backup.create_backup(h)
            except (OSError, backup.BackupError):
                crashes += 1
            else:
                assert calls["n"] < fail_at
                break
        listed = backup.list_backups(h)
        assert all(backup.verify_structure(b) == [] for b in listed), fail_at
        assert first.id in {b.id for b in listed}
        if fail_at % 25 == 0:
            assert backup.verify_full(first) == []
    assert crashes >= 5


def test_restore_round_trip_reproduces_index_and_store(home, monkeypatch):
    h, chunks = home
    b = backup.create_backup(h).info
    col = get_collection(open_client(h), FP, create=False)
    ids_before = existing_ids(col)
    # each query sits among five chunks (their mean), so its top 5 is well separated from the rest
    fake = FakeEmbedder()
    groups = [chunks["text"].iloc[i : i + 5].tolist() for i in (0, 40, 80, 120)]
    queries = [fake.embed(g).mean(axis=0) for g in groups]
    top_before = top_ids(col, queries, 5)
    assert [set(t) for t in top_before] == [set(chunks["chunk_id"].iloc[i : i + 5]) for i in (0, 40, 80, 120)]
    store_keys = ContentStore(h).index()["key"].tolist()
    # disaster: index, store objects and golden copies gone
    golden.forget_cached_clients()
    golden.remove_tree(h / "vectors")
    golden.remove_tree(h / "store" / "objects")
    golden.remove_tree(h / "golden")
    golden.remove_tree(h / "lexical")
    with pytest.raises(ConfirmationRequired):
        backup.restore(h, b.id, False, "carol")
    entry = backup.restore(h, b.id, True, "carol")
    assert entry["outcome"] == "ok"
    # the BM25 index came back from the archive's golden version, holding exactly the chunks
    assert lexical_delta.id_failures(lexical.current_path(h), chunks["chunk_id"], None) == []
    col = get_collection(open_client(h), FP, create=False)
    assert existing_ids(col) == ids_before
    assert top_ids(col, queries, 5) == top_before
    assert ContentStore(h).verify(store_keys) == []
    assert {(r["action"], r["outcome"]) for r in audit.read(h)} >= {
        ("restore", "refused: confirm is not true"),
        ("restore", "ok"),
    }


def test_retention_keeps_the_newest_verified(home):
    h, _ = home
    made = [backup.create_backup(h, keep=3).info.id for _ in range(5)]
    assert [b.id for b in backup.list_backups(h)] == sorted(made, reverse=True)[:3]


@pytest.mark.integration
def test_postgres_dump_is_backed_up_and_drilled(home, pg_database):
    import dagster as dg

    h, _ = home
    pg = pg_database
    url = f"postgresql://{pg['DAGSTER_PG_USER']}@{pg['DAGSTER_PG_HOST']}:{pg['DAGSTER_PG_PORT']}/{pg['DAGSTER_PG_DB']}"
    with dg.instance_for_test(overrides={"storage": {"postgres": {"postgres_url": url}}}):
        pass  # creates the Dagster schema in the database
    r = backup.create_backup(h, pg_url=url)
    assert backup.PG_DUMP in [n for n, _ in read_members(r.info)]
    admin = f"postgresql://{pg['DAGSTER_PG_USER']}@{pg['DAGSTER_PG_HOST']}:{pg['DAGSTER_PG_PORT']}/postgres"
    assert backup.verify(h, r.info.id, 3, pg_admin_url=admin) == []


def test_ids_with_suffixes_sort_by_number(tmp_path):
    from nova_pipeline.core.protect.golden.versions import stamp_key

    ids = ["20260101T000000Z-10", "20260101T000000Z-9", "20260101T000000Z", "20260101T000000Z-2"]
    assert sorted(ids, key=stamp_key) == [
        "20260101T000000Z",
        "20260101T000000Z-2",
        "20260101T000000Z-9",
        "20260101T000000Z-10",
    ]
    d = backup.backups_dir(tmp_path)
    d.mkdir(parents=True)
    for i in ids:
        (d / f"backup_{i}.tar.zst").write_bytes(b"x")
    assert [b.id for b in backup.list_backups(tmp_path)][:2] == ["20260101T000000Z-10", "20260101T000000Z-9"]
    assert backup.newest_backup(tmp_path).id == "20260101T000000Z-10"


def test_retention_keeps_the_newest_verified_backup_of_each_golden_version(home, stdlib_tree):
    h, _ = home
    v1 = golden.current_version(h).name
    b1, b2 = (backup.create_backup(h, keep=100).info for _ in range(2))  # of v1
    p = stdlib_tree / "json" / "decoder.py"
    p.write_text(p.read_text() + "\n\ndef added():\n    return 1\n")
    build_home(stdlib_tree, h)
    v2 = golden.promote(h, FP).version.name
    b3, b4, b5 = (backup.create_backup(h, keep=100).info for _ in range(3))  # of v2
    b2.verified_path.unlink()  # b2 failed a verification since: it no longer counts
    b5.verified_path.unlink()  # newer than every verified backup: under inspection, never deleted

    removed = backup.apply_retention(h, keep=1)
    assert set(removed) == {b2.id, b3.id}
    # b4: the newest verified; b1: the newest *verified* backup of v1, still on disk; b5: under inspection
    assert {b.id for b in backup.list_backups(h)} == {b1.id, b4.id, b5.id}

    golden.remove_tree(golden.golden_root(h) / v1)  # v1 leaves the disk: its backup is no longer special
    assert backup.apply_retention(h, keep=1) == [b1.id]
    assert v2 == golden.current_version(h).name
