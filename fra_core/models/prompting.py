"""Prompt-level helpers for pages: tokenise with limits, next-token table, attention patterns."""

from __future__ import annotations

import pandas as pd
import torch
from transformer_lens import HookedTransformer

from fra_core.errors import FRAStudioError


class PromptError(FRAStudioError):
    """Text that the model cannot take (empty, too long, no tokenizer)."""


def prompt_tokens(model: HookedTransformer, text: str) -> torch.Tensor:
    """[1, pos] tokens with BOS; clear errors for empty or over-long text."""
    if model.tokenizer is None:
        raise PromptError("this model has no tokenizer, so it cannot take text input")
    if not text or not text.strip():
        raise PromptError("the text is empty")
    tokens = model.to_tokens(text, truncate=False)  # TL truncates to n_ctx by default: we say so instead
    if tokens.shape[1] > model.cfg.n_ctx:
        raise PromptError(f"the text is {tokens.shape[1]} tokens long (with BOS); this model's context is "
                          f"{model.cfg.n_ctx} tokens — shorten it")
    return tokens


@torch.no_grad()
def next_token_table(model: HookedTransformer, text: str, k: int = 10) -> tuple[pd.DataFrame, list[str]]:
    tokens = prompt_tokens(model, text)
    logits = model(tokens)[0, -1]
    probs = logits.softmax(-1)
    top = probs.topk(min(k, probs.shape[0]))
    table = pd.DataFrame({"token": [model.tokenizer.decode([int(i)]) for i in top.indices],
                          "probability": top.values.cpu().numpy(),
                          "logit": logits[top.indices].cpu().numpy()})
    return table, model.to_str_tokens(tokens[0])


@torch.no_grad()
def attention_patterns(model: HookedTransformer, text: str) -> list[torch.Tensor]:
    """Per layer: [head_index, query_pos, key_pos] attention pattern for the text."""
    tokens = prompt_tokens(model, text)
    names = {f"blocks.{layer}.attn.hook_pattern" for layer in range(model.cfg.n_layers)}
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
    return [cache[f"blocks.{layer}.attn.hook_pattern"][0].cpu() for layer in range(model.cfg.n_layers)]


def text_for_str_tokens(model: HookedTransformer, str_tokens: list[str]) -> tuple[str, int]:
    """A text that `prompt_tokens` turns back into exactly these token strings (e.g. a sample as an
    accumulation job stored it), and the offset to add to its positions (1 when the stored tokens lack
    the BOS that `prompt_tokens` prepends). Tries the tokens joined as they are and joined by spaces
    (word-level tokenizers), with and without a leading special token."""
    stored = [str(t) for t in str_tokens]
    shifted = None  # a text that needs the prepended BOS (offset 1): used only if no exact match exists
    for body in (stored[1:], stored):
        for sep in ("", " "):
            text = sep.join(body)
            if not text.strip():
                continue
            try:
                again = [str(t) for t in model.to_str_tokens(prompt_tokens(model, text)[0])]
            except PromptError:
                continue
            if again == stored:
                return text, 0
            if again[1:] == stored and shifted is None:
                shifted = text
    if shifted is not None:
        return shifted, 1
    raise PromptError(f"these {len(stored)} tokens do not come back from any text this tokenizer reads "
                      f"(first ones: {stored[:5]})")
