"""The GPT-2 Small workflow through the real loaders, offline, on a faithful Hugging Face cache
(tests/fixtures/hf_cache.py: hub layout, GPT-2's config shrunk, its real tokenizer, the kk SAE files under
their real names): model, both SAE loaders, a saved OpenWebText-schema dataset, exact FRA with upstream
hook_z SAEs, and an accumulation job that loads everything by reference."""

from __future__ import annotations

import pytest
import torch

from tests.fixtures.hf_cache import D_MODEL, D_SAE, MODEL_REPO, N_LAYER, OWT_TEXTS, SAE_REPO, kk_file_names, kk_files

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def gpt2(hub_cache):
    """gpt2-small loaded once per module (through load_model, offline)."""
    import huggingface_hub.constants as hf_constants

    mp = pytest.MonkeyPatch()
    for name, value in (("HF_HOME", hub_cache.root), ("HF_HUB_CACHE", hub_cache.hub), ("HF_HUB_OFFLINE", "1")):
        mp.setenv(name, str(value))
    mp.setattr(hf_constants, "HF_HUB_CACHE", str(hub_cache.hub))
    mp.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    from fra_core.models import load_model

    try:
        yield load_model("gpt2-small", "cpu")
    finally:
        mp.undo()


def test_cache_has_the_hub_layout(offline_hub):
    from huggingface_hub import scan_cache_dir, try_to_load_from_cache

    info = scan_cache_dir(offline_hub.hub)
    assert not info.warnings, info.warnings
    repos = {r.repo_id: r for r in info.repos}
    assert set(repos) == {MODEL_REPO, SAE_REPO}
    for repo in repos.values():
        (rev,) = repo.revisions
        assert rev.refs == frozenset({"main"})
    assert {"config.json", "model.safetensors", "tokenizer.json", "vocab.json", "merges.txt"} <= {
        f.file_name for f in next(iter(repos[MODEL_REPO].revisions)).files}
    name = offline_hub.sae_files[0]
    assert try_to_load_from_cache(SAE_REPO, name.split(".pt")[0] + "_cfg.json").endswith("_cfg.json")
    assert kk_files(kk_file_names()) == kk_files(kk_file_names())  # deterministic bytes


def test_load_model_gpt2_small_offline(gpt2):
    cfg = gpt2.cfg
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.n_ctx, cfg.d_vocab) == (N_LAYER, D_MODEL, 4, 128, 50257)
    # GPT-2's real BPE: BOS, "The", " quick", " brown", " fox"
    assert gpt2.to_tokens("The quick brown fox")[0].tolist() == [50256, 464, 2068, 7586, 21831]


def test_missing_cache_fails_fast_with_instructions(tmp_path, monkeypatch):
    import huggingface_hub.constants as hf_constants

    from fra_core.models import ModelLoadError, load_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(ModelLoadError, match="not in the Hugging Face cache"):
        load_model("gpt2-small", "cpu")


def test_partial_cache_fails_fast_naming_it(offline_hub, tmp_path, monkeypatch):
    import shutil

    import huggingface_hub.constants as hf_constants

    from fra_core.models import ModelLoadError, load_model
    from fra_core.sae.registry import snapshot_dir

    hub = tmp_path / "hub"
    shutil.copytree(offline_hub.hub, hub, symlinks=True)
    (snapshot_dir(MODEL_REPO, hub) / "model.safetensors").unlink()  # config cached, weights not
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(hub))
    with pytest.raises(ModelLoadError, match="only partly in the Hugging Face cache"):
        load_model("gpt2-small", "cpu")


