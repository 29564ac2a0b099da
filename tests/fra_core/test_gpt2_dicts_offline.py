"""Every GPT-2 Small dictionary kind of SAELens's registry, offline, in its exact upstream file layout and cfg
format (tests/fixtures/hf_cache.py), loaded through the real loaders (`release:` refs) and used as FRA sides:
res-jb (resid_pre), attn-out-v5-32k/-128k and mlp-out-v5-32k (TopK + layer_norm), mlp-tm (a folded
norm_scaling_factor), a transcoder release and a SAELens-folder SkipTranscoder, mixed with the kk hook_z SAEs.
Σ(all FRA terms) == hook_attn_scores to ≤ 1e-5 on a float64 copy of the tiny GPT-2, on both sides."""

from __future__ import annotations

import copy

import pytest
import torch

from tests.fixtures.hf_cache import D_MODEL, D_SAE, D_TC, D_V5, OWT_TEXTS, TC_RELEASE, V5_K

pytestmark = pytest.mark.usefixtures("one_torch_thread")
F64 = torch.float64


@pytest.fixture(scope="module")
def gpt2_64(dict_hub_cache):
    """The fixture's gpt2-small (through load_model, offline), as a float64 copy."""
    import huggingface_hub.constants as hf_constants

    mp = pytest.MonkeyPatch()
    for name, value in (("HF_HOME", dict_hub_cache.root), ("HF_HUB_CACHE", dict_hub_cache.hub),
                        ("HF_HUB_OFFLINE", "1")):
        mp.setenv(name, str(value))
    mp.setattr(hf_constants, "HF_HUB_CACHE", str(dict_hub_cache.hub))
    mp.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    from fra_core.models import load_model

    try:
        yield copy.deepcopy(load_model("gpt2-small", "cpu")).to(F64)
    finally:
        mp.undo()


def _load(hub, release: str, layer: int):
    from fra_core.sae import load_sae

    return load_sae(hub.release_ref(layer, release), "cpu").to(F64)


def _raw(hub, release: str, layer: int) -> dict:
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory
    from safetensors.torch import load_file

    lookup = get_pretrained_saes_directory()[release]
    path = lookup.saes_map[hub.release_ref(layer, release).split("/", 1)[1]]
    return load_file(str(hub.snapshot(lookup.repo_id) / path / "sae_weights.safetensors"))


def test_releases_load_in_their_formats(offline_dict_hub, gpt2_64):
    from sae_lens import Transcoder

    from fra_core.sae import check_sae_fits_model

    expect = {"gpt2-small-res-jb": ("standard", "blocks.1.hook_resid_pre", "none", D_SAE),
              "gpt2-small-attn-out-v5-32k": ("topk", "blocks.1.hook_attn_out", "layer_norm", D_V5),
              "gpt2-small-attn-out-v5-128k": ("topk", "blocks.1.hook_attn_out", "layer_norm", D_V5),
              "gpt2-small-mlp-out-v5-32k": ("topk", "blocks.1.hook_mlp_out", "layer_norm", D_V5),
              "gpt2-small-mlp-tm": ("standard", "blocks.1.hook_mlp_out", "none", D_SAE)}  # factor folded on load
    for release, (arch, hook, norm, d_sae) in expect.items():
        sae = _load(offline_dict_hub, release, 1)
        assert (sae.cfg.architecture(), sae.cfg.metadata.hook_name, sae.cfg.normalize_activations,
                sae.cfg.d_in, sae.cfg.d_sae) == (arch, hook, norm, D_MODEL, d_sae), release
        assert check_sae_fits_model(sae, gpt2_64) == hook
        if arch == "topk":
            assert sae.cfg.k == V5_K
    tc = _load(offline_dict_hub, TC_RELEASE, 1)
    assert isinstance(tc, Transcoder) and (tc.cfg.d_in, tc.cfg.d_out, tc.cfg.d_sae) == (D_MODEL, D_MODEL, D_TC)
    assert (tc.cfg.metadata.hook_name, tc.cfg.metadata.hook_name_out) == ("blocks.1.mlp.hook_in", "blocks.1.hook_mlp_out")


