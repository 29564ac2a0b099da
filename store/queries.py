"""The read queries the pages need. Every function takes a DuckDB connection or cursor and returns a
small pandas DataFrame (or dict): aggregation happens in DuckDB, the UI gets at most ~10 k rows.

Metrics over a pair (query feature f, key feature g) of one head:
  sum      Σ FRA over every occurrence          mean     sum / n
  abs_sum  Σ |FRA|                               mean_abs abs_sum / n
  max_abs  max |FRA| of one occurrence           count    n (cells where both features are active;
                                                 top-m runs: only the cells where the pair was kept)
With `diagonal=False` the diagonal (query position == key position) occurrences are removed from
n / sum / abs_sum (they are stored separately per pair); max/min/max_abs always include them.
A self-pair is the same feature of the same dictionary on both sides (q_src = k_src, q_feat = k_feat).
"""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

from store.errors import StoreError
from store.sqlparts import KEY, MAX_UI_ROWS, SELF, SIDES, _cols, metric_sql, resolve_run
from store.topk import top_candidates


def pair_filter(run: int, *, layer: int | None = None, head: int | None = None, feature: int | None = None,
                side: str = "either", src: int | None = None, self_pairs: str | None = None,
                min_count: int | None = 1, diagonal: bool = True) -> tuple[str, list[Any]]:
    """WHERE clause + parameters shared by the pair queries. `self_pairs`: None | 'only' | 'exclude';
    `min_count=None` drops the count condition (tables without counts, e.g. pair_example_rows)."""
    if side not in SIDES:
        raise StoreError(f"unknown side {side!r}; choose one of {SIDES}")
    n = _cols(diagonal)[0]
    clauses, params = ["run = ?"], [run]
    if layer is not None:
        clauses.append("layer = ?")
        params.append(int(layer))
    if head is not None:
        clauses.append("head = ?")
        params.append(int(head))
    if feature is not None:
        sides = {"query": ["q"], "key": ["k"], "either": ["q", "k"]}[side]
        parts = []
        for s in sides:
            parts.append(f"({s}_feat = ?" + (f" AND {s}_src = ?)" if src is not None else ")"))
            params.extend([int(feature)] + ([int(src)] if src is not None else []))
        clauses.append("(" + " OR ".join(parts) + ")")
    if self_pairs == "only":
        clauses.append(SELF)
    elif self_pairs == "exclude":
        clauses.append(f"NOT {SELF}")
    elif self_pairs is not None:
        raise StoreError(f"self_pairs must be None, 'only' or 'exclude', got {self_pairs!r}")
    if min_count is not None:
        clauses.append(f"{n} >= ?")
        params.append(max(int(min_count), 1))
    return " AND ".join(clauses), params


# q_label / k_label of pair rows: the human label of the feature (features.label, per SAE) or else the
# run's automatic one (feature_auto_labels), via the joins of `label_joins(alias, run_id)`
LABEL_COLUMNS = "coalesce(fq.label, aq.label) AS q_label, coalesce(fk.label, ak.label) AS k_label"


def label_joins(t: str, run_id: int) -> str:
    run = int(run_id)  # an integer literal: no parameters for callers to count
    return f"""
        LEFT JOIN sources sq ON sq.run = {run} AND sq.src = {t}.q_src
        LEFT JOIN sources sk ON sk.run = {run} AND sk.src = {t}.k_src
        LEFT JOIN features fq ON fq.sae_id = sq.sae_id AND fq.feature = {t}.q_feat
        LEFT JOIN features fk ON fk.sae_id = sk.sae_id AND fk.feature = {t}.k_feat
        LEFT JOIN feature_auto_labels aq ON aq.run = {run} AND aq.src = {t}.q_src AND aq.feature = {t}.q_feat
        LEFT JOIN feature_auto_labels ak ON ak.run = {run} AND ak.src = {t}.k_src AND ak.feature = {t}.k_feat"""


