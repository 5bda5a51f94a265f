"""Switching the embedding model without downtime: a second model (the bundled one with its weights
perturbed: another "version") gets its own collection beside the first, a switch is refused until that
collection is complete, a running service swaps to it with no failed search, its query vectors are the new
model's (cosine < 0.95 to the old one's for the same text), and switching back is immediate."""

import shutil
import threading
import time

import httpx
import numpy as np
import pytest

from nova_pipeline.core.index.embedding import SentenceTransformerEmbedder, bundled_fingerprint
from nova_pipeline.core.index.model_files import bundled_model_dir
from nova_pipeline.core.serving.model_switch import ModelSwitchError, model_dir_for, read_active, switch
from nova_pipeline.core.settings import Settings
from nova_pipeline.service.app import create_app
from nova_pipeline_tests.cli.test_cli import nova as cli_nova
from nova_pipeline_tests.conftest import ServerThread, build_home
from nova_pipeline_tests.service.test_live import RandomUnderTheModelsName

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]
TEXTS = [
    "def loads(s): return JSONDecoder().decode(s)",
    "class JSONDecodeError(ValueError): a subclass of ValueError with the position of the error",
    "Serialize obj to a JSON formatted str",
]


def perturbed_model(dest, scale=0.2, seed=0):
    """The bundled model with Gaussian noise (``scale`` times each matrix's std) added to its matrices."""
    from safetensors.numpy import load_file, save_file

    shutil.copytree(bundled_model_dir(), dest)
    weights = load_file(str(dest / "model.safetensors"))
    rng = np.random.default_rng(seed)
    noisy = {
        k: v + rng.standard_normal(v.shape).astype(v.dtype) * scale * (v.std() or 1) if v.ndim >= 2 else v
        for k, v in weights.items()
    }
    save_file(noisy, str(dest / "model.safetensors"), metadata={"format": "pt"})
    return dest


def nova(args, home, dagster_home, timeout: float = 600):
    """The ``nova`` CLI on ``home`` and ``dagster_home``, offline (test_cli's helper: a clean environment)."""
    env = {"NOVA_HOME": str(home), "DAGSTER_HOME": str(dagster_home), "HF_HUB_OFFLINE": "1"}
    return cli_nova(args, env, None, timeout)


def test_a_second_model_is_built_beside_the_first_and_a_running_service_switches_without_a_failed_search(
    json_tree, tmp_path
):
    home, dagster_home = tmp_path / "home", tmp_path / "dagster_home"
    dagster_home.mkdir()
    build_home(json_tree, home, RandomUnderTheModelsName())  # model A: the bundled one's collection
    model_b = perturbed_model(tmp_path / "minilm-v2-retrained")
    fp_a, fp_b = bundled_fingerprint(), bundled_fingerprint(model_b)
    assert fp_a != fp_b and fp_b.startswith("minilm-v2-retrained-")

    with pytest.raises(ModelSwitchError, match="no collection of"):
        switch(home, model_b, "test")
    assert read_active(home) is None and model_dir_for(home, {}) is None

    settings = Settings.build(None, home, require_source=False)
    app = create_app(settings)
    failures: list[str] = []
    served = [0]
    stop = threading.Event()
    with ServerThread(app) as s:

        def ask():
            with httpx.Client(base_url=s.url, timeout=30) as c:
                while not stop.is_set():
                    r = c.get("/search", params={"q": "decode a JSON document", "k": 3, "mode": "vector"})
                    if r.status_code != 200 or not r.json()["hits"]:
                        failures.append(f"{r.status_code} {r.text[:200]}")
                    served[0] += 1

        clients = [threading.Thread(target=ask) for _ in range(2)]
        for c in clients:
            c.start()
        built = nova(["model", "build", "--model-dir", str(model_b)], home, dagster_home)
        assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
        switched = nova(["model", "switch", "--model-dir", str(model_b)], home, dagster_home)
        assert switched.returncode == 0, switched.stderr[-2000:]
        deadline = time.monotonic() + 120
        while app.state.searcher.switches < 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1)
        stop.set()
        for c in clients:
            c.join(60)
        searcher = app.state.searcher
        assert searcher.switches == 1 and searcher.fingerprint == fp_b
        assert failures == [] and served[0] > 10, failures[:3]
        new_vectors = np.vstack([searcher.embed_query(t) for t in TEXTS])

        assert switch(home, None, "test").fingerprint == fp_a  # back: A's collection is still there
        deadline = time.monotonic() + 120
        while searcher.switches < 2 and time.monotonic() < deadline:
            httpx.get(f"{s.url}/search", params={"q": "decode", "k": 1})
            time.sleep(0.2)
        assert searcher.switches == 2 and searcher.fingerprint == fp_a

    old_vectors = SentenceTransformerEmbedder().embed(TEXTS)
    cosine = (old_vectors * new_vectors).sum(axis=1)
    assert (cosine < 0.95).all(), cosine  # the same text under two model versions does not look the same
    assert read_active(home).model_dir == "" and "model_switch" in (home / "audit.log").read_text()


def test_a_hugging_face_model_name_resolves_to_its_local_copy_and_offline_says_what_to_do(
    tmp_path, monkeypatch
):
    from nova_pipeline.core.serving.model_switch import resolve_model

    home = tmp_path / "home"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    name = "sentence-transformers/all-MiniLM-L6-v2"
    assert resolve_model("bundled", home) is None and resolve_model("", home) is None
    assert resolve_model(str(bundled_model_dir()), home) == bundled_model_dir().resolve()
    with pytest.raises(ModelSwitchError, match="not downloaded yet, and the hub is offline"):
        resolve_model(name, home)
    local = home / "models" / "hf" / "sentence-transformers--all-MiniLM-L6-v2"
    shutil.copytree(bundled_model_dir(), local)  # what a download while online leaves
    assert resolve_model(name, home) == local
    assert model_dir_for(home, {"NOVA_EMBED_MODEL": name}) == local
    # a model like any local one: its own fingerprint (so its own collection and cache), named after it
    assert bundled_fingerprint(local).startswith("sentence-transformers--all-MiniLM-L6-v2-")
