"""Exact Feature-Resolved Attention (FRA): the scores of a head split into feature-pair terms.

Public API (pure torch; import this package lazily from pages)::

    from fra_core.fra import FRAOptions, compute_fra, pair_aggregates

    result = compute_fra(model, tokens, layer, heads=None | int | [ints], q_dict=sae, k_dict=None,
                         options=FRAOptions(k_active=64, top_m=8, exclude_diagonal=True, ...))
    result.entries          # sparse pair table: dict of 1-D tensors, columns ENTRY_FIELDS:
                            #   batch, head, query_pos, key_pos, q_source, q_feature, k_source, k_feature
                            #   (int32: cast with .long() before building int64 keys), value (float)
    result.node_terms(b, hi)        # [query_pos, key_pos, n_q_nodes, n_k_nodes] dense node×node terms
    result.q_node_names / k_node_names  # node 0 = "features", then sae_error, b_dec, truncation, ln1.b, bias…
    result.target(b, hi)            # actual hook_attn_scores, transformed like the terms
    result.kept_sum / ff_rest(b, hi)    # Σ kept pairs per cell / the feature×feature rest
    result.completeness_error()     # max |Σ terms − scores| / max |scores|   (≈ 1e-7 in float32; never NaN)
    result.cell_terms / frozen / upcast_from / assumptions()   # ALiBi + soft-cap terms, frozen scales
    pair_aggregates(result)         # per (head, q feature, k feature): n, sum, abs_sum, max, min, best example
    merge_pair_tables(tables, q_offsets, k_offsets)

Dictionaries (`q_dict`, `k_dict`; k_dict None → same as q_dict) are `sae_lens.SAE` objects, classified
by `sae.cfg.metadata.hook_name`: one SAE on `blocks.L.ln1.hook_normalized` or `blocks.L.hook_resid_pre`
(LN scale σ frozen), or a list of upstream `blocks.l.attn.hook_z` SAEs (l < L, mapped through W_O[l]).
Activations come from `sae.encode` (standard / TopK / JumpReLU …); SAEs with activation normalisation
are rejected (fold it first). Models (`guard.py` is an allow-list over every HookedTransformerConfig field;
`arch.py` models what TL does around q·k): LN / LNPre / RMS / RMSPre / no norm, folded or unfolded ln1,
pre- or post-norm blocks (OLMo 2), standard / rotary (every TL rotary variant) / shortformer / ALiBi
positions, GQA, QK-norm (σ_q, σ_k frozen), post-attention norms of upstream layers, soft-capping (one
"softcap" cell term), the layer's real mask (causal, sliding window, bidirectional), parallel blocks.
Anything else that changes layers ≤ L raises `FRAInputError` naming the field and value. Half-precision
models are decomposed on a float32 copy (`result.upcast_from`); `result.frozen` lists the frozen scales.
The architecture matrix (`families.py`, scripts/architecture_table.py) checks each family.

Exactness: Σ over all node×node terms (with the sparse pairs + `ff_rest` making up features×features)
equals `blocks.L.attn.hook_attn_scores` on the attention mask. Options change what is reported:
top-m per cell or global top-N, excluded cells (diagonal, BOS key/query), row-centred values
(s_ij − mean_j' s_ij'; b_K and all query-only terms cancel as they do in the softmax), attention-
weighted values (× A_ij), chunking over query rows (results identical to unchunked).

Also: `pair_strengths`, `top_partners` (data-independent U_f·V_g/√d_head), `dfa_by_source` (OV side,
hook_z SAE of the same layer), `error_budget`, `reconstructed_scores`, `loss_recovered`, and the slow
float64 `reference_fra` used by tests and benchmarks/bench_fra.py.

Cost: T²·K²·d_head per sample-head for the pair block (one batched GEMM per block of (sample, head)
items × query rows; top-m per cell via group maxima, no full sort), never d_sae². Projected decoder
rows (d_f·W_Q, d_f·W_K) are cached per model/layer/heads/SAE across calls and projected lazily in fixed
blocks of feature ids (`fra_core.fra.rowcache`; checked against a content checksum of the weights on
every call, so no edit can leave it stale; bits independent of the batch history).
"""

from fra_core.fra.aggregate import AGG_COLUMNS, merge_pair_tables, pair_aggregates
from fra_core.fra.engine import ENTRY_FIELDS, compute_fra
from fra_core.fra.options import FRAInputError, FRAOptions
from fra_core.fra.reference import reference_fra, reference_pair_aggregates
from fra_core.fra.result import FRAResult
from fra_core.fra.strengths import dfa_by_source, pair_strengths, top_partners
from fra_core.fra.validate import error_budget, loss_recovered, reconstructed_scores

__all__ = [
    "AGG_COLUMNS", "ENTRY_FIELDS", "FRAInputError", "FRAOptions", "FRAResult", "compute_fra", "dfa_by_source",
    "error_budget", "loss_recovered", "merge_pair_tables", "pair_aggregates", "pair_strengths",
    "reconstructed_scores", "reference_fra", "reference_pair_aggregates", "top_partners",
]