def top_pairs(con, run: int | str, *, metric: str = "sum", n: int = 100, order: str = "desc",
              diagonal: bool = True, **filters: Any) -> pd.DataFrame:
    """Top `n` pairs of a run by `metric` (`order`: 'desc', 'asc' or 'abs' = by |metric|), with filters
    (see `pair_filter`), each row with mean, max |v|, and the features' labels / densities.

    Ranked from the run's pre-ranked top-K lists where they provably hold the answer (`store.topk`: a
    lookup of a few thousand rows; co-activation runs have them too), else from `pair_rows` (a scan; for
    a feature filter, of that feature's rows only: `rows_source`)."""
    run_id = resolve_run(con, run)
    n = min(int(n), MAX_UI_ROWS)
    sort = {"desc": "DESC", "asc": "ASC", "abs": "DESC"}.get(order)
    if sort is None:
        raise StoreError(f"order must be 'desc', 'asc' or 'abs', got {order!r}")
    where, params = pair_filter(run_id, diagonal=diagonal, **filters)
    listed = top_candidates(con, run_id, metric, diagonal, order, n, filters)
    if listed is not None:
        source, source_params, exact_if_short = listed
        df = _top_pairs_from(con, source, source_params, run_id, metric, order, n, diagonal, where, params)
        if len(df) >= n or exact_if_short:
            return df
    source, source_params = rows_source(run_id, filters)
    return _top_pairs_from(con, source, source_params, run_id, metric, order, n, diagonal, where, params)


def rows_source(run_id: int, filters: dict[str, Any]) -> tuple[str, list[Any]]:
    """(FROM source, its parameters) for a scan of the run's `pair_rows` under `filters`: the view itself,
    or for a feature on either side the union of its query-side rows and its other key-side rows. DuckDB
    cannot push `q_feat = f OR k_feat = f` into the scans under the view, so it would expand every row of a
    co-activation run (all heads) before filtering; each branch's filter is pushed down (zone maps on the
    sorted q_feat), and the branches are disjoint, so the union holds each matching row once. The caller's
    WHERE clause (`pair_filter`) still applies on top."""
    feature, src = filters.get("feature"), filters.get("src")
    if feature is None or filters.get("side", "either") != "either":
        return "pair_rows", []
    side = {s: f"{s}_feat = ?" + (f" AND {s}_src = ?" if src is not None else "") for s in ("q", "k")}
    one = [int(feature)] + ([int(src)] if src is not None else [])
    return (f"""(SELECT * FROM pair_rows WHERE run = ? AND {side['q']} UNION ALL
                 SELECT * FROM pair_rows WHERE run = ? AND {side['k']} AND NOT ({side['q']}))""",
            [run_id, *one, run_id, *one, *one])


def _top_pairs_from(con, source: str, source_params: list[Any], run_id: int, metric: str, order: str, n: int,
                    diagonal: bool, where: str, params: list[Any]) -> pd.DataFrame:
    m = metric_sql(metric, diagonal)
    nn, s, a = _cols(diagonal)
    value = f"abs({m})" if order == "abs" else m
    sort = "ASC" if order == "asc" else "DESC"
    sql = f"""
        WITH top AS (
            SELECT {KEY}, {nn} AS n, {s} AS sum, {a} AS abs_sum, max, min, {m} AS value, {value} AS rank_value
            FROM {source} WHERE {where} ORDER BY rank_value {sort} NULLS LAST, {KEY} LIMIT {n})
        SELECT t.layer, t.head, t.q_src, t.q_feat, t.k_src, t.k_feat, t.n, t.sum,
               t.sum / nullif(t.n, 0) AS mean, t.abs_sum, t.max, t.min,
               greatest(abs(t.max), abs(t.min)) AS max_abs, t.value,
               (t.q_src = t.k_src AND t.q_feat = t.k_feat) AS self_pair,
               {LABEL_COLUMNS}, fq.density AS q_density, fk.density AS k_density
        FROM top t {label_joins("t", run_id)}
        ORDER BY t.rank_value {sort} NULLS LAST, t.layer, t.head, t.q_src, t.q_feat, t.k_src, t.k_feat"""
    return con.execute(sql, source_params + params).df()


