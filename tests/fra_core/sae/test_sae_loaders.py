"""SAE loaders: ckkissane hook_z format (vs SAELens's own connor_rob_hook_z conversion), releases offline,
SAELens folders, and clear errors for corrupt files / mismatched models."""

from __future__ import annotations

import json
import time

import pytest
import torch

# the name of ckkissane's layer-0 file in SAELens's release table `gpt2-small-hook-z-kk`
L0_FILE = "gpt2-small_L0_Hcat_z_lr1.20e-03_l11.80e+00_ds24576_bs4096_dc1.00e-06_rsanthropic_rie25000_nr4_v9.pt"


def write_ckkissane(folder, name=L0_FILE, d_in=32, d_sae=48, layer=0, seed=0):
    """A small SAE in exactly ckkissane's format: <name>.pt state dict + <name>_cfg.json."""
    g = torch.Generator().manual_seed(seed)
    W_dec = torch.randn(d_sae, d_in, generator=g)
    state = {"W_enc": torch.randn(d_in, d_sae, generator=g) * 0.3,
             "W_dec": W_dec / W_dec.norm(dim=-1, keepdim=True),
             "b_enc": torch.randn(d_sae, generator=g) * 0.1, "b_dec": torch.randn(d_in, generator=g) * 0.1}
    pt = folder / name
    torch.save(state, pt)
    cfg = {"seed": 49, "batch_size": 4096, "buffer_mult": 384, "lr": 0.0012, "num_tokens": 2000000000,
           "l1_coeff": 1.8, "beta1": 0.9, "beta2": 0.99, "dict_mult": d_sae // d_in, "seq_len": 128,
           "enc_dtype": "fp32", "model_name": "gpt2-small", "site": "z", "layer": layer, "device": "cuda",
           "reinit": "reinit", "head": "cat", "concat_heads": True, "resample_scheme": "anthropic",
           "anthropic_neuron_resample_scale": 0.2, "dead_direction_cutoff": 1e-06, "re_init_every": 25000,
           "anthropic_resample_last": 12500, "model_batch_size": 128, "log_every": 50, "save_every": 50000,
           "model_batch_size_per_gpu": 128, "act_name": f"blocks.{layer}.attn.hook_z", "act_size": d_in,
           "dict_size": d_sae, "name": "gpt2-small_0_24576_z"}
    (folder / (name[:-3] + "_cfg.json")).write_text(json.dumps(cfg))
    return pt, state


def test_ckkissane_matches_saelens_conversion(tmp_path, monkeypatch, tiny_model):
    import sae_lens.loading.pretrained_sae_loaders as loaders
    from sae_lens import SAE

    from fra_core.sae import check_sae_fits_model, load_sae, sae_input

    pt, state = write_ckkissane(tmp_path)

    def local_download(repo_id, filename, **_):  # serve SAELens's HF download from our folder
        assert repo_id == "ckkissane/attn-saes-gpt2-small-all-layers"
        return str(tmp_path / filename)

    monkeypatch.setattr(loaders, "hf_hub_download", local_download)
    theirs = SAE.from_pretrained("gpt2-small-hook-z-kk", "blocks.0.hook_z", device="cpu")
    ours = load_sae(f"ckkissane:{pt}", device="cpu")
    assert ours.cfg.metadata.hook_name == "blocks.0.attn.hook_z" and ours.cfg.reshape_activations == "hook_z"
    assert check_sae_fits_model(ours, tiny_model) == "blocks.0.attn.hook_z"

    tokens = torch.randint(4, 50, (2, 10), generator=torch.Generator().manual_seed(3))
    _, cache = tiny_model.run_with_cache(tokens, names_filter=["blocks.0.attn.hook_z"])
    z = cache["blocks.0.attn.hook_z"]                                 # [batch, pos, head_index, d_head]
    flat = z.reshape(2, 10, -1)                                       # head-major flattening
    manual = torch.relu((flat - state["b_dec"]) @ state["W_enc"] + state["b_enc"])
    with torch.no_grad():
        a_ours, a_theirs = ours.encode(sae_input(ours, z)), theirs.encode(z)
    torch.testing.assert_close(a_ours, a_theirs, rtol=0, atol=0)
    torch.testing.assert_close(a_ours, manual, rtol=1e-5, atol=1e-6)
    assert (a_ours > 0).any()


