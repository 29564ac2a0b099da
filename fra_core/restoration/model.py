"""The restoration model: a bidirectional (encoder) RoPE character transformer in plain torch.

Architecture (the seed used 16 layers, d_model 384, 8 heads, 768 characters; all configurable)::

    x = W_E[tokens]                                    no absolute position embedding: RoPE only
    for each of n_layers blocks (pre-LN):
        x = x + Attn(LN1(x))     q, k, v, o with biases; RoPE on q and k over all of d_head, GPT-NeoX
                                 "rotate half" pairing (i, i + d_head/2); softmax(q·k/√d_head) over
                                 ALL positions (bidirectional, no causal mask, no padding mask)
        x = x + MLP(LN2(x))      W_in -> GELU (exact erf form) -> W_out, with biases
    logits = LN_final(x) @ W_U + b_U                   untied unembedding (restoration reads characters
                                                       differently from how it writes them)

In eval mode the attention and LayerNorm follow TransformerLens' op order exactly (explicit softmax,
TL's LN formula), so the converted model agrees to float rounding; training uses the fused kernels.

Padding is not masked: <pad> is an ordinary token the model learns to ignore. This costs nothing in
accuracy and makes the TransformerLens conversion exact on padded batches too (TL's bidirectional
attention ignores attention_mask).

RoPE tables are computed with exactly TransformerLens' arithmetic (`pos / base**(2i/d)`, float32) so a
rebuilt TL table matches bit for bit. The *seed quirk* (`rope_quirk=True`) reproduces the seed's
slicing bug: it built its angle table frequency-major, ``ang[i, p] = p / base**(2i/d)`` with shape
``[d_head/2, max_len]``, and read it as ``ang.view(max_len, d_head/2)[:seq_len]`` — the ``[:seq_len]``
slice runs over the first axis of a view whose rows are not positions. So position p, pair i gets the
angle stored at flat index ``p·d_head/2 + i`` of the frequency-major table:
``angle(p, i) = (f mod max_len) / base**(2·(f div max_len)/d)`` with ``f = p·d_head/2 + i``. The table is
fixed for a given (d_head, max_len), so shorter inputs use its first rows, as the seed's code did.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fra_core.checks import state_dict_problem
from fra_core.config import JobConfig
from fra_core.errors import FRAStudioError

CHECKPOINT_FORMAT = "fra-restoration-v1"


class CheckpointError(FRAStudioError):
    """A checkpoint that is not a usable restoration checkpoint; one-line message."""


@dataclass(frozen=True)
class RestorationModelConfig(JobConfig):
    d_vocab: int = 128
    n_layers: int = 4
    d_model: int = 128
    n_heads: int = 4
    d_head: int = 0          # 0: d_model // n_heads
    d_mlp: int = 0           # 0: 4 * d_model
    max_len: int = 768       # context, <bos> included
    rope_base: float = 10000.0
    rope_quirk: bool = False
    ln_eps: float = 1e-5
    dropout: float = 0.0     # training only; the converted model has none

    def __post_init__(self):
        if self.d_head == 0:
            if self.d_model % self.n_heads:
                raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
            object.__setattr__(self, "d_head", self.d_model // self.n_heads)
        if self.d_mlp == 0:
            object.__setattr__(self, "d_mlp", 4 * self.d_model)
        if self.d_head % 2:
            raise ValueError(f"RoPE needs an even d_head, got {self.d_head}")
        if min(self.d_vocab, self.n_layers, self.d_model, self.n_heads, self.max_len) < 1:
            raise ValueError(f"model sizes must be positive: {self.to_dict()}")


def rope_tables(d_head: int, max_len: int, base: float = 10000.0,
                quirk: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(sin, cos), each [max_len, d_head], in TransformerLens' layout (frequencies repeated "(2 d)")."""
    pos = torch.arange(max_len, dtype=torch.float32)
    dim = torch.arange(d_head // 2, dtype=torch.float32)
    freq = base ** (dim / (d_head / 2))
    if quirk:
        # the seed's table: frequency-major [d_head/2, max_len], then viewed as [max_len, d_head/2]
        angles = (pos[None, :] / freq[:, None]).reshape(max_len, d_head // 2)
    else:
        angles = pos[:, None] / freq[None, :]
    angles = torch.cat([angles, angles], dim=-1)  # "(2 d)": pair i with i + d_head/2
    return torch.sin(angles), torch.cos(angles)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: RestorationModelConfig):
        super().__init__()
        self.cfg = cfg
        inner = cfg.n_heads * cfg.d_head
        self.W_Q, self.W_K, self.W_V = (nn.Linear(cfg.d_model, inner) for _ in range(3))
        self.W_O = nn.Linear(inner, cfg.d_model)

    def forward(self, x: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
        """x [batch, pos, d_model]; sin/cos [pos, d_head] -> [batch, pos, d_model]."""
        batch, pos, _ = x.shape
        heads = (batch, pos, self.cfg.n_heads, self.cfg.d_head)
        q, k, v = (w(x).view(heads).transpose(1, 2) for w in (self.W_Q, self.W_K, self.W_V))
        q = q * cos + rotate_half(q) * sin   # [batch, head_index, pos, d_head]
        k = k * cos + rotate_half(k) * sin
        if self.training:  # fused kernel for speed; no mask: bidirectional
            z = F.scaled_dot_product_attention(q, k, v, dropout_p=self.cfg.dropout)
        else:  # TransformerLens' op order (scores, softmax, pattern @ v): conversions agree to the last bit
            pattern = F.softmax(q @ k.transpose(-1, -2) / math.sqrt(self.cfg.d_head), dim=-1)
            z = pattern @ v
        return self.W_O(z.transpose(1, 2).reshape(batch, pos, -1))


class LayerNorm(nn.LayerNorm):
    """nn.LayerNorm whose eval-mode forward uses TransformerLens' formula and op order
    ((x - mean) / sqrt(mean((x - mean)^2) + eps) * w + b); training keeps the fused kernel (same maths)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return super().forward(x)
        x = x - x.mean(-1, keepdim=True)
        scale = (x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt()
        return (x / scale) * self.weight + self.bias


class Block(nn.Module):
    def __init__(self, cfg: RestorationModelConfig):
        super().__init__()
        self.ln1 = LayerNorm(cfg.d_model, eps=cfg.ln_eps)
        self.attn = Attention(cfg)
        self.ln2 = LayerNorm(cfg.d_model, eps=cfg.ln_eps)
        self.mlp = nn.ModuleDict({"W_in": nn.Linear(cfg.d_model, cfg.d_mlp),
                                  "W_out": nn.Linear(cfg.d_mlp, cfg.d_model)})
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln1(x), sin, cos))
        hidden = F.gelu(self.mlp["W_in"](self.ln2(x)))
        return x + self.drop(self.mlp["W_out"](hidden))


class RestorationModel(nn.Module):
    def __init__(self, cfg: RestorationModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.d_vocab, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_final = LayerNorm(cfg.d_model, eps=cfg.ln_eps)
        self.unembed = nn.Linear(cfg.d_model, cfg.d_vocab)
        sin, cos = rope_tables(cfg.d_head, cfg.max_len, cfg.rope_base, cfg.rope_quirk)
        # derived from the config, so not part of the checkpoint
        self.register_buffer("rope_sin", sin, persistent=False)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.reset_parameters()

    def reset_parameters(self, std: float = 0.02) -> None:
        """GPT-2 style init: N(0, std) weights, zero biases, output projections scaled by 1/√(2·n_layers)."""
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif ".ln" in name or name.startswith("ln_final"):
                nn.init.ones_(p)
            else:
                scale = 1 / math.sqrt(2 * self.cfg.n_layers) if name.endswith(("W_O.weight", "W_out.weight")) else 1
                nn.init.normal_(p, 0.0, std * scale)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [batch, pos] (pos <= max_len) -> logits [batch, pos, d_vocab]."""
        pos = tokens.shape[-1]
        if pos > self.cfg.max_len:
            raise ValueError(f"input has {pos} positions, the model's context is {self.cfg.max_len}")
        sin, cos = self.rope_sin[:pos], self.rope_cos[:pos]
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x, sin, cos)
        return self.unembed(self.ln_final(x))


# ----------------------------------------------------------------------------- checkpoints
def expected_shapes(cfg: RestorationModelConfig) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = RestorationModel(cfg)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def check_state_dict(state: dict[str, Any], cfg: RestorationModelConfig, source: str = "checkpoint") -> None:
    """Raise CheckpointError naming the first missing, unexpected or mis-shaped tensor."""
    problem = state_dict_problem(expected_shapes(cfg), state, source)
    if problem:
        raise CheckpointError(problem)
    for name, value in state.items():
        if not torch.isfinite(value).all():
            raise CheckpointError(f"{source}: tensor {name} holds NaN or infinite values")


def save_checkpoint(model: RestorationModel, path: str | Path, vocab_json: dict | None = None,
                    meta: dict | None = None) -> Path:
    """One file: {format, config, state_dict, vocab, meta}; written to a temp name, then renamed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": CHECKPOINT_FORMAT, "config": model.cfg.to_dict(),
               "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
               "vocab": vocab_json, "meta": meta or {}}
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def load_checkpoint(path: str | Path, rope_quirk: bool | None = None) -> tuple[RestorationModel, dict]:
    """(model in eval mode, payload) for a checkpoint file; `rope_quirk` overrides the stored setting."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle/zip errors come in many types
        raise CheckpointError(f"{path} is not a readable torch checkpoint: {type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''}") from exc
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a {CHECKPOINT_FORMAT} checkpoint (expected a dict with "
                              f"format, config, state_dict)")
    try:
        config = dict(payload["config"])
        if rope_quirk is not None:
            config["rope_quirk"] = bool(rope_quirk)
        cfg = RestorationModelConfig.from_dict(config)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: bad model config: {exc}") from exc
    state = payload.get("state_dict")
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} has no state_dict")
    check_state_dict(state, cfg, str(path))
    model = RestorationModel(cfg)
    model.load_state_dict(state)
    return model.eval(), payload
