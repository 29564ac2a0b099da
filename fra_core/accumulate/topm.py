"""The pieces every accumulation job shares (loading and checking the model and SAEs, the run's sources,
a shard's buffer) and the statistics='top_m' job: the engine's top-m pairs per cell of one layer,
aggregated per pair (`fra_core.accumulate.allpairs` is the exact all-pair job).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

import fra_core
from fra_core import contracts
from fra_core.accumulate.config import AccumulateError, AccumulateFRAConfig
from fra_core.accumulate.feature_acts import FeatureActCollector
from fra_core.accumulate.stats import Examples, entry_stats, examples_table, merge, pairs_table
from fra_core.accumulate.tokens import FeatureTokenCounter
from fra_core.fra.aggregate import PairCodec, reduce_by_key


def _fra_api():
    from fra_core.fra import FRAOptions, compute_fra
    from fra_core.fra.options import check_layer_heads
    from fra_core.fra.sides import parse_dictionary  # the engine's own hook check, run before any work

    return compute_fra, FRAOptions, check_layer_heads, parse_dictionary


def load_parts(cfg: AccumulateFRAConfig, model=None, q_saes=None, k_saes=None):
    """Model and both sides' SAE lists (loaded from refs unless given), checked against each other."""
    model, q_saes, k_saes = load_model_and_saes(cfg, model, q_saes, k_saes)
    _, _, check_layer_heads, parse_dictionary = _fra_api()
    heads = check_layer_heads(model, cfg.layer, list(cfg.heads) or None)
    for saes in (q_saes, k_saes):  # wrong hook for this layer → a clear error before any work
        parse_dictionary(model, cfg.layer, saes[0] if len(saes) == 1 else saes)
    return model, q_saes, list(k_saes), heads


def load_model_and_saes(cfg: AccumulateFRAConfig, model=None, q_saes=None, k_saes=None):
    """The model and both sides' SAE lists (loaded from refs unless given), each SAE checked to fit."""
    from fra_core.devices import pick_device

    device = pick_device(None if cfg.device == "auto" else cfg.device)
    if model is None:
        from fra_core.models import load_model

        model = load_model(cfg.model, device)
    from fra_core.sae import check_sae_fits_model, load_sae

    q_saes = list(q_saes) if q_saes is not None else [load_sae(r, device) for r in cfg.q_saes]
    if k_saes is None:
        k_saes = [load_sae(r, device) for r in cfg.k_saes] if cfg.k_saes else q_saes
    pairs = list(zip(list(cfg.q_saes) + list(cfg.k_saes or cfg.q_saes), q_saes + list(k_saes)))
    fits = hook_widths(model, [sae for _, sae in pairs])
    for ref, sae in pairs:
        if fits.get(getattr(sae.cfg.metadata, "hook_name", None)) == sae.cfg.d_in:
            continue  # fits: no second forward pass
        try:  # the library check, for its one-line reason
            check_sae_fits_model(sae, model)
        except ValueError as exc:
            raise AccumulateError(f"SAE {ref!r} does not fit model {cfg.model!r}: {exc}") from exc
    if cfg.context_length > model.cfg.n_ctx:
        raise AccumulateError(
            f"context_length {cfg.context_length} exceeds model {cfg.model!r} n_ctx={model.cfg.n_ctx}")
    return model, q_saes, list(k_saes)


def hook_widths(model, saes) -> dict[str, int]:
    """{hook: width} of the SAEs' hooks that exist on the model, from ONE forward pass of one token that
    stops after the last of them (the per-SAE check ran a full forward pass per SAE and side: ≈ 0.5 s
    each for GPT-2 Small, 5 s per job with five upstream SAEs on both sides). A hook's width is the
    product of its trailing dims (head axes flattened head-major), as `fra_core.sae.check_sae_fits_model`."""
    import math

    hooks = {getattr(s.cfg.metadata, "hook_name", None) for s in saes} & set(model.hook_dict)
    if not hooks:
        return {}
    layers = [int(h.split(".")[1]) for h in hooks if h.startswith("blocks.") and h.split(".")[1].isdigit()]
    stop = max(layers) + 1 if layers and len(layers) == len(hooks) else None
    tokens = torch.zeros((1, 1), dtype=torch.long, device=model.cfg.device)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in hooks, stop_at_layer=stop)
    return {h: math.prod(cache[h].shape[2:]) for h in hooks if h in cache}


