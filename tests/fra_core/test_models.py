import json
import time

import pytest
import torch

from fra_core import hub
from fra_core.models import ModelLoadError, load_local_model, save_local_model
from fra_core.models import loading as models
from fra_core.models.tiny import make_tiny_model
from fra_core.models.tokenizers import build_tokenizer, load_tokenizer, save_tokenizer


def _tokenizer(tmp_path):
    save_tokenizer(build_tokenizer([f"w{i}" for i in range(46)]), tmp_path / "tok")
    return load_tokenizer(tmp_path / "tok")


def test_save_load_round_trip_same_logits(tmp_path):
    model = make_tiny_model()
    folder = save_local_model(model, tmp_path / "m", tokenizer=_tokenizer(tmp_path), meta={"origin": "test"})
    loaded = load_local_model(folder, "cpu")
    tokens = torch.randint(4, 50, (2, 10))
    torch.testing.assert_close(loaded(tokens), model(tokens), rtol=0, atol=0)
    assert loaded.to_str_tokens("w1 w2")[1:] == ["w1", "w2"]
    assert models.read_meta(folder) == {"origin": "test"}


def test_save_refuses_to_overwrite(tmp_path):
    model = make_tiny_model()
    save_local_model(model, tmp_path / "m")
    with pytest.raises(FileExistsError):
        save_local_model(model, tmp_path / "m")


def test_bad_folders_name_the_problem(tmp_path):
    model = make_tiny_model()
    folder = save_local_model(model, tmp_path / "m")
    with pytest.raises(ModelLoadError, match="not found"):
        load_local_model(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="config.json is missing"):
        load_local_model(tmp_path / "empty")
    (folder / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelLoadError, match="not a readable safetensors"):
        load_local_model(folder)
    other = save_local_model(make_tiny_model(d_model=16), tmp_path / "other")
    (other / "config.json").write_text((folder / "config.json").read_text())
    with pytest.raises(ModelLoadError, match="has shape"):
        load_local_model(other)
    (other / "config.json").write_text(json.dumps({"n_layers": 2, "bogus": 1}))
    with pytest.raises(ModelLoadError, match="bogus"):
        load_local_model(other)
    (other / "config.json").write_text("{ not json")
    with pytest.raises(ModelLoadError, match="not valid JSON"):
        load_local_model(other)


def test_list_and_load_workspace_models(workspace):
    save_local_model(make_tiny_model(), workspace.models / "tiny")
    refs = [e.ref for e in models.list_models(workspace)]
    assert refs[0] == "demo" and "tiny" in refs
    assert models.load_model("tiny", "cpu", workspace).cfg.d_model == 32


def test_official_model_offline_fails_fast(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # empty cache
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(hub, "hub_reachable", lambda timeout_s=3.0: False)
    monkeypatch.setattr(models, "is_cached", lambda repo_id: False)
    t0 = time.time()
    with pytest.raises(ModelLoadError, match="not in the Hugging Face cache"):
        models.load_model("gpt2-small", "cpu")
    assert time.time() - t0 < 10


def test_unknown_name_is_clear(workspace):
    with pytest.raises(ModelLoadError, match="not the demo, a workspace model"):
        models.load_model("no-such-model-xyz", "cpu", workspace)


def test_official_model_with_hf_offline_env_fails_fast(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(models, "is_cached", lambda repo_id: False)
    t0 = time.time()
    with pytest.raises(ModelLoadError, match="how|machine with access"):
        models.load_official_model("gpt2-small", "cpu")
    assert time.time() - t0 < 10