def test_mlp_tm_norm_scaling_factor_is_folded_exactly(offline_dict_hub, gpt2_64):
    """SAELens folds the registry's norm_scaling_factor s: W_enc·s, W_dec/s, b_dec/s; the SAE then encodes raw
    mlp_out exactly as the trained SAE encodes s·mlp_out, and reconstructs in raw units."""
    from sae_lens.loading.pretrained_saes_directory import get_norm_scaling_factor

    s = get_norm_scaling_factor("gpt2-small-mlp-tm", "blocks.1.hook_mlp_out")
    assert s is not None and abs(s - 2.3693984005104283) < 1e-12
    sae, raw = _load(offline_dict_hub, "gpt2-small-mlp-tm", 1), {k: v.to(F64) for k, v in
                                                            _raw(offline_dict_hub, "gpt2-small-mlp-tm", 1).items()}
    torch.testing.assert_close(sae.W_dec.detach(), raw["W_dec"] / s)
    with torch.no_grad():
        _, cache = gpt2_64.run_with_cache(gpt2_64.to_tokens(OWT_TEXTS[0]))
        x = cache["blocks.1.hook_mlp_out"]
        trained = torch.relu((s * x) @ raw["W_enc"] + raw["b_enc"])  # apply_b_dec_to_input: False
        torch.testing.assert_close(sae.encode(x), trained)
        assert (trained > 0).any()


def _mix(hub):
    """The issue's mix for layer 2: hook_z L0 (kk) + mlp_out L0 (mlp-tm) + transcoder L1 + attn_out L1 (v5)."""
    return [_load(hub, "gpt2-small-hook-z-kk", 0), _load(hub, "gpt2-small-mlp-tm", 0), _load(hub, TC_RELEASE, 1),
            _load(hub, "gpt2-small-attn-out-v5-32k", 1)]


def _exact(model, q, k, layer, text=1):
    from fra_core.fra import FRAOptions, compute_fra

    tokens = model.to_tokens(OWT_TEXTS[text])
    result = compute_fra(model, tokens, layer, [0, 3], q, k, FRAOptions(k_active=4096, top_m=8))
    assert result.completeness_error() <= 1e-5
    assert not result.truncated and result.n_entries > 0
    for side in (result.q_side, result.k_side):  # every source has active features: no vacuous sides
        src = torch.searchsorted(torch.tensor(side.offsets), side.ids[side.ids < side.offsets[-1]], right=True) - 1
        assert set(src.tolist()) == set(range(len(side.offsets) - 1)), side.source_names
    return result


def test_mixed_upstream_dictionaries_are_exact(offline_dict_hub, gpt2_64):
    q = _mix(offline_dict_hub)
    k = [_load(offline_dict_hub, "gpt2-small-mlp-out-v5-32k", 0), _load(offline_dict_hub, "gpt2-small-attn-out-v5-128k", 0),
         _load(offline_dict_hub, "gpt2-small-mlp-out-v5-32k", 1)]
    result = _exact(gpt2_64, q, k, 2)
    assert {"sae_error.l0", "sae_error.mlp_out.l0", "sae_error.mlp_out.l1", "ln_mean.attn_out.l1"} <= set(
        result.q_node_names)
    assert "attn_out.l1" in result.k_node_names and "ln_mean.mlp_out.l1" in result.k_node_names
    from fra_core.fra.share import feature_share

    share = feature_share(result)
    assert 0 < share["text"] <= 1 and share["cells"].shape == result.scores.shape[1:]


def test_res_jb_resid_pre_side_is_exact(offline_dict_hub, gpt2_64):
    sae = _load(offline_dict_hub, "gpt2-small-res-jb", 3)
    assert sae.cfg.metadata.model_from_pretrained_kwargs == {"center_writing_weights": True}
    _exact(gpt2_64, sae, _mix(offline_dict_hub), 3)


def test_skip_transcoder_in_saelens_folder_format(offline_dict_hub, gpt2_64, workspace):
    """A SkipTranscoder saved by SAELens (cfg.json + sae_weights.safetensors with W_skip), loaded by name."""
    from sae_lens import SkipTranscoder, SkipTranscoderConfig
    from sae_lens.saes.sae import SAEMetadata

    from fra_core.sae import load_sae

    meta = SAEMetadata(hook_name="blocks.0.ln2.hook_normalized", hook_name_out="blocks.0.hook_mlp_out",
                       model_name="gpt2-small")
    tc = SkipTranscoder(SkipTranscoderConfig(d_in=D_MODEL, d_out=D_MODEL, d_sae=D_TC, apply_b_dec_to_input=False,
                                             metadata=meta))
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in tc.named_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (0.1 if name != "b_enc" else 0.05) - (0.1 if name == "b_enc" else 0))
    tc.save_model(str(workspace.saes / "skip-l0"))
    loaded = load_sae("skip-l0", "cpu", workspace=workspace).to(F64)
    assert isinstance(loaded, SkipTranscoder) and torch.equal(loaded.W_skip.float(), tc.W_skip.detach())
    result = _exact(gpt2_64, [loaded, _load(offline_dict_hub, TC_RELEASE, 1)], [loaded], 2)
    assert "skip.mlp_out.l0" in result.q_node_names


