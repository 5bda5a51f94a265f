"""Verified models: a flipped byte in a copy of the model is refused before the model is loaded, naming the
file and both digests; pins are trusted on first use and re-pinned by `nova model trust` with an audit."""

import shutil

import pytest

from nova_pipeline.core.index import model_files
from nova_pipeline.core.index.embedding import SentenceTransformerEmbedder, bundled_model_dir
from nova_pipeline.core.index.model_files import ModelVerificationError, digests, trust, verify
from nova_pipeline.core.serving.health import model_files as health_check


@pytest.fixture
def copy(tmp_path):
    dest = tmp_path / "model-copy"
    shutil.copytree(bundled_model_dir(), dest)
    return dest


def flip_a_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_the_bundled_model_matches_the_manifest_shipped_in_the_package():
    check = verify(bundled_model_dir())
    assert check.files == 13 and check.manifest == model_files.BUNDLED_MANIFEST and not check.pinned_now


def test_a_flipped_byte_in_the_bundled_model_is_refused_naming_the_file_and_both_digests(copy, monkeypatch):
    monkeypatch.setattr(model_files, "_is_bundled", lambda d: True)  # the copy stands for the package
    verify(copy)
    before = digests(copy)["model.safetensors"]
    flip_a_byte(copy / "model.safetensors")
    with pytest.raises(ModelVerificationError) as exc:
        verify(copy)
    msg = str(exc.value)
    assert "model file model.safetensors of model-copy changed" in msg and before in msg
    assert digests(copy)["model.safetensors"] in msg and "Refusing to load it" in msg


def test_another_model_is_pinned_on_first_use_checked_after_and_refused_before_loading(
    copy, tmp_path, monkeypatch
):
    home = tmp_path / "home"
    first = verify(copy, home)
    assert first.pinned_now and first.manifest.parent == home / "models"
    assert not verify(copy, home).pinned_now
    (copy / "extra.bin").write_bytes(b"x")
    with pytest.raises(ModelVerificationError, match="extra.bin of model-copy is not in the manifest"):
        verify(copy, home)
    (copy / "extra.bin").unlink()
    (copy / "vocab.txt").unlink()
    with pytest.raises(ModelVerificationError, match="vocab.txt of model-copy is missing"):
        verify(copy, home)
    shutil.copy(bundled_model_dir() / "vocab.txt", copy / "vocab.txt")
    flip_a_byte(copy / "model.safetensors")
    monkeypatch.setenv("NOVA_HOME", str(home))
    loaded = []
    monkeypatch.setattr("sentence_transformers.SentenceTransformer", lambda *a, **k: loaded.append(1))
    with pytest.raises(ModelVerificationError, match="model.safetensors"):
        SentenceTransformerEmbedder(model_dir=copy)
    assert loaded == []  # refused before the weights were read
    assert health_check(home, copy).level == "critical"
    assert trust(copy, home) == ["model.safetensors"]  # a deliberate update: pinned again
    assert verify(copy, home).files == 13 and health_check(home, copy).level == "ok"
    with pytest.raises(ModelVerificationError, match="reinstall"):
        trust(bundled_model_dir(), home)
    with pytest.raises(ModelVerificationError, match="no NOVA_HOME"):
        verify(copy, None)
