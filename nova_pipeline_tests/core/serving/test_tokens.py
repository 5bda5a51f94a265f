"""API tokens: stored hashed, verified by role, remembered safely, revoked, and a corrupt file reported."""

import hashlib
import json
import os

import pytest

from nova_pipeline.core.serving import tokens as tokens_mod
from nova_pipeline.core.serving.tokens import TokenError, TokenStore


def test_tokens_are_stored_hashed_and_verify_by_role(tmp_path):
    store = TokenStore(tmp_path)
    assert not store.exists()
    admin = store.create("ops", "admin")
    viewer = store.create("dashboards", "viewer")
    raw = store.path.read_text()
    assert admin not in raw and viewer not in raw and admin.split("_", 2)[2] not in raw  # only hashes
    assert oct(store.path.stat().st_mode & 0o777) == "0o600"
    assert {e["name"] for e in json.loads(raw)["tokens"]} == {"ops", "dashboards"}
    fresh = TokenStore(tmp_path)  # another process: nothing cached
    assert fresh.verify(admin).name == "ops" and fresh.verify(admin).allows("admin")
    v = fresh.verify(viewer)
    assert v.allows("viewer") and not v.allows("admin")
    assert fresh.verify(admin[:-1] + ("A" if admin[-1] != "A" else "B")) is None  # a wrong secret
    assert (
        fresh.verify("nova_nothere_x") is None and fresh.verify("Bearer") is None and fresh.verify("") is None
    )
    with pytest.raises(TokenError, match="exists already"):
        store.create("ops", "viewer")
    with pytest.raises(TokenError, match="role"):
        store.create("x", "root")
    assert store.revoke("ops") and fresh.verify(admin) is None  # revoked: refused from the next request


def test_a_verified_token_is_remembered_by_the_whole_token_not_its_id(tmp_path):
    store = TokenStore(tmp_path)
    token = store.create("ops", "admin")
    assert store.verify(token).name == "ops"  # now remembered
    prefix, token_id, secret = token.split("_", 2)
    wrong = f"nova_{token_id}_{secret[:-1]}{'A' if secret[-1] != 'A' else 'B'}"
    assert store.verify(wrong) is None  # the id of a verified token with a wrong secret
    assert store.verify(f"nova_{token_id}_x") is None
    assert store.verify(token).name == "ops"


def test_a_secret_with_underscores_verifies(tmp_path, monkeypatch):
    monkeypatch.setattr(tokens_mod.secrets, "token_urlsafe", lambda n: "a_b__c_")
    store = TokenStore(tmp_path)
    token = store.create("ops", "viewer")
    assert token.endswith("_a_b__c_")
    assert tokens_mod.parse(token) == (token.split("_")[1], "a_b__c_")
    assert TokenStore(tmp_path).verify(token).name == "ops"
    assert TokenStore(tmp_path).verify(token[: -len("a_b__c_")] + "a_b_c_") is None


@pytest.mark.parametrize(
    "token, parsed",
    [
        ("nova_abc_def", ("abc", "def")),
        ("nova_abc_d_e", ("abc", "d_e")),
        ("nova_abc_", None),
        ("nova__def", None),
        ("nova_abc", None),
        ("nova_", None),
        ("Nova_abc_def", None),
        ("xnova_abc_def", None),
        ("", None),
    ],
)
def test_parse_splits_the_id_from_the_secret_at_the_first_underscore(token, parsed):
    assert tokens_mod.parse(token) == parsed


def test_revoking_an_unknown_name_is_false_and_writes_nothing(tmp_path):
    store = TokenStore(tmp_path)
    assert store.revoke("nobody") is False and not store.exists()  # no file: nothing to revoke
    token = store.create("ops", "admin")
    before = store.path.read_bytes(), store.path.stat().st_mtime_ns
    assert store.revoke("nobody") is False
    assert (store.path.read_bytes(), store.path.stat().st_mtime_ns) == before
    assert store.verify(token).name == "ops"


def test_a_revoked_token_is_refused_by_the_store_that_verified_it(tmp_path):
    store = TokenStore(tmp_path)
    keep, gone = store.create("keep", "viewer"), store.create("gone", "admin")
    assert store.verify(gone).name == "gone" and store.verify(keep).name == "keep"  # both remembered
    assert store.revoke("gone") is True
    assert store.verify(gone) is None and store.verify(keep).name == "keep"
    assert [e.name for e in store.entries()] == ["keep"]
    assert oct(store.path.stat().st_mode & 0o777) == "0o600"


def test_an_entry_replaced_under_the_same_id_is_checked_again(tmp_path):
    store = TokenStore(tmp_path)
    token = store.create("ops", "admin")
    assert store.verify(token) is not None  # remembered
    raw = json.loads(store.path.read_text())
    raw["tokens"][0]["hash"] = "0" * 64  # another process rewrote the entry
    store.path.write_text(json.dumps(raw) + " ")  # a new size: the file is read again
    assert store.verify(token) is None


def test_scrypt_parameters_are_pinned_by_a_known_answer():
    """Changing them would silently invalidate every tokens.json: RFC 7914's interactive parameters."""
    assert tokens_mod.SCRYPT == {"n": 16384, "r": 8, "p": 1, "dklen": 32}
    salt = bytes(range(16))
    assert tokens_mod._hash("correct horse_battery", salt) == (
        "d8ab66efeea83befc5005bd4ed382d2f2c7c3a05613e2b1c4d242d4f875d3daa"
    )
    expected = hashlib.scrypt(b"correct horse_battery", salt=salt, n=16384, r=8, p=1, dklen=32).hex()
    assert tokens_mod._hash("correct horse_battery", salt) == expected


