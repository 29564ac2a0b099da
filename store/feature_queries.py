"""Read queries of the Feature page: one feature of one SAE across the stored runs (no torch, no streamlit).

A feature is (sae_id, feature id); a run holds it as one of its sources (`sources.sae_id`). Every query
takes the run and that source (`src`), and returns a small DataFrame / dict:

* `feature_saes`     the SAEs of the stored runs, with their models
* `feature_runs`     the runs whose sources include the SAE (newest first; failed runs last)
* `feature_overview` density (active tokens / tokens seen), labels (human: features.label, automatic:
                     feature_auto_labels — the one meaning string every page shows), top tokens
* `feature_histogram` its log2-binned activation counts (feature_hist)
* `feature_contexts`  its top activations ('top') or quantile groups of its randomly drawn ones ('sample'),
                     each with the tokens around it and the feature's activation on each
* `partners_by_head` its top FRA partners on one side, per head
"""

from __future__ import annotations

import math

import pandas as pd

from store.errors import StoreError
from store.queries import LABEL_COLUMNS, label_joins
from store.sqlparts import _cols, metric_sql, resolve_run

HIST_STEPS = 2  # bins per octave of feature_hist (fra_core.accumulate.feature_acts.HIST_STEPS)


def feature_saes(con) -> pd.DataFrame:
    """The SAEs of the stored runs: sae_id, model_id, runs (how many), d_sae; most used first."""
    return con.execute("""SELECT s.sae_id, r.model_id, count(DISTINCT r.id) AS runs, max(s.d_sae) AS d_sae
                          FROM sources s JOIN runs r ON r.id = s.run WHERE s.sae_id IS NOT NULL
                          GROUP BY ALL ORDER BY runs DESC, s.sae_id, r.model_id""").df()


def feature_runs(con, sae_id: str, model_id: str | None = None) -> pd.DataFrame:
    """Runs with a source of `sae_id` (and of `model_id` when given): id, name, status, model_id, src,
    layer, n_samples; finished runs first, newest first."""
    sql = """SELECT r.id, r.name, r.status, r.model_id, s.src, r.layer, r.n_samples, r.n_pairs
             FROM sources s JOIN runs r ON r.id = s.run
             WHERE s.sae_id = ? AND (? IS NULL OR r.model_id = ?)
             ORDER BY (r.status = 'failed'), (r.status <> 'done'), r.id DESC"""
    return con.execute(sql, [sae_id, model_id, model_id]).df()


def feature_overview(con, run: int | str, feature: int, src: int = 0) -> dict:
    """sae_id, hook, d_sae, n_active, n_tokens, density, label (human), auto_label, top_tokens
    [(token, n)], top_prev [(token, n)] of a feature in a run; StoreError if the run has no such source."""
    run_id = resolve_run(con, run)
    row = con.execute("SELECT sae_id, hook, d_sae FROM sources WHERE run = ? AND src = ?",
                      [run_id, int(src)]).fetchone()
    if row is None:
        raise StoreError(f"run #{run_id} has no source {src}")
    sae_id, hook, d_sae = row
    if d_sae is not None and not 0 <= int(feature) < int(d_sae):
        raise StoreError(f"feature {feature} is outside {sae_id} (d_sae = {d_sae}: ids 0 … {int(d_sae) - 1})")
    n_active = con.execute("SELECT sum(n_active) FROM feature_counts WHERE run = ? AND src = ? AND feature = ?",
                           [run_id, int(src), int(feature)]).fetchone()[0]
    n_tokens = _tokens_seen(con, run_id)
    label = con.execute("SELECT label FROM features WHERE sae_id = ? AND feature = ?", [sae_id, int(feature)]).fetchone()
    auto = con.execute("SELECT label FROM feature_auto_labels WHERE run = ? AND src = ? AND feature = ?",
                       [run_id, int(src), int(feature)]).fetchone()
    toks = con.execute("""SELECT kind, token, sum(n) AS n FROM feature_tokens
                          WHERE run = ? AND src = ? AND feature = ? GROUP BY ALL ORDER BY n DESC, token""",
                       [run_id, int(src), int(feature)]).fetchall()
    n_active = int(n_active or 0)
    return {"sae_id": sae_id, "hook": hook, "d_sae": d_sae, "n_active": n_active, "n_tokens": n_tokens,
            "density": n_active / n_tokens if n_tokens else None, "label": label[0] if label else None,
            "auto_label": auto[0] if auto else None,
            "top_tokens": [(t, int(n)) for k, t, n in toks if k == "tok"][:10],
            "top_prev": [(t, int(n)) for k, t, n in toks if k == "prev"][:10]}


def _tokens_seen(con, run_id: int) -> int:
    """Tokens the run's job encoded (every source sees every token of every processed sample)."""
    return int(con.execute("SELECT sum(n_tokens) FROM samples_done WHERE run = ?", [run_id]).fetchone()[0] or 0)