def test_ckkissane_bad_files(tmp_path):
    from fra_core.sae import SAELoadError, load_sae

    pt, _ = write_ckkissane(tmp_path, name="x.pt")
    pt.write_bytes(pt.read_bytes()[:100])
    with pytest.raises(SAELoadError, match=r"x\.pt is not a readable torch state dict"):
        load_sae(f"ckkissane:{pt}")
    pt2, state = write_ckkissane(tmp_path, name="y.pt")
    torch.save({**state, "W_enc": state["W_enc"][:, :10]}, pt2)
    with pytest.raises(SAELoadError, match=r"y\.pt: W_enc has shape \[32, 10\].*\[32, 48\]"):
        load_sae(f"ckkissane:{pt2}")
    with pytest.raises(SAELoadError, match=r"z_cfg\.json"):
        torch.save(state, tmp_path / "z.pt")
        load_sae(f"ckkissane:{tmp_path / 'z.pt'}")


def test_release_fails_fast_offline(tmp_path, monkeypatch):
    from fra_core.sae import SAELoadError, load_sae

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    import huggingface_hub.constants as c
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    t0 = time.time()
    with pytest.raises(SAELoadError, match="not in the Hugging Face cache.*offline"):
        load_sae("release:gpt2-small-hook-z-kk/blocks.0.hook_z")
    assert time.time() - t0 < 10
    with pytest.raises(SAELoadError, match="not found"):
        load_sae("release:gpt2-small-hook-z-kk/blocks.99.hook_z")
    with pytest.raises(SAELoadError, match="release:<release>/<sae_id>"):
        load_sae("release:nothing")


def _save_small_sae(folder, d_in=32, d_sae=48, hook="blocks.0.hook_resid_pre"):
    from sae_lens import StandardSAE, StandardSAEConfig

    cfg = StandardSAEConfig(d_in=d_in, d_sae=d_sae)
    cfg.metadata.hook_name = hook
    sae = StandardSAE(cfg)
    sae.save_model(folder)
    return sae


def test_folder_loader_errors(workspace, tiny_model):
    from fra_core.models.tiny import make_tiny_model
    from fra_core.sae import SAECompatibilityError, SAELoadError, check_sae_fits_model, list_saes, load_sae

    good = workspace.saes / "good"
    _save_small_sae(good)
    assert check_sae_fits_model(load_sae("good"), tiny_model) == "blocks.0.hook_resid_pre"
    assert load_sae(str(good)).cfg.d_sae == 48                       # a plain SAELens folder path

    with pytest.raises(SAECompatibilityError, match=r"d_in=32 does not match hook 'blocks.0.hook_resid_pre'.*\[16\]"):
        check_sae_fits_model(load_sae("good"), make_tiny_model(d_model=16, n_heads=2))
    wrong_hook = workspace.saes / "wrong-hook"
    _save_small_sae(wrong_hook, hook="blocks.5.hook_resid_pre")
    with pytest.raises(SAECompatibilityError, match=r"'blocks.5.hook_resid_pre' does not exist"):
        check_sae_fits_model(load_sae("wrong-hook"), tiny_model)

    corrupt = workspace.saes / "corrupt"
    _save_small_sae(corrupt)
    weights = corrupt / "sae_weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    with pytest.raises(SAELoadError, match=r"corrupt/sae_weights\.safetensors is not a readable safetensors"):
        load_sae("corrupt")
    badcfg = workspace.saes / "badcfg"
    _save_small_sae(badcfg)
    (badcfg / "cfg.json").write_text(json.dumps({**json.loads((badcfg / "cfg.json").read_text()), "d_in": 30}))
    with pytest.raises(SAELoadError, match=r"W_enc has shape \[32, 48\], the config \(d_in=30"):
        load_sae("badcfg")
    with pytest.raises(SAELoadError, match="no SAE 'missing'"):
        load_sae("missing")
    (workspace.saes / "broken").mkdir()
    (workspace.saes / "broken" / "cfg.json").write_text("{")
    rows = {e.name: e for e in list_saes(workspace)}
    assert rows["good"].d_sae == 48 and rows["broken"].error and "good" in rows
