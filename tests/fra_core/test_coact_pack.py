"""A co-activation shard table is packed on disk (`fra_core.coact_pack`) and read back bit for bit: raw
tables store Σ|x| once, one-cell pairs their product and cell once; anything that does not repeat stays."""

import numpy as np
import pyarrow as pa
import pytest

from fra_core import coact_pack, contracts

N = 2000


def _table(raw: bool = True, rng=None) -> pa.Table:
    """A COACT_SCHEMA table shaped like a job's: 60 % one-cell pairs (their sum, max and min one product, one
    cell), raw values (abs = s) unless raw is False; a -0.0, a NaN and a ±inf among the products."""
    rng = rng or np.random.default_rng(0)
    n = np.where(rng.random(N) < 0.6, 1, rng.integers(2, 9, N)).astype(np.uint64)
    s = rng.standard_normal(N) * n
    s[:3] = [-0.0, np.nan, np.inf]
    one = n == 1
    mx = np.where(one, s, s / n + np.abs(rng.standard_normal(N)))
    mn = np.where(one, s, s / n - np.abs(rng.standard_normal(N)))
    cell = {c: rng.integers(0, 128, N) for c in ("mx_sample", "mx_q", "mx_k", "mn_sample", "mn_q", "mn_k")}
    for c in ("sample", "q", "k"):
        cell[f"mn_{c}"] = np.where(one, cell[f"mx_{c}"], cell[f"mn_{c}"])
    diag_s = np.where(rng.random(N) < 0.1, rng.standard_normal(N), 0.0)
    cols = {"layer": np.full(N, 3), "q_src": np.zeros(N), "q_feat": rng.integers(0, 5000, N), "k_src": np.ones(N),
            "k_feat": rng.integers(0, 5000, N), "n": n, "s": s, "abs": s if raw else np.abs(s) + 1.0, "mx": mx,
            "mn": mn, "diag_n": (diag_s != 0).astype(np.uint64), "diag_s": diag_s,
            "diag_abs": diag_s if raw else np.abs(diag_s), **cell}
    return pa.table({f.name: pa.array(np.asarray(cols[f.name]).astype(f.type.to_pandas_dtype()), f.type)
                     for f in contracts.COACT_SCHEMA})


def _bits_equal(a: pa.Table, b: pa.Table) -> bool:
    return all(np.array_equal(a[c].to_numpy().view(np.uint8), b[c].to_numpy().view(np.uint8)) for c in a.column_names)


@pytest.mark.parametrize("raw", [True, False])
def test_pack_then_unpack_gives_the_table_bit_for_bit(raw):
    table = _table(raw)
    packed = coact_pack.pack(table)
    done = packed.schema.metadata[coact_pack.PACKED].decode().split(",")
    assert done == (["abs", "diag_abs", "single"] if raw else ["single"])
    one = table["n"].to_numpy() == 1
    assert not packed["mx"].to_numpy()[one].any() and not packed["mn_k"].to_numpy()[one].any()
    assert (packed["mx"].to_numpy()[~one] == table["mx"].to_numpy()[~one]).all()
    if raw:
        assert not packed["abs"].to_numpy().any()
    else:
        assert _bits_equal(packed.select(["abs"]), table.select(["abs"]))
    back = coact_pack.unpack(packed)
    assert back.schema.equals(table.schema, check_metadata=True) and _bits_equal(back, table)


def test_a_value_that_does_not_repeat_is_kept():
    """A one-cell row whose max is not its sum (not a job's table, but a packing must never guess) keeps
    every single-cell column; abs that differs from s in one row (by the sign of a zero) is kept."""
    table = _table()
    cols = {c: table[c].to_numpy().copy() for c in table.column_names}
    first_one = int(np.flatnonzero(cols["n"] == 1)[3])
    cols["mx"][first_one] += 1.0
    zero = int(np.flatnonzero(cols["s"] == 0)[0])  # the -0.0
    cols["abs"][zero] = 0.0
    odd = pa.table({f.name: pa.array(cols[f.name], f.type) for f in contracts.COACT_SCHEMA})
    packed = coact_pack.pack(odd)
    assert packed.schema.metadata[coact_pack.PACKED] == b"diag_abs"
    assert _bits_equal(coact_pack.unpack(packed), odd)


def test_shards_are_packed_on_disk_and_read_back_unpacked(tmp_path):
    table = _table()
    contracts.write_shard(tmp_path, 0, {"coact": table, **{k: s.empty_table() for k, s in contracts.KINDS.items()
                                                            if k != "coact"}}, [0])
    path = contracts.shard_path(tmp_path, 0, "coact")
    with pa.OSFile(str(path), "rb") as f:
        on_disk = pa.ipc.open_file(f).read_all()
    assert on_disk.schema.metadata[coact_pack.PACKED] == b"abs,diag_abs,single"
    assert _bits_equal(contracts.read_shard_table(tmp_path, 0, "coact"), table)
    assert contracts.shard_path(tmp_path, 0, "proj").name == "shard-000000.proj.arrow"


def test_empty_and_unpacked_tables_pass_through():
    empty = contracts.COACT_SCHEMA.empty_table()
    assert coact_pack.pack(empty).equals(empty) and coact_pack.unpack(empty).equals(empty)
    table = _table()
    assert coact_pack.unpack(table) is table  # a shard written before the packing