def feature_partners(con, run: int | str, feature: int, *, side: str = "query", src: int | None = None,
                     metric: str = "sum", n: int = 20, **filters: Any) -> pd.DataFrame:
    """Top partners of `feature` when it sits on `side` ('query': its key partners; 'key': its query
    partners). Adds a `partner` column with the other side's feature id."""
    if side not in ("query", "key"):
        raise StoreError(f"side must be 'query' or 'key', got {side!r}")
    df = top_pairs(con, run, metric=metric, n=n, feature=feature, side=side, src=src, **filters)
    df.insert(0, "partner", df["k_feat"] if side == "query" else df["q_feat"])
    return df


def summary_stats(con, run: int | str, *, top_n: int = 100, metric: str = "sum", layer: int | None = None,
                  head: int | None = None) -> dict[str, Any]:
    """Unique pairs, self-pairs, occurrence counts (from pair_summary, kept by compaction), and the
    fraction of self-pairs among the top `top_n` pairs by `metric` with and without the diagonal
    (two top-N lookups in the run's pre-ranked lists, or two scans where the lists cannot answer)."""
    run_id = resolve_run(con, run)
    where, params = pair_filter(run_id, layer=layer, head=head, min_count=None)
    counts = con.execute(f"""SELECT sum(unique_pairs), sum(self_pairs), sum(occurrences), sum(diagonal_occurrences)
                             FROM pair_summary WHERE {where}""", params).fetchone()
    top_n = max(1, int(top_n))

    def frac(diagonal: bool) -> float | None:
        # pairs exist because they occurred (n >= 1), so min_count=1 only drops rows with no occurrence
        # left once the diagonal is removed: the same rows as the old `n > diag_n`
        where_d, params_d = pair_filter(run_id, layer=layer, head=head, diagonal=diagonal)
        m = metric_sql(metric, diagonal)
        listed = top_candidates(con, run_id, metric, diagonal, "desc", top_n, {"layer": layer, "head": head})
        for source, source_params, exact_if_short in ([listed] if listed else []) + [("pair_rows", [], True)]:
            got, value = con.execute(f"""SELECT count(*), avg(self::INT) FROM (
                                         SELECT {SELF} AS self FROM {source} WHERE {where_d}
                                         ORDER BY {m} DESC NULLS LAST, {KEY} LIMIT {top_n})""",
                                     source_params + params_d).fetchone()
            if got >= top_n or exact_if_short:
                return float(value) if value is not None else None
        return None

    return {"unique_pairs": int(counts[0] or 0), "self_pairs": int(counts[1] or 0),
            "occurrences": int(counts[2] or 0), "diagonal_occurrences": int(counts[3] or 0), "top_n": top_n,
            "metric": metric, "self_frac_top": frac(True), "self_frac_top_no_diag": frac(False)}


def self_fraction_by_head(con, run: int | str, *, top_n: int = 100, metric: str = "sum") -> pd.DataFrame:
    """Per (layer, head): the fraction of self-pairs among its top `top_n`, with / without diagonal."""
    run_id = resolve_run(con, run)
    heads = con.execute("SELECT layer, head FROM pair_summary WHERE run = ? ORDER BY layer, head", [run_id]).fetchall()
    rows = []
    for layer, head in heads:
        s = summary_stats(con, run_id, top_n=top_n, metric=metric, layer=layer, head=head)
        rows.append({"layer": layer, "head": head, "unique_pairs": s["unique_pairs"],
                     "self_frac_top": s["self_frac_top"], "self_frac_top_no_diag": s["self_frac_top_no_diag"]})
    return pd.DataFrame(rows, columns=["layer", "head", "unique_pairs", "self_frac_top", "self_frac_top_no_diag"])


