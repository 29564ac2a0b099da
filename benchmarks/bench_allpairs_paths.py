"""Exact all-pair statistics vs the top-m path, on the same samples (used by bench_accumulate.py).

Both paths are timed as the job runs them: `fra_core.accumulate.run.compute_shard`, the one shard body of
every executor (local loop and Ray), from the shard's (sample, text) items to its files on disk:
tokenising, the engine's sides, the statistics, the shard's tables and writing them. What is left before
a user can query is the app's ingest of the files (not timed here; it scales with the rows written, and
both paths write the same schemas):
- top-m:     `TopMRunner` (the engine: T²K² pair values per head, top-m per cell, per-pair reduction);
- all pairs: `AllPairsRunner` (the shard's head-independent co-activation table, written ONCE for all
             heads as `coact` rows plus each head's projected rows `proj`: G_h is applied by the reader;
             every pair, no truncation; marginals and node totals included; the per-batch completeness
             check included).
Rows and bytes: top-m writes one `pairs` row per kept (pair, head); all pairs one `coact` row per distinct
pair (× heads = the per-head rows it stands for) and `proj` rows per (head, side, feature); bytes = every
file of the shard on disk.
Cases: (a) the demo model, layer 1, all heads, demo texts; (b) a GPT-2-Small-shaped layer: random
weights, d_model 768, 12 heads × d_head 64, an SAE with d_sae 24 576 on blocks.0.ln1.hook_normalized
whose activations are synthetic: 32 active features per token, drawn from a Zipf(s = 1.1) frequency
distribution over the 24 576 features (a few features fire on a large share of tokens, most are rare,
as SAE feature densities are), with log-normal magnitudes; T = 128; "texts" are token ids.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from pathlib import Path

import torch


class ZipfSAE(torch.nn.Module):
    """Wraps an SAE; `encode` returns deterministic synthetic activations (see the module docstring)."""

    def __init__(self, sae, k: int = 32, s: float = 1.1, seed: int = 0):
        super().__init__()
        self.sae, self.k = sae, k
        ranks = torch.arange(1, sae.cfg.d_sae + 1, dtype=torch.float64)
        self.p = (ranks ** -s) / (ranks ** -s).sum()
        self.perm = torch.randperm(sae.cfg.d_sae, generator=torch.Generator().manual_seed(seed))
        self.cfg, self.W_dec, self.b_dec = sae.cfg, sae.W_dec, sae.b_dec

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        seed = int((flat[:, :4].sum() * 1e4).abs()) % (2 ** 31)  # same input → same activations
        gen = torch.Generator().manual_seed(seed)
        idx = torch.multinomial(self.p.expand(len(flat), -1), self.k, replacement=False, generator=gen)
        acts = torch.zeros(len(flat), self.cfg.d_sae, dtype=x.dtype)
        acts.scatter_(1, self.perm[idx], torch.exp(torch.randn(len(flat), self.k, generator=gen) * 0.5).to(x.dtype))
        return acts.view(*x.shape[:-1], -1)


def gpt2_shaped(T: int = 128, seed: int = 0):
    """(model, Zipf SAE, tokens [1, T]); the model "tokenises" a text of space-separated token ids."""
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    torch.manual_seed(seed)
    cfg = HookedTransformerConfig(n_layers=1, d_model=768, n_heads=12, d_head=64, d_vocab=1000, n_ctx=T,
                                  attn_only=True, normalization_type="LN", device="cpu", seed=seed)
    model = HookedTransformer(cfg).eval()
    model.to_tokens = lambda text, prepend_bos=True, truncate=True: torch.tensor([[int(t) for t in text.split()]])
    model.to_str_tokens = lambda toks: [str(int(t)) for t in torch.as_tensor(toks).reshape(-1)]
    sae = StandardSAE(StandardSAEConfig(d_in=768, d_sae=24576, metadata=SAEMetadata(hook_name="blocks.0.ln1.hook_normalized")))
    with torch.no_grad():
        sae.W_dec.normal_(0, 768 ** -0.5)
    return model, ZipfSAE(sae.eval()), torch.randint(0, 1000, (1, T), generator=torch.Generator().manual_seed(seed))


def id_texts(n: int, T: int, vocab: int = 1000) -> list[str]:
    """n "texts" of T space-separated token ids (the GPT-2-shaped model's input)."""
    return [" ".join(str(int(t)) for t in torch.randint(0, vocab, (T,), generator=torch.Generator().manual_seed(s)))
            for s in range(n)]


@contextlib.contextmanager
def block_path_only():
    """The engine without its Gram path (issue 15): every top-m run then takes the block path, as all did
    when issue 14 was filed (`fra_core.fra.engine.gram_plan` answers None)."""
    from fra_core.fra import engine

    plan = engine.gram_plan
    engine.gram_plan = lambda *args, **kwargs: None
    try:
        yield
    finally:
        engine.gram_plan = plan


def time_paths(model, sae, texts: list[str], layer: int, k_active: int, top_m: int = 8, batch_size: int = 16,
               context_length: int = 64, block_path: bool = False) -> dict:
    """Seconds (wall and CPU of this process) of each path's shard body over the same texts (one shard),
    the pairs / coact / proj rows each path wrote, the bytes of the shard's files, and the seconds of the
    app's ingest + compaction of that shard into a fresh database (`<path>_ingest_s`). block_path: also
    `topm_block_s`, the top-m shard body without the Gram path (`block_path_only`; not ingested)."""
    from fra_core.accumulate import AccumulateFRAConfig
    from fra_core.accumulate.run import prepare

    items = list(enumerate(texts))
    out = {}
    base = dict(model="bench", q_saes=("bench-sae",), layer=layer, n_samples=len(items), batch_size=batch_size,
                shard_size=len(items), k_active=k_active, context_length=context_length, top_m=top_m,
                include_diagonal=True, exclude_bos_key=False, exclude_bos_query=False)
    paths = [("topm", "top_m"), ("allpairs", "all_pairs")] + ([("topm_block", "top_m")] if block_path else [])
    for name, statistics in paths:
        cfg = AccumulateFRAConfig(**base, statistics=statistics)
        with block_path_only() if name == "topm_block" else contextlib.nullcontext():
            runner = prepare(cfg, model, [sae])
            out.update(_time_shard(name, runner, cfg, items, ingest=name != "topm_block"))
        if hasattr(runner, "plans"):
            out["heads"] = len(runner.plans[0].heads)
    return out


def _time_shard(name: str, runner, cfg, items, ingest: bool) -> dict:
    """`<name>_s` / `<name>_cpu_s`: one shard body after a warm-up shard; with ingest also the ingest seconds,
    the rows written per kind and the shard's bytes."""
    from fra_core import contracts
    from fra_core.accumulate.run import compute_shard

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        job, warm = Path(tmp) / f"bench-{name}", Path(tmp) / "warm-up"
        for folder in (job, warm):
            folder.mkdir()
            contracts.write_run_info(folder, runner.run_info())
        with torch.no_grad():  # warm-up: caches, allocator, projected rows of the first sample
            compute_shard(runner, cfg, 1, items[:1], warm)
        t0, c0 = time.perf_counter(), time.process_time()
        compute_shard(runner, cfg, 0, items, job)
        out[f"{name}_s"], out[f"{name}_cpu_s"] = time.perf_counter() - t0, time.process_time() - c0
        if not ingest:
            return out
        out[f"{name}_ingest_s"] = _ingest_seconds(job, cfg, Path(tmp) / "fra.duckdb")
        for kind in ("pairs", "coact", "proj"):
            out[f"{name}_{kind}"] = contracts.read_shard_table(job, 0, kind).num_rows
        out[f"{name}_bytes"] = sum(p.stat().st_size for p in contracts.shards_dir(job).glob("shard-000000.*"))
    return out


def _ingest_seconds(job: Path, cfg, db: Path) -> float:
    """Wall seconds of the app's ingest of the job's shard into a fresh DuckDB file, compaction included
    (a finished job compacts at once): what stands between the shard files and the first query."""
    from fra_core import contracts
    from store import Store, ingest_job_shards

    (job / "job.json").write_text('{"kind": "accumulate"}')
    cfg.save_yaml(job / "config.yaml")
    contracts.write_json_atomic(job / "status.json", {"state": "done"})
    store = Store(db)
    try:
        t0 = time.perf_counter()
        with store.write() as con:
            ingest_job_shards(con, job)
        return time.perf_counter() - t0
    finally:
        store.close()
