"""SAELens registry SAEs found in the local Hugging Face cache (read from disk only), and importing one into
the workspace as a SAELens folder; on the offline cache of tests/fixtures/hf_cache.py."""

from __future__ import annotations

import shutil

import pytest
import torch

from tests.fixtures.hf_cache import D_MODEL, D_SAE, N_LAYER, SAE_RELEASE, SAE_REPO


def test_lists_the_cached_kk_saes_with_their_shapes(offline_hub):
    from fra_core.sae.registry import cached_registry_saes

    found = cached_registry_saes("gpt2-small")
    assert [e.ref for e in found] == [offline_hub.release_ref(l) for l in range(N_LAYER)]
    assert {(e.repo_id, e.model, e.d_in, e.d_sae) for e in found} == {(SAE_REPO, "gpt2-small", D_MODEL, D_SAE)}
    assert [e.hook_name for e in found] == [f"blocks.{l}.attn.hook_z" for l in range(N_LAYER)]
    assert cached_registry_saes("pythia-70m-deduped") == []
    assert cached_registry_saes(None) == found  # nothing else is cached


def test_partly_cached_or_missing_caches_list_nothing_false(offline_hub, tmp_path):
    from fra_core.sae.registry import cached_registry_saes, snapshot_dir

    hub = tmp_path / "hub"
    shutil.copytree(offline_hub.hub, hub, symlinks=True)
    snap = snapshot_dir(SAE_REPO, hub)
    (snap / offline_hub.sae_files[3]).unlink()  # the L3 weights are gone: L3 is not offered
    (snap / (offline_hub.sae_files[4].split(".pt")[0] + "_cfg.json")).write_text("{not json")
    assert [e.sae_id for e in cached_registry_saes("gpt2-small", hub)] == ["blocks.0.hook_z", "blocks.1.hook_z",
                                                                           "blocks.2.hook_z", "blocks.5.hook_z"]
    assert cached_registry_saes("gpt2-small", tmp_path / "nowhere") == []


def test_import_into_the_workspace_round_trips(offline_hub, workspace):
    from sae_lens import SAE

    from fra_core.sae import SAELoadError, list_saes, load_sae
    from fra_core.sae.registry import import_sae

    ref = offline_hub.release_ref(2)
    folder = import_sae(ref, "kk-l2", workspace, model="gpt2-small")
    imported, original = SAE.load_from_disk(str(folder)), load_sae(ref, "cpu")
    assert imported.cfg.metadata.hook_name == "blocks.2.attn.hook_z" and imported.cfg.reshape_activations == "hook_z"
    a, b = imported.state_dict(), original.state_dict()
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    z = torch.randn(1, 3, 4, D_MODEL // 4)
    assert torch.equal(imported.encode(z), original.encode(z))
    [entry] = list_saes(workspace)
    assert (entry.name, entry.model, entry.d_in, entry.meta["origin"]) == ("kk-l2", "gpt2-small", D_MODEL, ref)
    assert load_sae("kk-l2", "cpu", workspace).cfg.d_sae == D_SAE
    with pytest.raises(SAELoadError, match="already exists"):
        import_sae(ref, "kk-l2", workspace)
    with pytest.raises(SAELoadError, match="must be 1-100 letters"):
        import_sae(ref, "../kk", workspace)
    with pytest.raises(SAELoadError, match=f"{SAE_RELEASE}"):
        import_sae(f"release:{SAE_RELEASE}/blocks.9.hook_z", "kk-l9", workspace)
    assert not (workspace.saes / "kk-l9").exists() and not list(workspace.saes.glob(".*"))
