"""statistics='all_pairs': exact statistics over every feature pair, for several layers in one run.

Per batch and layer, `fra_core.fra.allpairs_batch.batch_cotable` gives the batch's co-activation table
(n, Σx, Σ|x|, max/min x and their cells, diagonal apart; head-independent unless attention-weighted or
rotary) and `batch_marginals` the per-feature marginals, the named nodes' totals and the measured
completeness max |Σ terms − score| / max |score| of each head. The shard reduces its batches' tables
into one (in sample order, so ties keep the earliest cell). What the shard writes per layer:

- head-independent layer (no attention weighting, no rotary): the layer's co-activation table ONCE for all
  its heads, `coact` (COACT_SCHEMA: one row per distinct (q_src, q_feat, k_src, k_feat), cells decoded
  into sample / query / key), and `proj` (PROJ_SCHEMA): per head and side, the float64 vector of every
  feature that table uses (q = U_f[h], k = V_g[h] / attn_scale), so G_h[f, g] = q.vec · k.vec. No per-head
  `pairs` / `examples` rows: the reader applies G (`fra_core.accumulate.coact.expand_coact`, the store's
  SQL), and the shard's size scales with distinct pairs, not with pairs × heads.
- per-head layer (attention-weighted or rotary): each head's `pairs` and `examples` rows, G applied here
  (`head_tables`); examples are each pair's max cell and min cell over the shard.

Marginals, node totals, features, feature tokens, feature activations and samples are written as for
every run. The float64 projected decoder rows of each layer (`Projector`) live for the whole job and are
filled in fixed-size chunks, so a resumed job computes the same numbers as an uninterrupted one. Feature
activity is counted once per (batch, SAE), even when an upstream SAE serves several layers.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

import fra_core
from fra_core import contracts
from fra_core.accumulate.coact import layer_tables, run_ids
from fra_core.accumulate.config import AccumulateError, AccumulateFRAConfig
from fra_core.accumulate.topm import (
    ShardBuffer,
    effective_k,
    load_model_and_saes,
    record_feature_share,
    run_sources,
    token_groups,
)
from fra_core.fra.aggregate import PairCodec, compact_ids
from fra_core.fra.share import add_sums


def layer_dictionaries(refs: list[str], saes: list, layer: int) -> list[int]:
    """Indices of the SAEs that form layer `layer`'s side: its own head-input SAE, else every upstream
    hook_z SAE (l < layer)."""
    hooks = [s.cfg.metadata.hook_name for s in saes]
    own = [i for i, h in enumerate(hooks) if h in (f"blocks.{layer}.ln1.hook_normalized", f"blocks.{layer}.hook_resid_pre")]
    if len(own) > 1:
        raise AccumulateError(f"layer {layer}: several SAEs on its head input: {[refs[i] for i in own]}")
    if own:
        return own
    up = [i for i, h in enumerate(hooks) if h.endswith(".attn.hook_z") and int(h.split(".")[1]) < layer]
    if not up:
        raise AccumulateError(f"layer {layer}: no SAE among {refs} (hooks {hooks}) sits on its head input "
                              f"(blocks.{layer}.ln1.hook_normalized / hook_resid_pre or upstream hook_z, l < {layer})")
    return up


class LayerPlan:
    """One layer of the run: heads, dictionaries (engine arguments), local → run source maps, projectors."""

    def __init__(self, model, layer: int, cfg, q_refs, q_saes, k_refs, k_saes, q_map, k_map):
        from fra_core.fra.allpairs_batch import Projector
        from fra_core.fra.options import check_layer_heads

        self.layer = layer
        self.heads = check_layer_heads(model, layer, list(cfg.heads) or None)
        qi, ki = layer_dictionaries(q_refs, q_saes, layer), layer_dictionaries(k_refs, k_saes, layer)
        self.qd = q_saes[qi[0]] if len(qi) == 1 else [q_saes[i] for i in qi]
        self.kd = k_saes[ki[0]] if len(ki) == 1 else [k_saes[i] for i in ki]
        self.q_map, self.k_map = [q_map[i] for i in qi], [k_map[i] for i in ki]
        self.projectors = (Projector(model, layer, self.qd, "Q", self.heads),
                           Projector(model, layer, self.kd, "K", self.heads))


class AllPairsShard:
    """A shard of an all-pair run: a base ShardBuffer (samples, feature counts, feature tokens), plus per
    layer the co-activation table of the whole shard (head-independent unless attention-weighted or
    rotary: then written once as coact + proj; per-head tables get each head's G when the shard is
    written), marginals, node totals and completeness maxima."""

    # batch tables are reduced together in one pass (in sample order) once there are FOLD of them and their
    # rows outnumber GROWTH × the last reduction's: held memory stays ≤ ≈ (1 + GROWTH) × the shard's table,
    # and a row is reduced ≤ 1 + 1/GROWTH times on average (folding every 8 tables into the growing table
    # re-read it each time: GPT-2-shaped shards of 16 samples spent ≈ 2 s per sample merging)
    FOLD, GROWTH = 16, 3

    def __init__(self, runner: "AllPairsRunner"):
        self.k, self.runner = runner.cfg.examples_per_pair, runner
        self.base = ShardBuffer(len(runner.sources), runner.codec.d_max, self.k,
                                              runner.model.cfg.d_vocab, runner.token_str)
        self.samples = self.base.samples  # the job loop counts and writes these
        self.co: dict[int, list[dict]] = {p.layer: [] for p in runner.plans}  # layer → tables, in sample order
        self.template: dict[int, object] = {}  # layer → a BatchStats (heads, spans, offsets; no tensors)
        self.marg: list[tuple[int, str, torch.Tensor, torch.Tensor]] = []  # (layer, side, run key, vals)
        self.nodes: dict[tuple[int, str], tuple[list[str], torch.Tensor]] = {}
        self.err: dict[int, torch.Tensor] = {}  # layer → [head_index, 2]: max |error|, max |score|
        self.share: dict[int, dict] = {p.layer: {} for p in runner.plans}  # layer → head → [Σ|F|, Σ|N|]
        self.folded: dict[int, int] = {}  # layer → rows of its first table when that is a reduction

    def add_table(self, layer: int, co: dict | None, n_col_ids: int) -> None:
        from fra_core.fra.allpairs_merge import reduce_tables

        if co is None:
            return
        tables = self.co[layer]
        tables.append(co)
        fresh = sum(len(t["key"]) for t in tables) - self.folded.get(layer, 0)
        if len(tables) >= self.FOLD and fresh >= self.GROWTH * self.folded.get(layer, 0):
            self.co[layer] = [reduce_tables(tables, unique_keys=True, n_col_ids=n_col_ids)]  # distinct keys each
            self.folded[layer] = len(self.co[layer][0]["key"])

    def arrow(self, codec: PairCodec, layer: int) -> dict[str, pa.Table]:
        from fra_core.fra.allpairs_merge import reduce_tables

        out = self.base.arrow(codec, layer)  # samples, features, feature_tokens (no pair tables here)
        got = {kind: [] for kind in ("pairs", "examples", "coact", "proj")}
        for L, tables in self.co.items():
            template = self.template.get(L)  # set with the layer's first table: its spans give Gk
            co = reduce_tables(tables, unique_keys=True, n_col_ids=template.spans[1] if template else None)
            if co is None:
                continue
            self.co[L], plan = [], self.runner.plan(L)
            if template.per_head:  # attention-weighted or rotary: each head's own table
                for p, e in self.runner.head_tables(L, template, co, self.k):
                    got["pairs"].append(p), got["examples"].append(e)
            else:  # the layer's table once, and each head's projected rows (G is applied by the reader)
                c, p = layer_tables(L, plan.heads, template, co, plan.projectors, plan.q_map, plan.k_map,
                                    self.runner.cell_span)
                got["coact"].append(c), got["proj"].append(p)
            del co
        for kind, parts in got.items():
            out[kind] = pa.concat_tables(parts) if parts else contracts.KINDS[kind].empty_table()
        out["marginals"], out["node_totals"] = self._marginals(), self._node_totals()
        return out

    def _marginals(self) -> pa.Table:
        parts = {}
        for L, side, key, vals in self.marg:
            parts.setdefault((L, side), []).append((key, vals))
        cols = {f.name: [] for f in contracts.MARGINALS_SCHEMA}
        D, S = self.runner.codec.d_max, len(self.runner.sources)
        for (L, side), items in sorted(parts.items()):
            uniq, inv = compact_ids(torch.cat([k for k, _ in items]), self.runner.model.cfg.n_heads * S * D)
            v = torch.zeros(len(uniq), 3, dtype=torch.float64).index_add_(0, inv, torch.cat([x for _, x in items]))
            feat, rest = uniq % D, uniq // D
            cols["layer"].append(np.full(len(uniq), L)), cols["side"].append(np.full(len(uniq), side, dtype=object))
            cols["head"].append((rest // S).numpy()), cols["src"].append((rest % S).numpy())
            cols["feature"].append(feat.numpy()), cols["n"].append(v[:, 0].round().numpy())
            cols["sum"].append(v[:, 1].numpy()), cols["abs_sum"].append(v[:, 2].numpy())
        return _table(cols, contracts.MARGINALS_SCHEMA)

    def _node_totals(self) -> pa.Table:
        cols = {f.name: [] for f in contracts.NODE_TOTALS_SCHEMA}
        for (L, side), (names, t) in sorted(self.nodes.items()):
            heads = self.runner.plan(L).heads
            for hi, h in enumerate(heads):
                cols["layer"].append(np.full(len(names), L)), cols["head"].append(np.full(len(names), h))
                cols["side"].append(np.full(len(names), side, dtype=object))
                cols["node"].append(np.array(names, dtype=object)), cols["n"].append(t[hi, :, 0].round().numpy())
                cols["sum"].append(t[hi, :, 1].numpy()), cols["abs_sum"].append(t[hi, :, 2].numpy())
                cols["sum_vs_features"].append(t[hi, :, 3].numpy())
        return _table(cols, contracts.NODE_TOTALS_SCHEMA)


def _table(cols: dict[str, list], schema: pa.Schema) -> pa.Table:
    if not cols[schema.names[0]]:
        return schema.empty_table()
    return pa.table({f.name: pa.array(np.concatenate(cols[f.name]).astype(f.type.to_pandas_dtype())
                                      if not pa.types.is_string(f.type) else list(np.concatenate(cols[f.name])),
                                      f.type) for f in schema})


def _arrow(cols: dict[str, np.ndarray], schema: pa.Schema) -> pa.Table:
    """Numeric columns (numpy) → an Arrow table of `schema` (a column already of the right dtype is not copied)."""
    return pa.table({f.name: pa.array(np.asarray(cols[f.name], dtype=f.type.to_pandas_dtype()), f.type)
                     for f in schema})


class AllPairsRunner:
    """The all-pair job for `fra_core.accumulate.run.accumulate`: setup, one batch, one written shard."""

    def __init__(self, cfg: AccumulateFRAConfig, model=None, q_saes=None, k_saes=None):
        from fra_core.fra import FRAOptions

        self.cfg = cfg
        self.model, self.q_saes, self.k_saes = load_model_and_saes(cfg, model, q_saes, k_saes)
        self.sources, q_map, k_map = run_sources(cfg, self.q_saes, self.k_saes)
        q_refs = list(cfg.q_saes)
        k_refs = list(cfg.k_saes) if cfg.k_saes else q_refs
        self.plans = [LayerPlan(self.model, L, cfg, q_refs, self.q_saes, k_refs, self.k_saes, q_map, k_map)
                      for L in cfg.run_layers]
        self.codec = PairCodec(self.model.cfg.n_heads, len(self.sources), max(s["d_sae"] for s in self.sources))
        self.options = FRAOptions(k_active=effective_k(cfg.k_active, self.q_saes, self.k_saes), top_m=None,
                                  exclude_diagonal=not cfg.include_diagonal, exclude_bos_key=cfg.exclude_bos_key,
                                  exclude_bos_query=cfg.exclude_bos_query, row_centre=cfg.row_centre,
                                  attention_weighted=cfg.attention_weighted)
        # completeness maxima measured by this process: {"layer": {"head": [max |err|, max |score|]}}
        self.detail: dict[str, dict[str, list[float]]] = {}

    def plan(self, layer: int) -> LayerPlan:
        return next(p for p in self.plans if p.layer == layer)

    def token_str(self, ids) -> list[str]:
        return [str(t) for t in self.model.to_str_tokens(torch.tensor(ids))]

    def new_buffer(self) -> AllPairsShard:
        return AllPairsShard(self)

    def run_info(self) -> dict:
        heads = {str(p.layer): p.heads for p in self.plans}
        return {"code_version": fra_core.__version__, "sources": self.sources, "model": self.cfg.model,
                "heads": self.plans[0].heads if len(self.plans) == 1 else heads, "layer_heads": heads,
                "layers": [p.layer for p in self.plans], "n_heads": self.model.cfg.n_heads, "statistics": "all_pairs"}

    @property
    def completeness(self) -> dict:
        """{layer: {head: max |Σ terms − score| / max |score|}} over every cell this process computed."""
        return _ratios(self.detail)

    def shard_computed(self, buf: AllPairsShard, job_dir: Path) -> None:
        """Fold the shard's completeness maxima into this process's record, then into run.json (max is
        order-free: resumes and Ray workers agree); fail above the engine's limit, naming layer and head."""
        from fra_core.fra.completeness import LIMIT

        for L, t in buf.err.items():
            per = self.detail.setdefault(str(L), {})
            for hi, h in enumerate(self.plan(L).heads):
                old = per.get(str(h), [0.0, 0.0])
                per[str(h)] = [max(old[0], float(t[hi, 0])), max(old[1], float(t[hi, 1]))]
        info = contracts.read_run_info(job_dir)
        detail = _max_detail(info.get("completeness_detail", {}), self.detail)
        contracts.write_run_info(job_dir, {**info, "completeness": _ratios(detail), "completeness_detail": detail})
        if buf.samples:
            record_feature_share(job_dir, buf.samples[0][0] // self.cfg.shard_size, buf.share)
        bad = {(L, h): r for L, hs in self.completeness.items() for h, r in hs.items() if not r <= LIMIT}
        if bad:
            (L, h), r = max(bad.items(), key=lambda kv: kv[1])
            raise AccumulateError(f"accumulation job: layer {L} head {h}: Σ FRA terms differ from hook_attn_scores by "
                                  f"{r:.2e} of max |score| (limit {LIMIT:g}); nothing of this shard counts as exact")

    def process(self, items: list[tuple[int, str]], buf: AllPairsShard) -> None:
        from fra_core.fra.allpairs_batch import batch_cotable_and_marginals

        cfg, model = self.cfg, self.model
        for ids, tokens in token_groups(model, items, cfg, buf):  # one engine call per token length
            counted: set[int] = set()
            for plan in self.plans:
                bs, mg = batch_cotable_and_marginals(model, tokens, plan.layer, plan.heads, plan.qd, plan.kd,
                                                     self.options, plan.projectors)
                buf.add_table(plan.layer, self._shard_cells(bs.co, ids, tokens.shape[1]), bs.spans[1])
                buf.template.setdefault(plan.layer, dataclasses.replace(bs, sides=(), co=None))
                add_sums(buf.share[plan.layer], mg["share"])  # from the marginals' float64 side sums
                self._add_marginals(buf, plan, bs, mg)
                for side, src_map in ((bs.sides[0], plan.q_map), (bs.sides[1], plan.k_map)):
                    new = set(src_map) - counted
                    count_new_features(buf.base, side, src_map, tokens, counted)
                    if new:  # the Feature page's activations, once per source (as the counts)
                        buf.base.acts.add(side, src_map, ids, only=new)
            self._check_memory(buf)

    def _check_memory(self, buf: AllPairsShard) -> None:
        """Fail now, naming shard_size, if this shard's projected peak exceeds the free memory."""
        from fra_core.accumulate.memory import check_shard_memory, free_memory_bytes, tables_bytes

        rows = {True: 0, False: 0}  # per-head table rows (one per pair and head), coact rows (one per pair)
        for L, tables in buf.co.items():
            if L in buf.template:
                rows[buf.template[L].per_head] += sum(len(t["key"]) for t in tables)
        held = sum(tables_bytes(tables) for tables in buf.co.values())
        shard = min(self.cfg.shard_size, self.cfg.n_samples)
        check_shard_memory(held, rows[True], len(buf.samples), shard, self.cfg.shard_size, free_memory_bytes(),
                           coact_rows=rows[False])

    @property
    def cell_span(self) -> int:
        """Positions per sample in the shard's cell codes (sample · P + i) · P + j: the longest context."""
        return max(int(self.cfg.context_length), 1)

    def _shard_cells(self, co: dict | None, ids: torch.Tensor, T: int) -> dict | None:
        """The batch's cell codes (b · T + i) · T + j → (sample id · P + i) · P + j (`cell_span`), so
        tables of every batch of a shard reduce together."""
        from fra_core.fra.allpairs import decode_cell

        if co is None:
            return None
        P, ids = self.cell_span, ids.to(co["key"].device)
        for c in ("mx_c", "mn_c"):
            if P == T:  # (ids[b] · P + i) · P + j = code + (ids[b] − b) · P²: one add (one division for b)
                shift = (ids - torch.arange(len(ids), device=ids.device)) * (P * P)
                co[c] = co[c] + (shift[0] if len(ids) == 1 else shift[co[c] // (T * T)])
            else:
                b, i, j = decode_cell(co[c], T)
                co[c] = (ids[b] * P + i) * P + j
        return co

    def head_tables(self, layer: int, template, co: dict, k: int):
        """(pairs, examples) Arrow tables of each head of a layer from the shard's co-activation table:
        G_h applied once per pair and head. Examples: the pair's max cell, and its min cell where that is
        another cell (k >= 2); k = 1: the one of the two with the larger |value| (ties: the max)."""
        from fra_core.fra.allpairs_batch import head_of, pair_ids

        plan, P = self.plan(layer), self.cell_span
        shared = None if template.per_head else pair_ids(co, template.spans)
        ids = None  # the pairs' run (source, feature) columns: once for a head-independent table
        for hi, h in enumerate(plan.heads):
            st = head_of(template, co, hi, plan.projectors, shared)
            if st is None or len(st["n"]) == 0:
                continue
            st = {c: v.cpu() for c, v in st.items()}
            if ids is None or template.per_head:
                qs, qf = run_ids(st["q_gid"], template.q_offsets, plan.q_map)
                ks, kf = run_ids(st["k_gid"], template.k_offsets, plan.k_map)
                ids = {"q_src": qs.numpy().astype(np.uint16), "q_feat": qf.numpy().astype(np.uint32),
                       "k_src": ks.numpy().astype(np.uint16), "k_feat": kf.numpy().astype(np.uint32),
                       "layer": np.full(len(qs), layer, dtype=np.uint16)}
            keycols = {**ids, "head": np.full(len(st["n"]), h, dtype=np.uint16)}
            yield (_arrow({**keycols, **{c: st[c].numpy() for c in contracts.PAIRS_SCHEMA.names[6:]}},
                          contracts.PAIRS_SCHEMA),
                   _arrow(self._examples(keycols, st, k, P), contracts.EXAMPLES_SCHEMA))

    @staticmethod
    def _examples(keycols: dict, st: dict, k: int, P: int) -> dict:
        if k <= 0:
            return {c: v[:0] for c, v in keycols.items()} | {c: np.zeros(0) for c in ("sample", "q_pos", "k_pos",
                                                                                        "value")}
        if k == 1:
            take_min = st["min"].abs() > st["max"].abs()
            cells, value = torch.where(take_min, st["min_c"], st["max_c"]), torch.where(take_min, st["min"], st["max"])
            cols = dict(keycols)
        else:  # every pair's max cell, then the min cells that are other cells
            other = (st["min_c"] != st["max_c"]).nonzero().squeeze(1)
            cells = torch.cat([st["max_c"], st["min_c"][other]])
            value = torch.cat([st["max"], st["min"][other]])
            o = other.numpy()
            cols = {c: np.concatenate([v, v[o]]) for c, v in keycols.items()}
        return {**cols, "sample": (cells // (P * P)).numpy(), "q_pos": ((cells // P) % P).numpy(),
                "k_pos": (cells % P).numpy(), "value": value.numpy()}

    def _add_marginals(self, buf: AllPairsShard, plan: LayerPlan, bs, mg: dict) -> None:
        D, S = self.codec.d_max, len(self.sources)
        for s, side_name, offsets, src_map in (("q", "query", bs.q_offsets, plan.q_map),
                                               ("k", "key", bs.k_offsets, plan.k_map)):
            key, vals = mg["features"][s]
            G = offsets[-1] + 1
            src, feat = run_ids(key % G, offsets, src_map)
            head = torch.tensor(plan.heads, device=key.device)[key // G]
            buf.marg.append((plan.layer, side_name, ((head * S + src) * D + feat).cpu(), vals.cpu()))
            names, tot = mg["nodes"][s]
            old = buf.nodes.get((plan.layer, side_name))
            buf.nodes[(plan.layer, side_name)] = (names, tot.cpu() if old is None else old[1] + tot.cpu())
        err = mg["completeness"].cpu()
        buf.err[plan.layer] = err if plan.layer not in buf.err else torch.maximum(buf.err[plan.layer], err)


def count_new_features(buf, side, src_map: list[int], tokens: torch.Tensor, counted: set[int]) -> None:
    """Active-token counts and feature tokens of a ShardBuffer (as `accumulate.run._count_features`) for the run
    sources of this side not yet counted in this batch (an upstream SAE can serve several layers)."""
    new = sorted(set(src_map) - counted)
    if not new:
        return
    active = (side.coef != 0).cpu()
    gid = side.ids.cpu()[active]
    offs = torch.tensor(side.offsets)
    s = torch.searchsorted(offs, gid, right=True) - 1
    run_src, feature = torch.tensor(src_map)[s], gid - offs[s]
    keep = torch.isin(run_src, torch.tensor(new))
    mask = active.clone()
    mask[active] = keep
    run_src, feature = run_src[keep], feature[keep]
    buf.counts += torch.bincount(run_src * buf.counts.shape[1] + feature,
                                 minlength=buf.counts.numel()).view_as(buf.counts)
    tokens = tokens.cpu()
    prev = torch.cat([torch.full_like(tokens[:, :1], -1), tokens[:, :-1]], dim=1)
    per_slot = lambda t: t[:, :, None].expand(mask.shape)[mask]  # noqa: E731
    buf.feature_tokens.add(run_src, feature, per_slot(tokens), per_slot(prev))
    for src in new:
        buf.tokens_seen[src] += tokens.shape[0] * tokens.shape[1]
    counted.update(new)


def _ratios(detail: dict) -> dict:
    return {L: {h: (e / sc if sc > 0 else e) for h, (e, sc) in hs.items()} for L, hs in detail.items()}


def _max_detail(a: dict, b: dict) -> dict:
    out = {L: {h: list(v) for h, v in hs.items()} for L, hs in a.items()}
    for L, hs in b.items():
        for h, (e, sc) in hs.items():
            old = out.setdefault(L, {}).get(h, [0.0, 0.0])
            out[L][h] = [max(old[0], e), max(old[1], sc)]
    return out