def test_registry_lists_the_new_releases(offline_dict_hub):
    from fra_core.sae.registry import cached_registry_saes

    found = {(e.release, e.hook_name) for e in cached_registry_saes("gpt2-small")}
    for release, hook in (("gpt2-small-res-jb", "blocks.0.hook_resid_pre"),
                          ("gpt2-small-attn-out-v5-32k", "blocks.0.hook_attn_out"),
                          ("gpt2-small-attn-out-v5-128k", "blocks.5.hook_attn_out"),
                          ("gpt2-small-mlp-out-v5-32k", "blocks.0.hook_mlp_out"),
                          ("gpt2-small-mlp-tm", "blocks.0.hook_mlp_out"), ("gpt2-small-hook-z-kk", "blocks.0.attn.hook_z")):
        assert (release, hook) in found, (release, hook)


def test_pickers_offer_each_kind_and_the_mixes(offline_dict_hub, gpt2_64, workspace):
    from ui.pickers import accumulation_saes, expand_groups, side_options

    opts = side_options(gpt2_64, 2, "gpt2-small")
    kk, tm = "gpt2-small-hook-z-kk L0–1", "gpt2-small-mlp-tm L0–1"
    for label in (f"upstream hook_z: {kk}", "upstream attn_out: gpt2-small-attn-out-v5-32k L0–1",
                  "upstream mlp_out: gpt2-small-mlp-out-v5-32k L0–1", f"upstream mlp_out: {tm}",
                  f"upstream hook_z + mlp_out: {kk} + {tm}",
                  "gpt2-small-res-jb/blocks.2.hook_resid_pre  (blocks.2.hook_resid_pre)"):
        assert label in opts, (label, list(opts))
    both = opts[f"upstream hook_z + mlp_out: {kk} + {tm}"]
    assert both == tuple(offline_dict_hub.release_ref(l, r) for r in ("gpt2-small-hook-z-kk", "gpt2-small-mlp-tm")
                         for l in (0, 1))
    singles, groups = accumulation_saes("gpt2-small")
    label = "gpt2-small-mlp-out-v5-32k: mlp_out of every layer < the run's layer"
    assert label in groups and offline_dict_hub.release_ref(0, "gpt2-small-res-jb") in singles
    assert expand_groups([label], groups, 2) == [offline_dict_hub.release_ref(l, "gpt2-small-mlp-out-v5-32k")
                                                 for l in (0, 1)]


def test_import_keeps_the_folded_scale(offline_dict_hub, workspace):
    from fra_core.sae import load_sae
    from fra_core.sae.registry import import_sae

    ref = offline_dict_hub.release_ref(2, "gpt2-small-mlp-tm")
    import_sae(ref, "tm-l2", workspace=workspace, model="gpt2-small")
    a, b = load_sae(ref, "cpu"), load_sae("tm-l2", "cpu", workspace=workspace)
    assert b.cfg.normalize_activations == "none"
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())


@pytest.mark.parametrize("statistics", ["all_pairs", "top_m"])
def test_accumulation_job_runs_the_mix_by_reference(offline_dict_hub, workspace, statistics):
    import shutil

    from fra_core import contracts
    from fra_core.accumulate import AccumulateFRAConfig
    from fra_core.accumulate.run import run_accumulate
    from fra_core.jobs import Progress

    shutil.copytree(offline_dict_hub.owt_dataset, workspace.root / "datasets" / "owt")
    hub = offline_dict_hub
    q = (hub.release_ref(0), hub.release_ref(0, "gpt2-small-mlp-tm"), hub.release_ref(1, TC_RELEASE),
         hub.release_ref(1, "gpt2-small-attn-out-v5-32k"))
    cfg = AccumulateFRAConfig(model="gpt2-small", q_saes=q, k_saes=(hub.release_ref(2, "gpt2-small-res-jb"),),
                              layer=2, heads=(0,), dataset="disk:owt", n_samples=3, batch_size=3, shard_size=3,
                              context_length=24, top_m=4, examples_per_pair=1, device="cpu", statistics=statistics)
    job = workspace.jobs / "mix-job"
    job.mkdir(parents=True)
    assert run_accumulate(cfg, Progress(job))["samples"] == 3
    info = contracts.read_run_info(job)
    assert [s["hook"] for s in info["sources"]][:4] == ["blocks.0.attn.hook_z", "blocks.0.hook_mlp_out",
                                                        "blocks.1.mlp.hook_in", "blocks.1.hook_attn_out"]
    assert max(info["completeness"]["2"].values()) <= 1e-4
    assert 0 < info["feature_share"]["2"]["0"] < 1
    (part,) = info["feature_share_parts"].values()  # one shard: its sums give the run's share
    f, n = part["2"]["0"]
    assert info["feature_share"]["2"]["0"] == pytest.approx(f / (f + n))