def _architecture(sae) -> str | None:
    arch = getattr(sae.cfg, "architecture", None)
    return arch() if callable(arch) else arch


def effective_k(k_active: int | None, *sides) -> int | None:
    """The engine's K for a configured `k_active`: None (every active feature, no truncation) for 0 or
    None; for a cap n, n capped by what can be active. A TopK SAE has at most k active features per
    position, so K = Σ k over a side's SAEs loses nothing, and the engine's pair block (T²·K²) shrinks
    from 64² to e.g. 3² cells' worth for the demo SAE."""
    if not k_active:
        return None  # the engine keeps the batch's largest L0 per side: exact, and never more than needed
    bound = 0
    for saes in sides:
        ks = [getattr(s.cfg, "k", None) if _architecture(s) == "topk" else None for s in saes]
        if any(not isinstance(k, int) or k <= 0 for k in ks):
            return k_active  # an SAE with no hard L0 bound (ReLU, JumpReLU): keep the configured K
        bound = max(bound, sum(ks))
    return max(1, min(k_active, bound))


def run_sources(cfg: AccumulateFRAConfig, q_saes, k_saes) -> tuple[list[dict], list[int], list[int]]:
    """The run's dictionary sources (one per distinct SAE ref) and each side's engine-source → src map."""
    q_refs = list(cfg.q_saes)
    k_refs = list(cfg.k_saes) if cfg.k_saes else q_refs
    sources, index = [], {}
    for ref, sae in zip(q_refs + k_refs, list(q_saes) + list(k_saes)):
        if ref not in index:
            index[ref] = len(sources)
            sources.append({"src": len(sources), "kind": "sae", "name": ref, "sae_id": ref,
                            "hook": sae.cfg.metadata.hook_name, "d_sae": int(sae.cfg.d_sae)})
    return sources, [index[r] for r in q_refs], [index[r] for r in k_refs]


class ShardBuffer:
    """What one shard accumulates: pair aggregates, example candidates, sample rows, feature counts and
    the tokens each feature fires on (token_str: token ids → strings)."""

    def __init__(self, n_sources: int, d_max: int, examples_per_pair: int, d_vocab: int, token_str):
        self.tables, self.examples, self.samples = [], [], []
        self.counts = torch.zeros(n_sources, d_max, dtype=torch.long)
        self.tokens_seen = torch.zeros(n_sources, dtype=torch.long)
        self.feature_tokens, self.token_str = FeatureTokenCounter(d_max, d_vocab), token_str
        self.k = examples_per_pair
        self.acts = FeatureActCollector(d_max)
        self.share: dict[int, list[float]] = {}  # head → [Σ|F|, Σ|N|] (fra_core.fra.share)

    def add(self, table, ex: Examples | None, inverse=None) -> None:
        self.tables.append(table)
        if ex is not None and self.k > 0:
            self.examples.append(ex.top(self.k, inverse))
        if len(self.tables) >= 8:  # keep memory bounded: fold batches as we go
            self.tables = [merge(self.tables)]
            if self.examples:
                self.examples = [Examples.cat(self.examples).top(self.k)]

    def arrow(self, codec: PairCodec, layer: int) -> dict[str, pa.Table]:
        table = merge(self.tables) if self.tables else None
        pairs = pairs_table(table, codec, layer) if table is not None else contracts.PAIRS_SCHEMA.empty_table()
        ex = Examples.cat(self.examples).top(self.k) if self.examples else None
        src, feat = self.counts.nonzero(as_tuple=True)
        features = pa.table({"src": pa.array(src.numpy().astype(np.uint16)),
                             "feature": pa.array(feat.numpy().astype(np.uint32)),
                             "n_active": pa.array(self.counts[src, feat].numpy().astype(np.uint64)),
                             "n_tokens": pa.array(self.tokens_seen[src].numpy().astype(np.uint64))})
        samples = pa.table({"sample": pa.array([s for s, _ in self.samples], pa.uint64()),
                            "n_tokens": pa.array([len(t) for _, t in self.samples], pa.uint16()),
                            "tokens": pa.array([t for _, t in self.samples], pa.list_(pa.string()))},
                           schema=contracts.SAMPLES_SCHEMA)
        return {"pairs": pairs, "examples": examples_table(ex, codec, layer), "samples": samples, "features": features,
                "feature_tokens": self.feature_tokens.table(self.token_str), **self.acts.tables()}


