import pytest

from nova_pipeline.core.errors import SettingsError
from nova_pipeline.core.settings import Settings


def test_defaults_and_resolution(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = Settings.from_env({"NOVA_SOURCE_DIR": str(tmp_path), "NOVA_IGNORE": "a/, *.log\nb"})
    assert s.home == tmp_path / ".nova"
    assert s.source_dir == tmp_path
    assert s.ignore == ("a/", "*.log", "b")
    assert s.chroma_url is None


def test_missing_source_names_the_variable(tmp_path):
    with pytest.raises(SettingsError, match="NOVA_SOURCE_DIR is not set"):
        Settings.from_env({})
    with pytest.raises(SettingsError, match=str(tmp_path / "missing")):
        Settings.from_env({"NOVA_SOURCE_DIR": str(tmp_path / "missing")})
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(SettingsError, match="not a directory"):
        Settings.from_env({"NOVA_SOURCE_DIR": str(f)})


def test_home_must_be_a_directory(tmp_path):
    f = tmp_path / "home"
    f.write_text("x")
    with pytest.raises(SettingsError, match="NOVA_HOME"):
        Settings.from_env({"NOVA_SOURCE_DIR": str(tmp_path), "NOVA_HOME": str(f)})
