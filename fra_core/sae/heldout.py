"""An SAE's quality figures on held-out tokens, after training: L0, explained variance, MSE and dead
features (never active) over `eval_tokens` tokens (100 k by default) of texts the training never read —
the dataset's texts after its first `n_texts` — or over as many as the dataset has, said so in
`eval_source`. Dead features need many tokens: over the ~1 k tokens of the last training batches,
rare-but-alive features look dead.
"""

from __future__ import annotations

from typing import Any

import torch

DEAD_WARNING_FRACTION = 0.30


def heldout_texts(spec: str, n_train: int, n_tokens: int, context_size: int, seed: int, workspace):
    """Texts after the first `n_train` of the dataset, enough for about `n_tokens` tokens."""
    from fra_core.datasets import open_texts

    spec = spec[len("file:"):] if spec.startswith("file:") else spec
    want = n_train + max(1, -(-n_tokens // max(context_size // 2, 1)))  # short texts: twice as many
    texts = list(open_texts(spec, seed=seed, workspace=workspace).texts(want))[n_train:]
    return [t for t in texts if t.strip()]


@torch.no_grad()
def heldout_activations(model, sae, texts: list[str], context_size: int, max_tokens: int, batch_size: int = 32):
    """[n, d_in] activation batches at the SAE's hook (padding dropped), up to `max_tokens` tokens."""
    from sae_lens.util import extract_stop_at_layer_from_tlens_hook_name

    hook = sae.cfg.metadata.hook_name
    stop = extract_stop_at_layer_from_tlens_hook_name(hook)
    seen = 0
    for start in range(0, len(texts), batch_size):
        rows = [model.to_tokens(t, truncate=True)[0, :context_size] for t in texts[start:start + batch_size]]
        width = max(len(r) for r in rows)
        tokens = torch.zeros((len(rows), width), dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.bool)
        for i, r in enumerate(rows):
            tokens[i, :len(r)], mask[i, :len(r)] = r.cpu(), True
        _, cache = model.run_with_cache(tokens.to(model.cfg.device), names_filter=[hook], stop_at_layer=stop)
        act = cache[hook]
        x = act.reshape(*act.shape[:2], -1)[mask.to(act.device)].to(sae.W_dec.dtype)
        x = x[: max_tokens - seen]
        seen += x.shape[0]
        yield x
        if seen >= max_tokens:
            return


def heldout_metrics(sae, model, cfg, workspace, fallback_batches, evaluate_sae) -> dict[str, Any]:
    """`evaluate_sae(sae, batches)` figures (fra_core.sae.train) on held-out tokens (`cfg.eval_tokens`,
    0 = off: the training batches), with eval_source naming what they were computed on and a dead_warning
    above 30 % dead."""
    texts = heldout_texts(cfg.dataset, cfg.n_texts, cfg.eval_tokens, cfg.context_size, cfg.seed,
                          workspace) if cfg.eval_tokens > 0 else []
    if texts:
        metrics = evaluate_sae(sae, list(heldout_activations(model, sae, texts, cfg.context_size, cfg.eval_tokens)))
        short = metrics["eval_tokens"] < cfg.eval_tokens
        metrics["eval_source"] = (f"held-out: {metrics['eval_tokens']:,} tokens of {len(texts):,} texts the training "
                                  "did not read" + (f" (all the dataset has beyond its first {cfg.n_texts:,} texts; "
                                                    f"{cfg.eval_tokens:,} asked)" if short else ""))
    else:
        metrics = evaluate_sae(sae, fallback_batches)
        metrics["eval_source"] = (f"the last training batches ({metrics['eval_tokens']:,} tokens): "
                                  + ("held-out evaluation is off (eval_tokens = 0)" if cfg.eval_tokens <= 0 else
                                     f"the dataset has no text beyond the {cfg.n_texts:,} used for training"))
    dead = metrics["dead_features"] / max(metrics["d_sae"], 1)
    metrics["dead_fraction"] = dead
    metrics["dead_warning"] = (f"{dead:.0%} of the features never fired on {metrics['eval_tokens']:,} evaluation "
                               f"tokens (above {DEAD_WARNING_FRACTION:.0%}): train longer, lower the sparsity "
                               "coefficient or the dictionary size") if dead > DEAD_WARNING_FRACTION else None
    return metrics
