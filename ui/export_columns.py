"""Columns added to exported pair files (Parquet / CSV bytes from `store.export_pairs_bytes`), by the app:
each side's source by name and, for Neuronpedia-hosted registry SAEs, a link per feature (no streamlit)."""

from __future__ import annotations

from typing import Callable


def _read_table(data: bytes, fmt: str):
    import io

    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    return pq.read_table(io.BytesIO(data)) if fmt == "parquet" else pacsv.read_csv(io.BytesIO(data))


def _write_table(table, fmt: str) -> bytes:
    import io

    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    out = io.BytesIO()
    if fmt == "parquet":
        pq.write_table(table, out, compression="zstd")
    else:
        pacsv.write_csv(table, out)
    return out.getvalue()


def _csv_rows(text: str) -> list[str]:
    """The rows of a CSV text as written (terminators dropped): a newline inside a quoted field (a label)
    does not end its row."""
    rows, start, quoted = [], 0, False
    for i, ch in enumerate(text):
        if ch == '"':
            quoted = not quoted
        elif ch == "\n" and not quoted:
            rows.append(text[start:i].removesuffix("\r"))
            start = i + 1
    if start < len(text):
        rows.append(text[start:])
    return rows


def _csv_cell(value: str | None) -> str:
    if value is None:
        return ""
    return f'"{value.replace(chr(34), chr(34) * 2)}"' if any(c in value for c in ',"\n\r') or not value else value


def append_columns(data: bytes, fmt: str, names: tuple[str, ...],
                   cells: Callable[[int, int, int, int], list[str | None]]) -> bytes:
    """Export bytes with string columns `names` appended; `cells(q_src, q_feat, k_src, k_feat)` gives a row's
    values. A CSV keeps its bytes as DuckDB wrote them (quoting, NULL vs empty string): the new cells are
    appended to each row as written."""
    if fmt == "csv":
        import csv

        rows = _csv_rows(data.decode("utf-8"))
        header = next(csv.reader([rows[0]]))
        at = [header.index(c) for c in ("q_src", "q_feat", "k_src", "k_feat")]
        out = [rows[0] + "," + ",".join(names)]
        for row in rows[1:]:
            values = next(csv.reader([row]))
            out.append(row + "," + ",".join(_csv_cell(v) for v in cells(*(int(values[i]) for i in at))))
        return ("\n".join(out) + "\n").encode("utf-8")
    import pyarrow as pa

    table = _read_table(data, fmt)
    keys = zip(*(table[c].to_pylist() for c in ("q_src", "q_feat", "k_src", "k_feat")))
    new = list(zip(*(cells(*(int(x) for x in key)) for key in keys)))
    for i, name in enumerate(names):
        table = table.append_column(name, pa.array(list(new[i]) if new else [], pa.string()))
    return _write_table(table, fmt)


def with_sources(data: bytes, fmt: str, sources: list[dict], model: str | None = None) -> bytes:
    """An exported pair file with each side's source by name: q_source / k_source (the short name the
    tables show, `ui.sources`) and q_sae / k_sae (the full SAE ref)."""
    from ui.sources import short_names

    names, refs = short_names(sources, model), {int(s["src"]): s["sae_id"] for s in sources}
    return append_columns(data, fmt, ("q_source", "q_sae", "k_source", "k_sae"),
                          lambda qs, qf, ks, kf: [names.get(qs), refs.get(qs), names.get(ks), refs.get(ks)])


def with_neuronpedia(data: bytes, fmt: str, sae_of_src: dict[int, str | None]) -> bytes:
    """An exported pair file with q_neuronpedia / k_neuronpedia URL columns, when a source of the run is a
    Neuronpedia-hosted registry SAE (`fra_core.neuronpedia`); the file unchanged otherwise."""
    from fra_core.neuronpedia import URL, neuronpedia_id

    ids = {src: neuronpedia_id(sae) for src, sae in sae_of_src.items()}
    if not any(ids.values()):
        return data

    def url(src: int, feature: int) -> str | None:
        return URL.format(np_id=ids[src], feature=feature) if ids.get(src) else None

    return append_columns(data, fmt, ("q_neuronpedia", "k_neuronpedia"),
                          lambda qs, qf, ks, kf: [url(qs, qf), url(ks, kf)])
