import json

import pytest

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
