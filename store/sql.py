"""A read-only SQL box for power users.

Three guards: the text must be exactly one SELECT statement (DuckDB's own parser decides, so
`WITH ... SELECT` passes and `SELECT 1; DROP TABLE runs` does not); it runs on a read-only connection,
so even a SELECT that found a way to write could not; and that connection has external access disabled
and its configuration locked (`Store.sandboxed`), so a SELECT cannot read the server's files
(`read_text('/etc/passwd')`, read_csv/read_parquet on a path, glob), scan the app's Python variables,
or install/load extensions; refused queries say so.
"""

from __future__ import annotations

import duckdb
import pandas as pd

from store.connection import Store
from store.errors import StoreError
from store.sqlparts import MAX_UI_ROWS


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
    """Run one SELECT on a read-only, sandboxed connection; at most `limit` rows come back."""
    query = check_select(sql)
    with store.sandboxed() as con:
        try:
            return con.sql(query).limit(int(limit)).df()
        except duckdb.PermissionException as exc:
            raise StoreError("refused: the SQL box reads only this database's tables (no files, extensions "
                             f"or settings): {str(exc).splitlines()[0]}") from exc
        except duckdb.Error as exc:
            raise StoreError(f"query failed: {str(exc).splitlines()[0]}") from exc