def value_histogram(con, run: int | str, *, metric: str = "mean", bins: int = 50, log_count: bool = False,
                    diagonal: bool = True, **filters: Any) -> pd.DataFrame:
    """Histogram of `metric` over the filtered pairs, binned in DuckDB: columns bin_lo, bin_hi, count."""
    run_id = resolve_run(con, run)
    bins = max(1, min(int(bins), MAX_UI_ROWS))
    m = metric_sql(metric, diagonal)
    where, params = pair_filter(run_id, diagonal=diagonal, **filters)
    source, source_params = rows_source(run_id, filters)
    lo, hi = con.execute(f"SELECT min({m}), max({m}) FROM {source} WHERE {where}", source_params + params).fetchone()
    if lo is None:
        return pd.DataFrame({"bin_lo": [], "bin_hi": [], "count": []})
    width = (hi - lo) / bins if hi > lo else 1.0
    df = con.execute(f"""
        SELECT least(floor(({m} - ?) / ?)::INTEGER, ?) AS b, count(*) AS count
        FROM {source} WHERE {where} AND {m} IS NOT NULL GROUP BY b ORDER BY b""",
                     [lo, width, bins - 1] + source_params + params).df()
    df["bin_lo"] = lo + df["b"] * width
    df["bin_hi"] = df["bin_lo"] + width
    if log_count:
        df["log10_count"] = df["count"].map(lambda c: 0.0 if c <= 0 else __import__("math").log10(c))
    return df.drop(columns="b")[["bin_lo", "bin_hi", "count"] + (["log10_count"] if log_count else [])]