@pytest.mark.parametrize(
    "body, why",
    [
        ("{not json", "JSONDecodeError"),
        ('{"tokens": [{"id": "a"}]}', "TypeError"),
        ('{"nothing": []}', "KeyError"),
        (
            '{"tokens": [{"id": "a", "name": "n", "role": "root", "salt": "", "hash": "", '
            '"created_at": ""}]}',
            "role",
        ),
        ("[]", "TypeError"),
    ],
)
def test_a_corrupt_token_file_is_an_error_that_says_how_to_repair_it(tmp_path, body, why):
    store = TokenStore(tmp_path)
    store.path.parent.mkdir(parents=True, exist_ok=True)
    store.path.write_text(body)
    for call in (store.entries, store.require_readable, lambda: store.verify("nova_abc_def")):
        with pytest.raises(TokenError) as exc:
            call()
        msg = str(exc.value)
        assert "tokens.json in NOVA_HOME is unreadable" in msg and why in msg and "backup" in msg
        assert str(tmp_path) not in msg  # no absolute path
    with pytest.raises(TokenError, match="unreadable"):
        store.create("x", "viewer")  # nothing is written over a file that cannot be read
    assert store.path.read_text() == body


def test_a_missing_token_file_is_an_error_only_where_tokens_are_required(tmp_path):
    store = TokenStore(tmp_path)
    assert store.entries() == []
    for call in (store.require_readable, lambda: store.verify("nova_abc_def")):
        with pytest.raises(TokenError, match="missing"):
            call()


def test_roles_and_the_admin_role_covers_viewer(tmp_path):
    store = TokenStore(tmp_path)
    admin, viewer = store.verify(store.create("a", "admin")), store.verify(store.create("v", "viewer"))
    assert admin.allows("admin") and admin.allows("viewer")
    assert viewer.allows("viewer") and not viewer.allows("admin")
    assert tokens_mod.ROLES == ("viewer", "admin")
    entry = store.entries()[0]
    assert len(entry.id) == 12 and len(bytes.fromhex(entry.salt)) == 16 and len(entry.hash) == 64
    assert entry.created_at.endswith("+00:00")


def count_hashes(monkeypatch):
    calls = []
    real = tokens_mod._hash
    monkeypatch.setattr(tokens_mod, "_hash", lambda secret, salt: (calls.append(1), real(secret, salt))[1])
    return calls


def test_a_remembered_token_costs_no_hash_and_revoking_another_keeps_it_remembered(tmp_path, monkeypatch):
    store = TokenStore(tmp_path)
    keep, gone = store.create("keep", "viewer"), store.create("gone", "admin")
    hashes = count_hashes(monkeypatch)
    store.verify(keep)
    store.verify(gone)
    assert len(hashes) == 2
    store.verify(keep)
    store.verify(gone)
    assert len(hashes) == 2  # both remembered: a dictionary lookup each
    store.revoke("gone")
    assert store.verify(keep).name == "keep" and len(hashes) == 2  # still remembered
    assert store.verify(gone) is None


def test_the_file_is_read_again_only_when_it_changed(tmp_path):
    store = TokenStore(tmp_path)
    token = store.create("ops", "viewer")
    assert store.verify(token).name == "ops"  # the file is read and remembered
    st = store.path.stat()
    raw = store.path.read_bytes()
    with open(store.path, "r+b") as fh:  # same size, same inode, same mtime: unchanged as far as a stat says
        fh.write(b"#" * len(raw))
    os.utime(store.path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert store.entries()[0].name == "ops" and store.verify(token).name == "ops"
    os.utime(store.path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # now it changed
    with pytest.raises(TokenError, match="unreadable"):
        store.entries()


def test_messages_say_how_to_repair(tmp_path):
    store = TokenStore(tmp_path)
    with pytest.raises(TokenError) as missing:
        store.require_readable()
    assert str(missing.value) == (
        "tokens.json is missing from NOVA_HOME although this service requires tokens: put it back (from a "
        "backup copy of NOVA_HOME), or create a token with `nova token create`"
    )
    store.path.parent.mkdir(parents=True, exist_ok=True)
    entry = {"id": "a", "name": "n", "role": "root", "salt": "", "hash": "", "created_at": ""}
    store.path.write_text(json.dumps({"tokens": [entry]}))
    with pytest.raises(TokenError) as bad:
        store.entries()
    assert str(bad.value) == (
        "tokens.json in NOVA_HOME is unreadable (_Malformed: a role is not one of viewer, admin): fix its "
        'JSON (a {"tokens": [...]} list of entries with id, name, role, salt, hash and created_at), or put '
        "back a "
        "copy from a backup of NOVA_HOME; the tokens in it stay valid once it reads"
    )
    with pytest.raises(TokenError) as role:
        TokenStore(tmp_path / "other").create("x", "root")
    assert str(role.value) == "role 'root' is not one of viewer, admin"
    with pytest.raises(TokenError) as dup:
        s2 = TokenStore(tmp_path / "other")
        s2.create("x", "viewer")
        s2.create("x", "viewer")
    assert str(dup.value) == "a token named 'x' exists already: revoke it first, or choose another name"


def test_a_secret_carries_256_bits(tmp_path):
    token = TokenStore(tmp_path).create("x", "viewer")
    secret = tokens_mod.parse(token)[1]
    assert len(secret) == 43  # secrets.token_urlsafe(32): 32 bytes, base64url without padding
