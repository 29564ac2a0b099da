"""Convert a restoration checkpoint to a TransformerLens `HookedTransformer`, verified on real inputs.

Mapping (our nn.Linear weights are [out, in]; TL stores [in, out] and splits heads)::

    embed.weight [d_vocab, d_model]            -> embed.W_E
    attn.W_Q.weight [(h d_head), d_model]      -> attn.W_Q [h, d_model, d_head]   ("(h d) m -> h m d")
    attn.W_Q.bias [(h d_head)]                 -> attn.b_Q [h, d_head]            (same for K, V)
    attn.W_O.weight [d_model, (h d_head)]      -> attn.W_O [h, d_head, d_model]   ("m (h d) -> h d m")
    ln1 / ln2 / ln_final weight, bias          -> ln1.w, ln1.b, ...               (LN, same eps)
    mlp.W_in.weight [d_mlp, d_model]           -> mlp.W_in [d_model, d_mlp]       (transpose; W_out too)
    unembed.weight [d_vocab, d_model]          -> unembed.W_U [d_model, d_vocab]
    rope_sin / rope_cos [max_len, d_head]      -> attn.rotary_sin / rotary_cos (copied: exact in both RoPE
                                                  modes; with the seed quirk they are the quirk's table)

TL settings: positional_embedding_type="rotary", rotary_dim=d_head, rotary_adjacent_pairs=False (our
"rotate half" pairing), rotary_base, attention_dir="bidirectional", act_fn="gelu" (exact erf GELU),
normalization_type="LN", n_ctx=max_len, default_prepend_bos=True (our examples start with <bos>).
The rotary tables live in the state dict, so `fra_core.models.save_local_model`/`load_local_model`
carry the quirk table through a save/load round trip (`load_local_model` loads every float tensor).

Verification runs both models on the same token batches — real text from the checkpoint's vocabulary
(the shipped sample or `--data`), at full length and shorter, with and without <mask> tokens — and
reports max |Δlogit|; above `TOLERANCE` nothing is saved and the CLI exits 1.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import einops
import numpy as np
import torch

from fra_core.atf import BOS_ID, MASK_ID, AtfError, CharVocab, VocabError, clean_fragment, load_fragments, sample_path
from fra_core.restoration.model import CheckpointError, RestorationModel, RestorationModelConfig, load_checkpoint
from fra_core.server import server_mode

TOLERANCE = 1e-4


def tl_config(cfg: RestorationModelConfig):
    from transformer_lens import HookedTransformerConfig

    return HookedTransformerConfig(
        n_layers=cfg.n_layers, d_model=cfg.d_model, n_ctx=cfg.max_len, d_head=cfg.d_head, n_heads=cfg.n_heads,
        d_mlp=cfg.d_mlp, d_vocab=cfg.d_vocab, act_fn="gelu", normalization_type="LN", eps=cfg.ln_eps,
        positional_embedding_type="rotary", rotary_dim=cfg.d_head, rotary_base=cfg.rope_base,
        rotary_adjacent_pairs=False, attention_dir="bidirectional", default_prepend_bos=True,
        original_architecture="FRARestorationEncoder", init_weights=False, device="cpu", dtype=torch.float32,
    )


def tl_state_dict(model: RestorationModel) -> dict[str, torch.Tensor]:
    """Our state dict rearranged into TransformerLens names and shapes (rotary tables included)."""
    cfg, sd = model.cfg, model.state_dict()
    out = {"embed.W_E": sd["embed.weight"], "ln_final.w": sd["ln_final.weight"], "ln_final.b": sd["ln_final.bias"],
           "unembed.W_U": sd["unembed.weight"].T, "unembed.b_U": sd["unembed.bias"]}
    for layer in range(cfg.n_layers):
        src, dst = f"blocks.{layer}.", f"blocks.{layer}."
        for name in ("Q", "K", "V"):
            out[f"{dst}attn.W_{name}"] = einops.rearrange(
                sd[f"{src}attn.W_{name}.weight"], "(h d) m -> h m d", h=cfg.n_heads)
            out[f"{dst}attn.b_{name}"] = einops.rearrange(sd[f"{src}attn.W_{name}.bias"], "(h d) -> h d", h=cfg.n_heads)
        out[f"{dst}attn.W_O"] = einops.rearrange(sd[f"{src}attn.W_O.weight"], "m (h d) -> h d m", h=cfg.n_heads)
        out[f"{dst}attn.b_O"] = sd[f"{src}attn.W_O.bias"]
        out[f"{dst}attn.rotary_sin"] = model.rope_sin
        out[f"{dst}attn.rotary_cos"] = model.rope_cos
        for ln in ("ln1", "ln2"):
            out[f"{dst}{ln}.w"], out[f"{dst}{ln}.b"] = sd[f"{src}{ln}.weight"], sd[f"{src}{ln}.bias"]
        out[f"{dst}mlp.W_in"] = sd[f"{src}mlp.W_in.weight"].T
        out[f"{dst}mlp.b_in"] = sd[f"{src}mlp.W_in.bias"]
        out[f"{dst}mlp.W_out"] = sd[f"{src}mlp.W_out.weight"].T
        out[f"{dst}mlp.b_out"] = sd[f"{src}mlp.W_out.bias"]
    return {k: v.detach().clone().contiguous() for k, v in out.items()}


def convert_model(model: RestorationModel, vocab: CharVocab | None = None):
    """A HookedTransformer computing the same logits as `model` (eval mode, CPU, float32)."""
    from transformer_lens import HookedTransformer

    tl = HookedTransformer(tl_config(model.cfg), move_to_device=False)
    state = tl.state_dict()
    mapped = tl_state_dict(model.cpu())
    unknown = sorted(set(mapped) - set(state))
    if unknown:  # a TL version that renamed something: fail loudly rather than convert half a model
        raise CheckpointError(f"TransformerLens has no parameters named {unknown[:3]}")
    state.update(mapped)
    tl.load_state_dict(state, strict=True)
    if vocab is not None:
        attach_tokenizer(tl, vocab)
    return tl.eval()


def attach_tokenizer(tl_model, vocab: CharVocab) -> None:
    """Give the TL model the vocabulary's HF tokenizer. TL re-reads a tokenizer by its name_or_path
    (which an in-memory tokenizer lacks), so save it to a temporary folder inside the workspace first."""
    import tempfile

    from fra_core.models.tokenizers import load_tokenizer, save_tokenizer
    from fra_core.workspace import Workspace

    root = Workspace.from_env().root
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".tokenizer-", dir=root) as tmp:
        tl_model.set_tokenizer(load_tokenizer(save_tokenizer(vocab.to_tokenizer(), tmp)),
                               default_padding_side="right")


# ----------------------------------------------------------------------------- verification
def real_token_batches(vocab: CharVocab, max_len: int, texts: Sequence[str], seed: int = 0,
                       batch_size: int = 4) -> list[torch.Tensor]:
    """Batches of real text at several lengths (max_len and shorter), half of them with <mask> tokens."""
    joined = "\n".join(texts) or "a"
    while len(joined) < batch_size * max_len:  # a short corpus is repeated to fill full-length inputs
        joined = joined + "\n" + joined
    ids = np.array(vocab.encode(joined), dtype=np.int64)
    rng = np.random.default_rng(seed)
    lengths = sorted({max_len, max(2, max_len // 2 + 3), min(max_len, 17), 2}, reverse=True)
    batches = []
    for length in lengths:
        starts = rng.integers(0, len(ids) - length, size=batch_size)
        rows = np.stack([np.concatenate([[BOS_ID], ids[s:s + length - 1]]) for s in starts])
        batches.append(torch.from_numpy(rows))
        masked = rows.copy()
        masked[:, 1:][rng.random((batch_size, length - 1)) < 0.15] = MASK_ID
        batches.append(torch.from_numpy(masked))
    return batches


@torch.no_grad()
def max_abs_dlogit(model: RestorationModel, tl_model, batches: Sequence[torch.Tensor]) -> float:
    model, worst = model.eval().cpu(), 0.0
    for tokens in batches:
        diff = (model(tokens) - tl_model(tokens, return_type="logits")).abs().max().item()
        worst = max(worst, diff)
    return worst


def verification_texts(vocab: CharVocab, data: str | Path | None = None, limit_chars: int = 200_000) -> list[str]:
    """Cleaned text lines from `data` (eBL JSON / ATF) or the shipped sample, for verification inputs."""
    fragments = load_fragments(data or sample_path())
    texts, total = [], 0
    for frag in fragments:
        for line in clean_fragment(frag):
            texts.append(line.text)
            total += len(line.text)
        if total > limit_chars:
            break
    return texts


@dataclass(frozen=True)
class ConversionResult:
    max_abs_dlogit: float
    folder: Path | None
    config: RestorationModelConfig
    n_inputs: int

    @property
    def ok(self) -> bool:
        return self.max_abs_dlogit <= TOLERANCE


def convert_and_verify(model: RestorationModel, vocab: CharVocab, data: str | Path | None = None,
                       texts: Sequence[str] | None = None):
    """(HookedTransformer, max |Δlogit| on real batches, number of batches). Inputs: `texts` (cleaned
    text) if given, else cleaned lines of `data` (eBL JSON / ATF file), else of the shipped sample."""
    tl = convert_model(model, vocab)
    texts = list(texts) if texts else verification_texts(vocab, data)
    batches = real_token_batches(vocab, model.cfg.max_len, texts)
    return tl, max_abs_dlogit(model, tl, batches), len(batches)


def save_converted(tl_model, vocab: CharVocab, folder: Path, meta: dict, overwrite: bool = False) -> Path:
    from fra_core.models import save_local_model

    return save_local_model(tl_model, folder, tokenizer=vocab.to_tokenizer(), meta=meta, overwrite=overwrite)


def out_folder(out: str) -> Path:
    """A bare name means a workspace model; anything with a path separator is taken as a path."""
    from fra_core.workspace import Workspace, check_name

    if server_mode():  # a workspace model name, or a folder inside the workspace
        from fra_core.paths import confine

        ws = Workspace.from_env()
        return confine(out, ws.root, ws.models, what="output model folder")
    if "/" in out or "\\" in out or out.startswith("."):
        return Path(out)
    return Workspace.from_env().models / check_name(out, "model name")


def convert_checkpoint(checkpoint: str | Path, out: str | None, rope_quirk: bool | None = None,
                       data: str | Path | None = None, overwrite: bool = False) -> ConversionResult:
    """Load, convert, verify; save to `out` only when max |Δlogit| <= TOLERANCE (and out is given)."""
    if server_mode():  # every path inside the workspace (the pages hand over paths they confined or made)
        from fra_core.paths import confine
        from fra_core.workspace import Workspace

        root = Workspace.from_env().root
        checkpoint = confine(checkpoint, root, what="checkpoint", app_path=True)
        data = confine(data, root, what="verification text", app_path=True) if data else None
    model, payload = load_checkpoint(checkpoint, rope_quirk)
    if not payload.get("vocab"):
        raise CheckpointError(f"{checkpoint} carries no vocabulary; the converted model needs its tokenizer")
    vocab = CharVocab.from_json(payload["vocab"])
    if vocab.size != model.cfg.d_vocab:
        raise CheckpointError(f"{checkpoint}: vocabulary has {vocab.size} ids but the model has d_vocab "
                              f"{model.cfg.d_vocab}")
    folder = out_folder(out) if out else None
    if folder is not None and folder.exists() and not overwrite:
        raise FileExistsError(f"model folder already exists: {folder} (choose another name)")
    if folder is not None and folder.exists() and not (folder / "model.safetensors").is_file():
        raise FileExistsError(f"refusing to overwrite {folder}: it is not a model folder (no model.safetensors)")
    tl, worst, n = convert_and_verify(model, vocab, data)
    if folder is not None and worst <= TOLERANCE:
        meta = {"origin": "restoration-checkpoint", "checkpoint": str(Path(checkpoint).resolve()),
                "restoration_config": model.cfg.to_dict(), "rope_quirk": model.cfg.rope_quirk,
                "max_abs_dlogit": worst, "verified_batches": n, "tolerance": TOLERANCE,
                "description": f"character restoration encoder, {model.cfg.n_layers} layers, bidirectional RoPE",
                **{k: v for k, v in (payload.get("meta") or {}).items() if k in ("eval", "dataset", "train")}}
        save_converted(tl, vocab, folder, meta, overwrite=overwrite)
    else:
        folder = None
    return ConversionResult(worst, folder, model.cfg, n)


def cli_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fra_core convert",
        description="Convert a restoration checkpoint to a verified TransformerLens model.")
    parser.add_argument("--checkpoint", required=True, help="checkpoint file written by the restoration trainer")
    parser.add_argument("--out", help="model name in the workspace, or a folder path (omit to verify only)")
    parser.add_argument("--rope-quirk", choices=("auto", "on", "off"), default="auto",
                        help="reproduce the seed's RoPE slicing quirk (auto: as the checkpoint says)")
    parser.add_argument("--data", help="eBL JSON / ATF file for verification inputs (default: shipped sample)")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    quirk = {"auto": None, "on": True, "off": False}[args.rope_quirk]
    try:
        result = convert_checkpoint(args.checkpoint, args.out, quirk, args.data, args.overwrite)
    except (CheckpointError, AtfError, VocabError, FileExistsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    cfg = result.config
    print(f"model: {cfg.n_layers} layers, d_model {cfg.d_model}, {cfg.n_heads} heads, context {cfg.max_len}, "
          f"rope_quirk={cfg.rope_quirk}; verified on {result.n_inputs} batches")
    if result.ok:
        print(f"saved: {result.folder}" if result.folder else "verified only (no --out): nothing saved")
    else:
        print(f"error: max |dlogit| {result.max_abs_dlogit:.3g} exceeds {TOLERANCE:g}; nothing saved", file=sys.stderr)
    print(f"max_abs_dlogit={result.max_abs_dlogit:.3e}")
    return 0 if result.ok else 1
