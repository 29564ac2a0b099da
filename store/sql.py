"""A read-only SQL box for power users.

Two guards: the text must be exactly one SELECT statement (DuckDB's own parser decides, so
`WITH ... SELECT` passes and `SELECT 1; DROP TABLE runs` does not), and it runs on a read-only
connection (`Store.read(strict=True)`), so even a SELECT that found a way to write could not.
"""

from __future__ import annotations

import duckdb
import pandas as pd

from store.connection import Store, StoreError
from store.queries import MAX_UI_ROWS


def check_select(sql: str) -> str:
    """The single SELECT statement in `sql` (trailing ';' removed); StoreError otherwise."""
    text = (sql or "").strip()
    if not text:
        raise StoreError("empty query: write one SELECT statement")
    try:
        statements = duckdb.connect(":memory:").extract_statements(text)
    except duckdb.Error as exc:
        raise StoreError(f"not valid SQL: {str(exc).splitlines()[0]}") from exc
    if len(statements) != 1:
        raise StoreError(f"write exactly one SELECT statement (got {len(statements)} statements)")
    kind = statements[0].type
    if kind != duckdb.StatementType.SELECT:
        raise StoreError(f"only SELECT statements are allowed here (got {kind.name})")
    return text.rstrip("; \n\t")


def run_sql_readonly(store: Store, sql: str, limit: int = MAX_UI_ROWS) -> pd.DataFrame:
    """Run one SELECT on a read-only connection; at most `limit` rows come back."""
    query = check_select(sql)
    with store.read(strict=True) as cur:
        try:
            return cur.sql(query).limit(int(limit)).df()
        except duckdb.Error as exc:
            raise StoreError(f"query failed: {str(exc).splitlines()[0]}") from exc