def _count_features(buf: ShardBuffer, side, src_map: list[int], tokens: torch.Tensor) -> None:
    """Active-token counts per (run source, feature) from one engine side (ids/coef [batch, pos, K]),
    and the tokens (tokens [batch, pos]) each feature is active on."""
    active = (side.coef != 0).cpu()
    gid = side.ids.cpu()[active]
    offs = torch.tensor(side.offsets)
    s = torch.searchsorted(offs, gid, right=True) - 1
    run_src, feature = torch.tensor(src_map)[s], gid - offs[s]
    flat = run_src * buf.counts.shape[1] + feature
    buf.counts += torch.bincount(flat, minlength=buf.counts.numel()).view_as(buf.counts)
    tokens = tokens.cpu()
    prev = torch.cat([torch.full_like(tokens[:, :1], -1), tokens[:, :-1]], dim=1)
    per_slot = lambda t: t[:, :, None].expand(active.shape)[active]  # noqa: E731
    buf.feature_tokens.add(run_src, feature, per_slot(tokens), per_slot(prev))
    n_tokens = side.ids.shape[0] * side.ids.shape[1]
    for src in set(src_map):
        buf.tokens_seen[src] += n_tokens


def token_groups(model, items: list[tuple[int, str]], cfg, buf) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Tokenize a batch's (sample, text) items, record each sample's token strings in `buf.samples`, and
    group them by token length: [(sample ids [n], tokens [n, pos])], one engine call each, no padding
    (padding would change a bidirectional head's scores)."""
    groups: dict[int, list[tuple[int, torch.Tensor]]] = {}
    for sample, text in items:
        toks = model.to_tokens(text, prepend_bos=cfg.prepend_bos, truncate=True)[0, : cfg.context_length]
        buf.samples.append((sample, [str(t) for t in model.to_str_tokens(toks)] if len(toks) else []))
        if len(toks) >= 1:
            groups.setdefault(len(toks), []).append((sample, toks))
    return [(torch.tensor([s for s, _ in g]), torch.stack([t for _, t in g])) for g in groups.values()]


def process_batch(model, items: list[tuple[int, str]], cfg, heads, q_saes, k_saes, options, codec: PairCodec,
                  q_map: list[int], k_map: list[int], buf: ShardBuffer, completeness: dict | None = None) -> None:
    """completeness: an empty dict on the run's first batch → filled with the measured values (the job
    fails above 1e-4 before anything is stored); None afterwards."""
    compute_fra = _fra_api()[0]
    qd = q_saes[0] if len(q_saes) == 1 else q_saes
    kd = k_saes[0] if len(k_saes) == 1 else k_saes
    for ids, tokens in token_groups(model, items, cfg, buf):
        res = compute_fra(model, tokens, cfg.layer, heads, qd, kd, options)
        from fra_core.fra.share import add_sums, share_sums

        add_sums(buf.share, share_sums(res))  # the feature×feature share of |score|, summed per head
        if completeness is not None and not completeness:
            from fra_core.fra.completeness import CompletenessError, check

            try:
                completeness.update(check(res, f"accumulation job (layer {cfg.layer})"))
            except CompletenessError as exc:
                raise AccumulateError(str(exc)) from exc
            if options.k_active is not None:  # a user cap: what the truncation node carries (first batch)
                from fra_core.fra.validate import error_budget

                budget = error_budget(res)
                completeness["_truncation_share"] = budget["truncation_share"] if res.truncated else 0.0
        e = {k: v.cpu() for k, v in res.entries.items()}
        key = codec.encode(e["head"], torch.tensor(q_map)[e["q_source"]], e["q_feature"],
                           torch.tensor(k_map)[e["k_source"]], e["k_feature"])
        diag = e["query_pos"] == e["key_pos"]
        inverse = torch.unique(key, return_inverse=True)  # shared by the stats and the examples
        ex = Examples(key, ids[e["batch"]], e["query_pos"], e["key_pos"], e["value"].float())
        buf.add(reduce_by_key(key, entry_stats(e["value"], diag), inverse), ex, inverse)
        _count_features(buf, res.q_side, q_map, tokens)
        buf.acts.add(res.q_side, q_map, ids)
        if not set(k_map) & set(q_map):  # distinct key-side dictionaries: count them too
            _count_features(buf, res.k_side, k_map, tokens)
            buf.acts.add(res.k_side, k_map, ids)


def record_completeness(job_dir: Path, measured: dict) -> None:
    """Merge a process's first-batch completeness ({layer: {head: err}}) into run.json, keeping the worst
    value per (layer, head): a resumed run, and every Ray worker, adds what it measured."""
    from fra_core.fra.completeness import merge

    info = contracts.read_run_info(job_dir)
    if measured and merge(info.get("completeness"), measured) != info.get("completeness"):
        contracts.write_run_info(job_dir, {**info, "completeness": merge(info.get("completeness"), measured)})


def record_feature_share(job_dir: Path, part: int, sums: dict) -> None:
    """Store one shard's {layer: {head: [Σ|F|, Σ|N|]}} under run.json's "feature_share_parts" (keyed by shard,
    so a recomputed shard replaces its own part) and the run's "feature_share" {"<layer>": {"<head>": share}}
    (`fra_core.fra.share`: |feature×feature| / (|feature×feature| + |the rest|) of the scores)."""
    from fra_core.fra.share import merge_parts

    if not any(sums.values()):
        return
    info = contracts.read_run_info(job_dir)
    parts = {**info.get("feature_share_parts", {}),
             str(part): {str(L): {str(h): list(v) for h, v in per.items()} for L, per in sums.items()}}
    contracts.write_run_info(job_dir, {**info, "feature_share_parts": parts, "feature_share": merge_parts(parts)})


class TopMRunner:
    """statistics='top_m': the engine's top-m pairs per cell of one layer, aggregated per pair."""

    def __init__(self, cfg: AccumulateFRAConfig, model=None, q_saes=None, k_saes=None):
        self.cfg = cfg
        self.model, self.q_saes, self.k_saes, self.heads = load_parts(cfg, model, q_saes, k_saes)
        self.sources, self.q_map, self.k_map = run_sources(cfg, self.q_saes, self.k_saes)
        self.completeness: dict = {}  # {layer: {head: err}} of this process's first batch
        self.codec = PairCodec(self.model.cfg.n_heads, len(self.sources), max(s["d_sae"] for s in self.sources))
        FRAOptions = _fra_api()[1]
        self.options = FRAOptions(k_active=effective_k(cfg.k_active, self.q_saes, self.k_saes), top_m=cfg.top_m,
                                  exclude_diagonal=not cfg.include_diagonal, exclude_bos_key=cfg.exclude_bos_key,
                                  exclude_bos_query=cfg.exclude_bos_query, row_centre=cfg.row_centre,
                                  attention_weighted=cfg.attention_weighted)

    def run_info(self) -> dict[str, Any]:
        return {"code_version": fra_core.__version__, "sources": self.sources, "heads": self.heads,
                "n_heads": self.model.cfg.n_heads, "model": self.cfg.model, "statistics": "top_m"}

    def token_str(self, ids) -> list[str]:
        return [str(t) for t in self.model.to_str_tokens(torch.tensor(ids))]

    def new_buffer(self) -> ShardBuffer:
        return ShardBuffer(len(self.sources), self.codec.d_max, self.cfg.examples_per_pair, self.model.cfg.d_vocab,
                           self.token_str)

    def process(self, items, buf: ShardBuffer) -> None:
        """One batch; the process's first one measures completeness (the job fails above 1e-4 before
        anything is stored)."""
        process_batch(self.model, items, self.cfg, self.heads, self.q_saes, self.k_saes, self.options, self.codec,
                      self.q_map, self.k_map, buf, completeness=None if self.completeness else self.completeness)

    def shard_computed(self, buf, job_dir: Path) -> None:
        """Merge what this process measured into run.json (worst value per head: every resume and every
        Ray worker adds its own first batch)."""
        measured = dict(self.completeness)
        share = measured.pop("_truncation_share", None)
        record_completeness(job_dir, measured)
        if buf.samples:
            record_feature_share(job_dir, buf.samples[0][0] // self.cfg.shard_size, {self.cfg.layer: buf.share})
        if share is not None:  # k_active capped K: the truncation node's share of mean |score|, per layer
            info = contracts.read_run_info(job_dir)
            shares = {**info.get("truncation_share", {}), str(self.cfg.layer): max(
                share, info.get("truncation_share", {}).get(str(self.cfg.layer), 0.0))}
            contracts.write_run_info(job_dir, {**info, "k_active": self.cfg.k_active, "truncation_share": shares})
