"""Views for bidirectional masked-character models (the restoration model converted to TransformerLens,
`cfg.attention_dir == "bidirectional"`): what it predicts at masked characters, and head scores that fit
a model which sees both sides (previous-, next-character and self attention), and out-of-vocabulary
words of word-level tokenizers.

Token ids come from the model's own tokenizer: one token per character, `<mask>` where the text has the
mask character, `<bos>` first (as the restoration model reads its lines).
"""

from __future__ import annotations

import pandas as pd
import torch

from fra_core.errors import FRAStudioError

MASK_TOKEN, BOS_TOKEN = "<mask>", "<bos>"


class MaskedInputError(FRAStudioError):
    """A text the masked-character view cannot read (names the problem and the value)."""


def is_bidirectional(model) -> bool:
    return getattr(model.cfg, "attention_dir", "causal") == "bidirectional"


def char_tokens(model, text: str, mask_char: str = "_") -> tuple[torch.Tensor, list[str]]:
    """[1, 1 + len(text)] ids (BOS, then one per character, <mask> for `mask_char`) and their strings."""
    tok = model.tokenizer
    if tok is None:
        raise MaskedInputError("the model has no tokenizer: cannot map characters to ids")
    vocab = tok.get_vocab()
    missing = [name for name in (MASK_TOKEN, BOS_TOKEN) if name not in vocab]
    if missing:
        raise MaskedInputError(f"the tokenizer has no {', '.join(missing)} token: not a masked-character model")
    if len(text) + 1 > model.cfg.n_ctx:
        raise MaskedInputError(f"text has {len(text)} characters; the model reads at most {model.cfg.n_ctx - 1}")
    strs = [BOS_TOKEN] + [MASK_TOKEN if ch == mask_char else ch for ch in text]
    unk = tok.unk_token_id
    ids = [vocab.get(s, unk if unk is not None else 0) for s in strs]
    return torch.tensor([ids], device=model.cfg.device), strs


@torch.no_grad()
def masked_predictions(model, text: str, mask_char: str = "_", k: int = 5) -> pd.DataFrame:
    """One row per masked character: index (in `text`), rank, candidate character, probability."""
    if mask_char not in text:
        raise MaskedInputError(f"mark the characters to predict with {mask_char!r} (text: {text[:40]!r})")
    ids, strs = char_tokens(model, text, mask_char)
    probs = model(ids)[0].float().softmax(-1)
    special = set(model.tokenizer.all_special_ids)
    probs[:, sorted(special)] = 0
    rows = []
    for i, s in enumerate(strs[1:], start=1):
        if s != MASK_TOKEN:
            continue
        p, idx = probs[i].topk(min(k, probs.shape[-1]))
        for rank, (q, t) in enumerate(zip(p.tolist(), idx.tolist()), start=1):
            rows.append({"index": i - 1, "rank": rank, "candidate": model.tokenizer.convert_ids_to_tokens(t),
                         "probability": q})
    return pd.DataFrame(rows, columns=["index", "rank", "candidate", "probability"])


@torch.no_grad()
def bidirectional_head_scores(model, n_seq: int = 8, length: int | None = None, seed: int = 0) -> pd.DataFrame:
    """Per head, on random non-special token sequences: mean attention to the previous, the next and the
    same position (a bidirectional model's counterparts of previous-token / induction scores)."""
    length = min(length or model.cfg.n_ctx, model.cfg.n_ctx)
    special = set(model.tokenizer.all_special_ids) if model.tokenizer is not None else set()
    allowed = torch.tensor([t for t in range(model.cfg.d_vocab) if t not in special])
    gen = torch.Generator().manual_seed(seed)
    tokens = allowed[torch.randint(len(allowed), (n_seq, length), generator=gen)].to(model.cfg.device)
    names = [f"blocks.{layer}.attn.hook_pattern" for layer in range(model.cfg.n_layers)]
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
    rows = []
    for layer in range(model.cfg.n_layers):
        pat = cache[names[layer]].float()  # [batch, head, q, k]
        prev = pat.diagonal(offset=-1, dim1=-2, dim2=-1).mean(dim=(0, -1))
        nxt = pat.diagonal(offset=1, dim1=-2, dim2=-1).mean(dim=(0, -1))
        same = pat.diagonal(dim1=-2, dim2=-1).mean(dim=(0, -1))
        for head in range(model.cfg.n_heads):
            rows.append({"layer": layer, "head": head, "previous": float(prev[head]), "next": float(nxt[head]),
                         "self": float(same[head])})
    return pd.DataFrame(rows)


def out_of_vocabulary(model, text: str) -> list[str]:
    """Words of `text` that a word-level tokenizer (the demo's) maps to its unknown token (they would
    silently read as `<unk>`); [] for sub-word tokenizers, which spell any word."""
    tok = model.tokenizer
    unk = getattr(tok, "unk_token_id", None) if tok is not None else None
    backend = getattr(tok, "backend_tokenizer", None)
    if unk is None or type(getattr(backend, "model", None)).__name__ != "WordLevel":
        return []  # sub-word tokenizers spell any word
    vocab = tok.get_vocab()
    return sorted({w for w in text.split() if w not in vocab and tok.convert_tokens_to_ids(w) == unk})


def unknown_chars(model, text: str, mask_char: str = "_") -> list[str]:
    """Characters of `text` the masked-character model's vocabulary lacks (read as <unk>)."""
    vocab = model.tokenizer.get_vocab() if model.tokenizer is not None else {}
    return sorted({ch for ch in text if ch != mask_char and ch not in vocab})
