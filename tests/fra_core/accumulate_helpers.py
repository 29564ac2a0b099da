"""Tiny parts for accumulation tests: a 2-layer model that speaks the demo language, SAEs on its
layer-1 head input, saved into a workspace so job processes can load them by name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from fra_core import contracts


def demo_tokenizer_folder(root: Path) -> Path:
    from fra_core.models.demo import demo_tokenizer
    from fra_core.models.tokenizers import save_tokenizer

    folder = root / "tok"
    if not folder.exists():
        save_tokenizer(demo_tokenizer(), folder)
    return folder


def tiny_demo_model(root: Path, seed: int = 0):
    """make_tiny_model with the demo word tokenizer (n_ctx 64, 4 heads)."""
    from fra_core.models.tiny import make_tiny_model
    from fra_core.models.tokenizers import load_tokenizer

    tok = load_tokenizer(demo_tokenizer_folder(root))
    model = make_tiny_model(d_vocab=len(tok), n_ctx=64, seed=seed, default_prepend_bos=True)
    model.set_tokenizer(tok)
    return model


def tiny_sae(model, layer: int = 1, d_sae: int = 48, seed: int = 0, d_in: int | None = None):
    from tests.fra_core.fra.helpers_fra import make_sae

    return make_sae(d_in or model.cfg.d_model, f"blocks.{layer}.ln1.hook_normalized", d_sae, seed=seed)


def save_parts(workspace, model, sae, model_name: str = "tiny", sae_name: str = "tiny-sae") -> None:
    from fra_core.models import save_local_model
    from fra_core.models.tokenizers import load_tokenizer

    tok = load_tokenizer(demo_tokenizer_folder(workspace.root))
    save_local_model(model, workspace.models / model_name, tokenizer=tok)
    sae.save_model(str(workspace.saes / sae_name))


def shard_tables(job_dir: Path, kind: str, examples_per_pair: int = 0) -> pd.DataFrame:
    """The per-head `kind` ("pairs" / "examples") rows of every complete shard: stored per-head rows and the
    expansion of the shard's coact / proj (`fra_core.accumulate.coact.shard_pairs`)."""
    from fra_core.accumulate.coact import shard_pairs

    at = 0 if kind == "pairs" else 1
    return pd.concat([shard_pairs(job_dir, m["shard"], examples_per_pair)[at].to_pandas()
                      for m in contracts.complete_shards(job_dir)])


def shard_totals(job_dir: Path) -> pd.DataFrame:
    """Sum the shards of a job per pair with pandas (an independent reduction)."""
    frames = [shard_tables(job_dir, "pairs")]
    df = pd.concat(frames)
    key = list(contracts.PAIR_KEY)
    return df.groupby(key).agg(n=("n", "sum"), sum=("sum", "sum"), max=("max", "max"), min=("min", "min"),
                               diag_n=("diag_n", "sum"), diag_sum=("diag_sum", "sum")).sort_index()


def direct_totals(model, sae, texts: list[str], cfg) -> pd.DataFrame:
    """Per-sample engine FRA summed with pandas: the obviously-correct reference for a job's totals
    (statistics='all_pairs': every pair of every cell, top_m=None; 'top_m': the top_m kept per cell)."""
    from fra_core.fra import FRAOptions, compute_fra

    top_m = None if cfg.statistics == "all_pairs" else cfg.top_m
    opts = FRAOptions(k_active=cfg.k_active, top_m=top_m, exclude_diagonal=not cfg.include_diagonal)
    rows = []
    for text in texts:
        toks = model.to_tokens(text, prepend_bos=cfg.prepend_bos, truncate=True)[0, : cfg.context_length]
        res = compute_fra(model, toks[None], cfg.layer, list(cfg.heads) or None, sae, None, opts)
        e = {k: v.numpy() for k, v in res.entries.items()}
        rows.append(pd.DataFrame({"layer": cfg.layer, "head": e["head"], "q_src": 0, "q_feat": e["q_feature"],
                                  "k_src": 0, "k_feat": e["k_feature"], "value": e["value"].astype(np.float64),
                                  "diag": e["query_pos"] == e["key_pos"]}))
    df = pd.concat(rows)
    df["dv"] = np.where(df["diag"], df["value"], 0.0)
    return df.groupby(list(contracts.PAIR_KEY)).agg(n=("value", "size"), sum=("value", "sum"), max=("value", "max"),
                                                 min=("value", "min"), diag_n=("diag", "sum"),
                                                 diag_sum=("dv", "sum")).sort_index()


def assert_totals_equal(a: pd.DataFrame, b: pd.DataFrame, rtol: float = 1e-6, atol: float = 1e-6) -> None:
    a, b = a.sort_index(), b.sort_index()
    assert len(a) == len(b), (len(a), len(b))
    assert (a.index == b.index).all()
    for col in ("n", "diag_n"):
        np.testing.assert_array_equal(a[col].to_numpy(np.int64), b[col].to_numpy(np.int64))
    for col in ("sum", "max", "min", "diag_sum"):
        np.testing.assert_allclose(a[col].to_numpy(np.float64), b[col].to_numpy(np.float64), rtol=rtol, atol=atol)
