"""Registry SAEs match a model by its TransformerLens name or any alias, not only by the exact string the
registry uses (its gpt2 SAEs say "gpt2-small"; TransformerLens's official name is "gpt2")."""

from __future__ import annotations

from tests.fixtures.hf_cache import N_LAYER


def test_same_model_through_transformer_lens_aliases():
    from fra_core.sae.registry import same_model

    assert same_model("gpt2", "gpt2-small") and same_model("gpt2-small", "gpt2") and same_model("GPT2-Small", "gpt2")
    assert same_model("pythia-70m-deduped", "EleutherAI/pythia-70m-deduped")
    assert not same_model("gpt2", "gpt2-medium") and not same_model("gpt2-small", "pythia-70m-deduped")
    assert same_model("my-model", "my-model") and not same_model("my-model", "My-Model2")  # unknown: itself only


def test_registry_saes_listed_for_every_name_of_the_model(offline_hub):
    from fra_core.sae.registry import cached_registry_saes

    expected = [offline_hub.release_ref(layer) for layer in range(N_LAYER)]
    for name in ("gpt2-small", "gpt2", "GPT2"):
        assert [e.ref for e in cached_registry_saes(name)] == expected, name
    assert cached_registry_saes("gpt2-medium") == [] and cached_registry_saes("distilgpt2") == []