def feature_histogram(con, run: int | str, feature: int, src: int = 0) -> pd.DataFrame:
    """bin_lo, bin_hi (activation), count: the feature's activations in log2-spaced bins."""
    run_id = resolve_run(con, run)
    df = con.execute("""SELECT bin, sum(n) AS count FROM feature_hist WHERE run = ? AND src = ? AND feature = ?
                        GROUP BY bin ORDER BY bin""", [run_id, int(src), int(feature)]).df()
    df["bin_lo"] = [2.0 ** (b / HIST_STEPS) for b in df["bin"]]
    df["bin_hi"] = [2.0 ** ((b + 1) / HIST_STEPS) for b in df["bin"]]
    return df[["bin_lo", "bin_hi", "count"]]


def feature_contexts(con, run: int | str, feature: int, src: int = 0, *, kind: str = "top", n: int = 10,
                     groups: int = 5) -> pd.DataFrame:
    """The feature's stored activations with their contexts: value, sample, pos, tokens (the window's
    token strings), acts (the feature's activation on each; 0 where inactive), center (index of the
    activating token in `tokens`). kind='top': the `n` largest; kind='sample': the randomly drawn ones
    split into `groups` equal-width activation intervals (0 … max) as `group` ('0.41 – 0.82'), at most
    `n` per group, highest interval first."""
    if kind not in ("top", "sample"):
        raise StoreError(f"kind must be 'top' or 'sample', got {kind!r}")
    run_id = resolve_run(con, run)
    limit = "" if kind == "sample" else f"LIMIT {int(n)}"
    df = con.execute(f"""
        SELECT a.value, a.sample, a.pos, a.ctx_acts, s.tokens
        FROM (SELECT * FROM feature_acts WHERE run = ? AND src = ? AND feature = ? AND kind = ?
              ORDER BY abs(value) DESC, sample, pos {limit}) a
        LEFT JOIN samples_done s ON s.run = ? AND s.sample = a.sample
        ORDER BY abs(a.value) DESC, a.sample, a.pos""", [run_id, int(src), int(feature), kind, run_id]).df()
    rows = [_window(r) for r in df.itertuples()]
    out = pd.DataFrame(rows, columns=["value", "sample", "pos", "tokens", "acts", "center"])
    if kind == "sample" and len(out):
        top = con.execute("SELECT max(abs(value)) FROM feature_acts WHERE run = ? AND src = ? AND feature = ?",
                          [run_id, int(src), int(feature)]).fetchone()[0] or 1.0
        width = top / groups
        idx = [min(int(abs(v) // width), groups - 1) for v in out["value"]]
        out["group"] = [f"{i * width:.3g} – {(i + 1) * width:.3g}" for i in idx]
        out["_g"] = idx
        out = (out.sort_values(["_g", "value"], ascending=False, kind="stable").groupby("_g", sort=False)
               .head(n).drop(columns="_g").reset_index(drop=True))
    return out


def _window(r) -> tuple:
    tokens = list(r.tokens) if r.tokens is not None else []
    window = [] if r.ctx_acts is None else list(r.ctx_acts)
    half = len(window) // 2
    lo = r.pos - half
    pairs = [(tokens[lo + i], 0.0 if (a is None or math.isnan(a)) else float(a))
             for i, a in enumerate(window) if 0 <= lo + i < len(tokens) and not (a is not None and math.isnan(a))]
    start = max(lo, 0)
    return (float(r.value), int(r.sample), int(r.pos), [t for t, _ in pairs], [a for _, a in pairs],
            int(r.pos) - start)


def partners_by_head(con, run: int | str, feature: int, src: int = 0, *, side: str = "query",
                     metric: str = "mean_abs", n: int = 5, min_count: int = 1, diagonal: bool = True) -> pd.DataFrame:
    """Per head: the feature's `n` best partners by `metric` when it sits on `side` ('query': its key
    partners, 'key': its query partners), with the partner's label: layer, head, partner, partner_src,
    value, n, mean, label."""
    if side not in ("query", "key"):
        raise StoreError(f"side must be 'query' or 'key', got {side!r}")
    run_id = resolve_run(con, run)
    me, other = ("q", "k") if side == "query" else ("k", "q")
    nn = _cols(diagonal)[0]
    m = metric_sql(metric, diagonal)
    df = con.execute(f"""
        WITH top AS (
            SELECT *, {m} AS value, {nn} AS n_occ FROM pair_rows
            WHERE run = ? AND {me}_feat = ? AND {me}_src = ? AND {nn} >= ?
            QUALIFY row_number() OVER (PARTITION BY layer, head ORDER BY {m} DESC NULLS LAST, {other}_feat) <= ?)
        SELECT t.layer, t.head, t.{other}_feat AS partner, t.{other}_src AS partner_src, t.value, t.n_occ AS n,
               t.sum / nullif(t.n, 0) AS mean, {LABEL_COLUMNS}
        FROM top t {label_joins("t", run_id)}
        ORDER BY t.layer, t.head, t.value DESC NULLS LAST, partner""",
                       [run_id, int(feature), int(src), max(int(min_count), 1), int(n)]).df()
    df["label"] = df["k_label" if side == "query" else "q_label"]
    return df.drop(columns=["q_label", "k_label"])


def token_pairs(con, run: int | str, token: str, *, metric: str = "mean_abs", n: int = 100, side: str = "either",
                layer: int | None = None, head: int | None = None, min_count: int = 1,
                diagonal: bool = True) -> pd.DataFrame:
    """Pairs whose query and/or key feature fires on `token`: features whose label (human or automatic)
    or most frequent tokens contain it (case-insensitive), then the run's top pairs among them (the
    `top_pairs` columns, plus `matched`: 'q', 'k' or 'qk')."""
    from store.queries import pair_filter

    if side not in ("either", "query", "key"):
        raise StoreError(f"side must be 'either', 'query' or 'key', got {side!r}")
    text = (token or "").strip()
    if not text:
        raise StoreError("token is empty: type a token to search for")
    run_id = resolve_run(con, run)
    feats = """SELECT DISTINCT s.src, a.feature FROM sources s
               JOIN feature_auto_labels a ON a.run = s.run AND a.src = s.src
               LEFT JOIN features f ON f.sae_id = s.sae_id AND f.feature = a.feature
               WHERE s.run = ? AND (contains(lower(a.label), ?) OR lower(a.top_token) = ?
                                    OR contains(lower(coalesce(f.label, '')), ?))
               UNION SELECT DISTINCT src, feature FROM feature_tokens WHERE run = ? AND kind = 'tok'
                                                                        AND lower(trim(token)) = ?"""
    t = text.lower()
    feat_params = [run_id, t, t, t, run_id, t]
    where, params = pair_filter(run_id, layer=layer, head=head, min_count=min_count, diagonal=diagonal)
    m = metric_sql(metric, diagonal)
    nn, s_, a_ = _cols(diagonal)
    cond = {"either": "(xq.feature IS NOT NULL OR xk.feature IS NOT NULL)", "query": "xq.feature IS NOT NULL",
            "key": "xk.feature IS NOT NULL"}[side]
    df = con.execute(f"""
        WITH tf AS ({feats}),
        top AS (SELECT p.*, {m} AS value, {nn} AS n_occ, {s_} AS s_, {a_} AS a_,
                       CASE WHEN xq.feature IS NOT NULL AND xk.feature IS NOT NULL THEN 'qk'
                            WHEN xq.feature IS NOT NULL THEN 'q' ELSE 'k' END AS matched
                FROM (SELECT * FROM pair_rows WHERE {where}) p
                LEFT JOIN tf xq ON xq.src = p.q_src AND xq.feature = p.q_feat
                LEFT JOIN tf xk ON xk.src = p.k_src AND xk.feature = p.k_feat
                WHERE {cond}
                ORDER BY value DESC NULLS LAST, layer, head, q_feat, k_feat LIMIT {min(int(n), 10_000)})
        SELECT t.layer, t.head, t.q_src, t.q_feat, t.k_src, t.k_feat, t.n_occ AS n, t.s_ AS sum,
               t.s_ / nullif(t.n_occ, 0) AS mean, t.a_ AS abs_sum, t.value, t.matched, {LABEL_COLUMNS}
        FROM top t {label_joins("t", run_id)}
        ORDER BY t.value DESC NULLS LAST, t.layer, t.head, t.q_feat, t.k_feat""", feat_params + params).df()
    return df


def feature_marginal(con, run: int | str, feature: int, src: int = 0) -> pd.DataFrame:
    """The feature's marginals (all-pair runs; empty otherwise): per layer, head and side, its total
    contribution against the whole other side — n (cells where active), sum, abs_sum, mean, and share =
    sum / the head's score total."""
    run_id = resolve_run(con, run)
    return con.execute("""
        WITH m AS (SELECT layer, head, side, sum(n)::UBIGINT AS n, sum(sum) AS sum, sum(abs_sum) AS abs_sum
                   FROM feature_marginals WHERE run = $run AND src = $src AND feature = $f GROUP BY ALL),
             t AS (SELECT layer, head, sum(sum) AS total FROM
                     (SELECT layer, head, sum FROM feature_marginals WHERE run = $run AND side = 'query'
                      UNION ALL SELECT layer, head, sum FROM node_totals WHERE run = $run AND side = 'query')
                   GROUP BY ALL)
        SELECT m.layer, m.head, m.side, m.n, m.sum, m.abs_sum, m.sum / nullif(m.n, 0) AS mean,
               m.sum / nullif(t.total, 0) AS share
        FROM m LEFT JOIN t USING (layer, head) ORDER BY m.layer, m.head, m.side DESC""",
                       {"run": run_id, "src": int(src), "f": int(feature)}).df()