def compare_pairs(con, run_a: int | str, run_b: int | str, *, metric: str = "sum", n: int = 100,
                  head_a: int | None = None, head_b: int | None = None, layer: int | None = None,
                  diagonal: bool = True) -> pd.DataFrame:
    """The union of the top `n` pairs of A and of B (two runs, or two heads of one run: pass the same run
    with head_a/head_b), with each side's metric value and rank (NULL where a pair is outside one side's
    data). Keyed by (q_src, q_feat, k_src, k_feat) so two heads line up."""
    ra, rb = resolve_run(con, run_a), resolve_run(con, run_b)
    m = metric_sql(metric, diagonal)
    pk = "q_src, q_feat, k_src, k_feat"
    wa, pa_ = pair_filter(ra, layer=layer, head=head_a, diagonal=diagonal)
    wb, pb = pair_filter(rb, layer=layer, head=head_b, diagonal=diagonal)
    n = min(int(n), MAX_UI_ROWS // 2)
    # a pair seen in several heads (head filter off) is summed over them before ranking
    return con.execute(f"""
        WITH a AS (SELECT {pk}, sum({m}) AS v FROM pair_rows WHERE {wa} GROUP BY ALL),
             b AS (SELECT {pk}, sum({m}) AS v FROM pair_rows WHERE {wb} GROUP BY ALL),
             ta AS (SELECT {pk}, row_number() OVER (ORDER BY v DESC, {pk}) AS rank_a FROM a
                    ORDER BY v DESC, {pk} LIMIT {n}),
             tb AS (SELECT {pk}, row_number() OVER (ORDER BY v DESC, {pk}) AS rank_b FROM b
                    ORDER BY v DESC, {pk} LIMIT {n}),
             keys AS (SELECT {pk} FROM ta UNION SELECT {pk} FROM tb)
        SELECT k.q_src, k.q_feat, k.k_src, k.k_feat, a.v AS value_a, b.v AS value_b, ta.rank_a, tb.rank_b,
               (k.q_src = k.k_src AND k.q_feat = k.k_feat) AS self_pair
        FROM keys k LEFT JOIN a USING ({pk}) LEFT JOIN b USING ({pk})
             LEFT JOIN ta USING ({pk}) LEFT JOIN tb USING ({pk})
        ORDER BY least(coalesce(ta.rank_a, 1e9), coalesce(tb.rank_b, 1e9)), k.q_feat, k.k_feat""",
                       pa_ + pb).df()


def compare_summary(df: pd.DataFrame, n: int) -> dict[str, Any]:
    """Overlap of the two top-`n` sets and the correlation of the values on their union."""
    both = df.dropna(subset=["value_a", "value_b"])
    in_a, in_b = df["rank_a"].le(n), df["rank_b"].le(n)
    corr = float(both["value_a"].corr(both["value_b"])) if len(both) > 1 else None
    return {"overlap": int((in_a & in_b).sum()), "n": int(n), "jaccard": float((in_a & in_b).sum() / max(
        int((in_a | in_b).sum()), 1)), "pearson": corr}


def list_runs(con) -> pd.DataFrame:
    return con.execute("""SELECT id, name, kind, status, model_id, q_sae_id, k_sae_id, layer, heads,
                                 n_samples, n_samples_target, n_pairs, created, finished, wall_s, message, owner
                          FROM runs ORDER BY id DESC""").df()


def get_run(con, run: int | str) -> dict[str, Any]:
    run_id = resolve_run(con, run)
    cur = con.execute("SELECT * FROM runs WHERE id = ?", [run_id])
    names = [d[0] for d in cur.description]
    out = dict(zip(names, cur.fetchone()))
    out["config"] = json.loads(out["config"]) if out.get("config") else {}
    out["sources"] = con.execute("SELECT src, kind, name, sae_id, hook, d_sae FROM sources WHERE run = ?"
                                 " ORDER BY src", [run_id]).df().to_dict("records")
    # the job's measured completeness (first batch): worst max |Σ terms − scores| / max |scores| over heads
    out["completeness"] = con.execute("SELECT max(max_relative_error) FROM run_completeness WHERE run = ?",
                                      [run_id]).fetchall()[0][0]
    return out


def pair_examples(con, run: int | str, *, n: int = 20, context: int = 8, **filters: Any) -> pd.DataFrame:
    """Top example contexts (by |value|) of the filtered pairs, with the query/key tokens and a context
    string (`context` tokens before the key ... the query, key in [[ ]], query in << >>)."""
    run_id = resolve_run(con, run)
    filters.pop("min_count", None)  # examples have no count
    where, params = pair_filter(run_id, min_count=None, **filters)
    df = con.execute(f"""
        SELECT e.layer, e.head, e.q_src, e.q_feat, e.k_src, e.k_feat, e.sample, e.q_pos, e.k_pos, e.value,
               s.tokens
        FROM (SELECT * FROM pair_example_rows WHERE {where} ORDER BY abs(value) DESC, sample, q_pos, k_pos
              LIMIT {min(int(n), MAX_UI_ROWS)}) e
        LEFT JOIN samples_done s ON s.run = ? AND s.sample = e.sample
        ORDER BY abs(e.value) DESC, e.sample, e.q_pos, e.k_pos""", params + [run_id]).df()
    df["q_token"] = [t[q] if t is not None and q < len(t) else None for t, q in zip(df["tokens"], df["q_pos"])]
    df["k_token"] = [t[k] if t is not None and k < len(t) else None for t, k in zip(df["tokens"], df["k_pos"])]
    df["context"] = [_context(t, int(q), int(k), context) for t, q, k in zip(df["tokens"], df["q_pos"], df["k_pos"])]
    return df.drop(columns="tokens")


def _context(tokens, q: int, k: int, before: int) -> str | None:
    if tokens is None:
        return None
    out = []
    for i in range(max(0, min(q, k) - before), min(len(tokens), max(q, k) + 1)):
        tok = tokens[i]
        if i == q and i == k:
            tok = f"<<[[{tok}]]>>"
        elif i == q:
            tok = f"<<{tok}>>"
        elif i == k:
            tok = f"[[{tok}]]"
        out.append(tok)
    return " ".join(out)
