"""Feature labels: automatic ones built from the tokens a feature fires on (at compaction), and human
ones kept per SAE across runs, with who set them."""

from __future__ import annotations

from store.errors import StoreError


def refresh_auto_labels(con, run: int) -> None:
    """feature_auto_labels of the run: each feature's most frequent tokens and tokens before it, with their
    shares of its active tokens: "‘grass’ 100% · after ‘today’ 12% ‘the’ 9% ‘a’ 7%" (the runners-up only
    where the first holds under half; call inside a transaction)."""
    con.execute("DELETE FROM feature_auto_labels WHERE run = ?", [run])
    con.execute("""
        INSERT INTO feature_auto_labels
        WITH active AS (
            SELECT src, feature, sum(n_active) AS n_active FROM feature_counts WHERE run = $1 GROUP BY ALL),
        ranked AS (
            SELECT c.src, c.feature, c.kind, c.token, (c.n / a.n_active)::FLOAT AS share,
                   row_number() OVER (PARTITION BY c.src, c.feature, c.kind ORDER BY c.n DESC, c.token) AS r
            FROM (SELECT src, feature, kind, token, sum(n) AS n FROM feature_tokens WHERE run = $1 GROUP BY ALL) c
            JOIN active a ON a.src = c.src AND a.feature = c.feature
            QUALIFY r <= 3),
        parts AS (
            SELECT src, feature, kind, arg_min(token, r) AS token, max(share) AS share,
                   string_agg(printf('‘%s’ %d%%', token, round(100 * share)::INTEGER), ' ' ORDER BY r)
                       FILTER (WHERE r = 1 OR first_share < 0.5) AS text
            FROM (SELECT *, max(share) OVER (PARTITION BY src, feature, kind) AS first_share FROM ranked)
            GROUP BY ALL)
        SELECT $1, t.src, t.feature, t.token, t.share, p.token, p.share,
               t.text || coalesce(' · after ' || p.text, '')
        FROM parts t LEFT JOIN parts p ON p.src = t.src AND p.feature = t.feature AND p.kind = 'prev'
        WHERE t.kind = 'tok'""", [run])


def set_feature_labels(con, sae_id: str, labels: dict[int, str | None], user: str | None = None,
                       only_own: bool = False) -> int:
    """Attach human labels to SAE features (kept across runs; None removes one), recording `user` as who
    set them; returns the number set. `only_own=True` refuses (StoreError) to change a label someone else
    set (what a researcher may do; admins may change any)."""
    import pyarrow as pa

    if only_own:
        others = con.execute("SELECT feature, labelled_by FROM features WHERE sae_id = ? AND label IS NOT NULL"
                             " AND labelled_by IS DISTINCT FROM ? AND list_contains(?, feature)",
                             [sae_id, user, [int(f) for f in labels]]).fetchall()
        if others:
            feature, by = others[0]
            raise StoreError(f"feature {feature} of {sae_id} was labelled by {by or 'someone else'}; "
                             "only they or an admin may change it")

    table = pa.table({"feature": pa.array(list(labels), pa.uint32()),
                      "label": pa.array(list(labels.values()), pa.string())})
    con.register("_labels", table)
    try:
        con.execute("""INSERT INTO features (sae_id, feature, label, labelled_by) SELECT ?, feature, label, ?
                       FROM _labels ON CONFLICT (sae_id, feature)
                       DO UPDATE SET label = excluded.label, labelled_by = excluded.labelled_by""", [sae_id, user])
    finally:
        con.unregister("_labels")
    return len(labels)
