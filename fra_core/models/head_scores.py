"""Per-head attention scores on repeated random sequences: previous-token and induction.

On a batch of ``[BOS, r_1..r_N, r_1..r_N]`` sequences:

- previous-token score of a head = mean attention from position i to i−1 (i ≥ 2);
- induction score = mean attention from position i in the second copy to the position right after the
  previous occurrence of the current token, i.e. i − N + 1 (the standard TransformerLens/Anthropic
  definition).
"""

from __future__ import annotations

import torch
from transformer_lens import HookedTransformer


def repeated_random_tokens(model: HookedTransformer, n_seq: int = 16, half_len: int | None = None,
                           seed: int = 0, exclude_ids: tuple[int, ...] = ()) -> torch.Tensor:
    """[batch, 1 + 2*half_len] tokens: BOS then a random span twice. Special tokens are never drawn."""
    half_len = half_len or (model.cfg.n_ctx - 1) // 2
    if 1 + 2 * half_len > model.cfg.n_ctx:
        raise ValueError(f"half_len={half_len} needs {1 + 2 * half_len} positions, model n_ctx={model.cfg.n_ctx}")
    special = set(exclude_ids)
    if model.tokenizer is not None:
        special |= set(model.tokenizer.all_special_ids)
    allowed = torch.tensor([t for t in range(model.cfg.d_vocab) if t not in special])
    gen = torch.Generator().manual_seed(seed)
    span = allowed[torch.randint(len(allowed), (n_seq, half_len), generator=gen)]
    bos_id = model.tokenizer.bos_token_id if model.tokenizer is not None else 0
    bos = torch.full((n_seq, 1), bos_id if bos_id is not None else 0)
    return torch.cat([bos, span, span], dim=1)


@torch.no_grad()
def head_scores(model: HookedTransformer, n_seq: int = 16, half_len: int | None = None,
                seed: int = 0) -> dict[str, torch.Tensor]:
    """Returns {"previous_token": [n_layers, n_heads], "induction": [n_layers, n_heads]}."""
    tokens = repeated_random_tokens(model, n_seq, half_len, seed).to(model.cfg.device)
    half = (tokens.shape[1] - 1) // 2
    names = [f"blocks.{layer}.attn.hook_pattern" for layer in range(model.cfg.n_layers)]
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
    prev, induction = [], []
    for name in names:
        pattern = cache[name]  # [batch, head_index, query_pos, key_pos]
        # previous-token: diagonal offset -1, skipping query position 1 (whose previous token is BOS)
        prev.append(pattern.diagonal(offset=-1, dim1=-2, dim2=-1)[..., 1:].mean(dim=(0, -1)))
        # induction: query q = k + half - 1 attends to key k; the diagonal's entry k is that pair, and
        # q lies in the second copy (q >= half + 1) exactly when k >= 2
        induction.append(pattern.diagonal(offset=-(half - 1), dim1=-2, dim2=-1)[..., 2:].mean(dim=(0, -1)))
    return {"previous_token": torch.stack(prev).cpu(), "induction": torch.stack(induction).cpu()}
