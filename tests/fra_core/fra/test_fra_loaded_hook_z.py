"""A hook_z SAE straight from disk (SAELens has not yet seen a 4-D input, so it has no d_head) works."""

from fra_core.fra import compute_fra
from fra_core.models.demo import load_demo_model
from fra_core.sae import load_sae
from fra_core.sae.demo import ensure_demo_saes


def test_freshly_loaded_hook_z_sae_is_exact(workspace):
    ensure_demo_saes(workspace, train_if_missing=False)
    model = load_demo_model("cpu")
    sae = load_sae("demo-l0-hook-z", workspace=workspace)
    tokens = model.to_tokens("the cat sees the dog . the cat sees the")
    result = compute_fra(model, tokens, 1, [0, 2], [sae])
    assert result.completeness_error() < 1e-4