@pytest.mark.parametrize("layer", [0, N_LAYER - 1])
def test_release_and_ckkissane_loaders_agree(offline_hub, gpt2, layer):
    from fra_core.sae import check_sae_fits_model, load_sae

    by_release = load_sae(offline_hub.release_ref(layer), "cpu")
    by_file = load_sae(offline_hub.ckkissane_ref(layer), "cpu")
    for sae in (by_release, by_file):
        assert (sae.cfg.d_in, sae.cfg.d_sae) == (D_MODEL, D_SAE)
        assert check_sae_fits_model(sae, gpt2) == f"blocks.{layer}.attn.hook_z"
    a, b = by_release.state_dict(), by_file.state_dict()
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    hook = f"blocks.{layer}.attn.hook_z"
    with torch.no_grad():
        _, cache = gpt2.run_with_cache(gpt2.to_tokens(OWT_TEXTS[0]), names_filter=[hook])
        z = cache[hook]
        enc_a, enc_b = by_release.encode(z), by_file.encode(z)
    assert torch.equal(enc_a, enc_b) and (enc_a > 0).any()
    # the ckkissane encoder: relu((z_flat − b_dec) W_enc + b_enc)
    flat = z.flatten(-2)
    expected = torch.relu((flat - a["b_dec"]) @ a["W_enc"] + a["b_enc"])
    torch.testing.assert_close(enc_a, expected, rtol=1e-5, atol=1e-5)


def test_release_missing_sae_is_clear(offline_hub):
    from fra_core.sae import SAELoadError, load_sae

    # listed in the registry, not cached: says so at once (offline), naming the SAE
    with pytest.raises(SAELoadError, match=f"blocks.{N_LAYER}.hook_z is not in the Hugging Face cache"):
        load_sae(f"release:gpt2-small-hook-z-kk/blocks.{N_LAYER}.hook_z", "cpu")
    with pytest.raises(SAELoadError, match="not found"):  # not in the registry at all
        load_sae("release:gpt2-small-hook-z-kk/blocks.0.hook_q", "cpu")


def test_open_texts_saved_openwebtext(offline_hub, workspace):
    import shutil

    from fra_core.datasets import DatasetError, open_texts

    src = open_texts(f"disk:{offline_hub.owt_dataset}")
    assert src.kind == "disk" and src.size == len(OWT_TEXTS)
    assert list(src.texts()) == list(OWT_TEXTS)
    shutil.copytree(offline_hub.owt_dataset, workspace.root / "datasets" / "owt")  # relative: workspace datasets/
    assert list(open_texts("disk:owt", workspace=workspace).texts(2)) == list(OWT_TEXTS[:2])
    with pytest.raises(DatasetError, match="HF_HUB_OFFLINE is set"):
        open_texts("hf:Elriggs/openwebtext-100k")


@pytest.mark.parametrize("layer", [1, N_LAYER - 1])
def test_single_text_fra_with_upstream_hook_z_is_exact(offline_hub, gpt2, layer):
    from fra_core.fra import FRAOptions, compute_fra
    from fra_core.sae import load_sae

    saes = [load_sae(offline_hub.release_ref(l), "cpu") for l in range(layer)]
    tokens = gpt2.to_tokens(OWT_TEXTS[1])
    result = compute_fra(gpt2, tokens, layer, [0], saes, saes, FRAOptions(k_active=D_SAE, top_m=8))
    assert result.completeness_error() <= 1e-4
    assert result.n_entries > 0


def test_accumulation_job_loads_everything_by_reference(offline_hub, workspace):
    import shutil

    from fra_core import contracts
    from fra_core.accumulate import AccumulateFRAConfig
    from fra_core.accumulate.run import run_accumulate
    from fra_core.jobs import Progress

    shutil.copytree(offline_hub.owt_dataset, workspace.root / "datasets" / "owt")
    refs = (offline_hub.release_ref(0), offline_hub.ckkissane_ref(1))  # both kinds of ref in one side
    cfg = AccumulateFRAConfig(model="gpt2-small", q_saes=refs, layer=2, heads=(0, 3), dataset="disk:owt",
                              n_samples=5, batch_size=2, shard_size=3, context_length=32, top_m=4,
                              k_active=D_SAE, examples_per_pair=1, device="cpu")
    job = workspace.jobs / "gpt2-job"
    job.mkdir(parents=True)
    result = run_accumulate(cfg, Progress(job))
    assert result["samples"] == 5 and result["shards"] == 2 and result["dataset_texts"] == 5
    shards = contracts.complete_shards(job)
    assert len(shards) == 2
    from fra_core.accumulate.coact import shard_pairs

    pairs = [shard_pairs(job, m["shard"], 0)[0].to_pandas() for m in shards]  # coact expanded per head
    assert sum(len(p) for p in pairs) > 0
    assert {int(h) for p in pairs for h in p["head"].unique()} <= {0, 3}
