"""The on-disk packing of a co-activation shard table (COACT_SCHEMA): the values a row repeats are stored
once, and the reader restores the table bit for bit. Torch-free (`fra_core.contracts` uses it for both).

Two repetitions make up most of an all-pair table's incompressible float64 bytes:

- raw values (no row-centring): x = ã·ã ≥ 0, so Σ|x| is Σx bit for bit: `abs` = `s`, `diag_abs` = `diag_s`;
- a pair seen in one cell only (n = 1: 61 % of the rows of a GPT-2-shaped shard) has its one product as
  its sum, max and min, and that cell as the cell of both: mx = mn = s, (mn_sample, mn_q, mn_k) = mx's.

Packing writes zeros there (which zstd stores in almost nothing) and names what it zeroed in the schema
metadata (`PACKED`); unpacking puts the repeated values back. Each repetition is verified on the rows before
they are zeroed, so a table that does not repeat a value keeps it. Shards without the metadata (written
before this packing, or with nothing to pack) are read as they are.

Shapes: every column [n_pairs].
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

PACKED = b"fra.coact.packed"  # schema metadata: what was zeroed, comma-separated (SAME_COLUMNS keys, "single")
SAME_COLUMNS = {"abs": "s", "diag_abs": "diag_s"}  # column → the column it repeats (raw values)
SINGLE_CELL = {"mx": "s", "mn": "s", "mn_sample": "mx_sample", "mn_q": "mx_q", "mn_k": "mx_k"}  # rows n = 1


def _bits(v: np.ndarray) -> np.ndarray:
    """The raw bits of a numeric column (float equality that tells -0.0 from 0.0 and NaN from NaN)."""
    return v.view(np.uint64) if v.dtype == np.float64 else v


def pack(table: pa.Table) -> pa.Table:
    """The table as written to disk: repeated values zeroed, what was zeroed in the schema metadata."""
    if table.num_rows == 0:
        return table
    cols = {name: table[name].to_numpy() for name in table.column_names}  # a job's table: one chunk, no copy
    done = []
    for col, same in SAME_COLUMNS.items():
        if np.array_equal(_bits(cols[col]), _bits(cols[same])):
            cols[col] = np.zeros_like(cols[col])
            done.append(col)
    one = cols["n"] == 1  # (a boolean-masked gather of the rows costs 8× the comparison over all rows)
    if one.any() and not any(np.any((_bits(cols[c]) != _bits(cols[same])) & one) for c, same in SINGLE_CELL.items()):
        for c in SINGLE_CELL:
            cols[c] = np.where(one, np.zeros((), cols[c].dtype), cols[c])
        done.append("single")
    if not done:
        return table
    schema = table.schema.with_metadata({**(table.schema.metadata or {}), PACKED: ",".join(done).encode()})
    return pa.table({f.name: pa.array(cols[f.name], f.type) for f in table.schema}, schema=schema)


def unpack(table: pa.Table) -> pa.Table:
    """A table read from disk with its repeated values put back (and the packing metadata dropped).

    Record batch by record batch, touching only the columns that were zeroed: the others stay the buffers
    read (a GPT-2-shaped shard of 3.2 M rows: 0.75 s when every column was concatenated into numpy)."""
    meta = dict(table.schema.metadata or {})
    done = meta.pop(PACKED, b"").decode().split(",")
    if done == [""]:
        return table
    schema = table.schema.with_metadata(meta) if meta else table.schema.remove_metadata()
    batches = []
    for batch in table.to_batches():
        cols = {name: batch.column(name) for name in batch.schema.names}
        for col, same in SAME_COLUMNS.items():
            if col in done:
                cols[col] = cols[same]
        if "single" in done:
            one = cols["n"].to_numpy() == 1
            for c, same in SINGLE_CELL.items():
                cols[c] = pa.array(np.where(one, cols[same].to_numpy(), cols[c].to_numpy()), cols[c].type)
        batches.append(pa.record_batch([cols[f.name] for f in schema], schema=schema))
    return pa.Table.from_batches(batches, schema=schema)
