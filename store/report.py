"""Export helpers that need no database: table bytes for downloads, inline SVG charts, and the
self-contained HTML report of a run (no scripts, no CDN: it opens offline, years later).

The DuckDB side (which rows go in) lives in `store.export`.
"""

from __future__ import annotations

import html
import io
import json
from typing import Any, Iterable

import pandas as pd

FORMATS = ("parquet", "csv")


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_safe(df: pd.DataFrame) -> pd.DataFrame:
    """A copy of `df` whose text cells that a spreadsheet would run as a formula (starting with = + - @,
    tab or CR) get a leading ' (shown as text); numbers are untouched."""
    out = df.copy()
    for col in out.columns:
        if out[col].dtype == object or pd.api.types.is_string_dtype(out[col]):
            out[col] = out[col].map(lambda v: "'" + v if isinstance(v, str) and v.startswith(FORMULA_STARTS) else v)
    return out


def dataframe_bytes(df: pd.DataFrame, fmt: str = "csv") -> bytes:
    """`df` as Parquet or CSV bytes (for st.download_button)."""
    if fmt == "csv":
        return csv_safe(df).to_csv(index=False).encode("utf-8")
    if fmt == "parquet":
        buf = io.BytesIO()
        df.to_parquet(buf, index=False)
        return buf.getvalue()
    raise ValueError(f"unknown export format {fmt!r}; choose one of {FORMATS}")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def svg_bar_chart(labels: list[str], values: list[float], title: str, width: int = 640) -> str:
    """Horizontal bar chart (one bar per label, negative values to the left of the axis)."""
    row_h, left, pad = 18, 170, 10
    height = pad * 3 + row_h * max(len(values), 1) + 14
    vmax = max([abs(v) for v in values] + [1e-12])
    has_neg = any(v < 0 for v in values)
    plot_w = width - left - pad * 2
    zero = left + (plot_w / 2 if has_neg else 0)
    scale = (plot_w / 2 if has_neg else plot_w) / vmax
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">',
             f'<text x="{pad}" y="{pad + 10}" font-size="13" font-weight="bold">{html.escape(title)}</text>']
    for i, (label, value) in enumerate(zip(labels, values)):
        y = pad * 2 + 14 + i * row_h
        x0 = zero if value >= 0 else zero + value * scale
        color = "#4c78a8" if value >= 0 else "#e45756"
        parts.append(f'<text x="{left - 4}" y="{y + 12}" font-size="11" text-anchor="end">'
                     f'{html.escape(label)}</text>')
        parts.append(f'<rect x="{x0:.1f}" y="{y + 2}" width="{abs(value) * scale:.1f}" height="{row_h - 4}" '
                     f'fill="{color}"><title>{html.escape(label)}: {_fmt(value)}</title></rect>')
    parts.append(f'<line x1="{zero:.1f}" x2="{zero:.1f}" y1="{pad * 2 + 14}" y2="{height - pad}" stroke="#333"/>')
    parts.append("</svg>")
    return "".join(parts)


def svg_histogram(bin_lo: list[float], counts: list[int], bin_width: float, title: str, width: int = 640,
                  height: int = 220) -> str:
    """Vertical histogram; the x axis is labelled at its ends."""
    pad, top = 30, 26
    cmax = max(list(counts) + [1])
    n = max(len(counts), 1)
    bar_w = (width - 2 * pad) / n
    plot_h = height - top - pad
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">',
             f'<text x="{pad}" y="16" font-size="13" font-weight="bold">{html.escape(title)}</text>']
    for i, (lo, count) in enumerate(zip(bin_lo, counts)):
        h = plot_h * count / cmax
        parts.append(f'<rect x="{pad + i * bar_w:.1f}" y="{top + plot_h - h:.1f}" width="{max(bar_w - 1, 0.5):.1f}"'
                     f' height="{h:.1f}" fill="#72b7b2"><title>[{_fmt(lo)}, {_fmt(lo + bin_width)}): '
                     f'{count}</title></rect>')
    if len(bin_lo):
        parts.append(f'<text x="{pad}" y="{height - 10}" font-size="11">{_fmt(bin_lo[0])}</text>')
        parts.append(f'<text x="{width - pad}" y="{height - 10}" font-size="11" text-anchor="end">'
                     f'{_fmt(bin_lo[-1] + bin_width)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def html_table(df: pd.DataFrame, max_rows: int = 200) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    rows = []
    for rec in df.head(max_rows).itertuples(index=False):
        rows.append("<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in rec) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


_CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse;
font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}th{background:#f3f3f3}
pre{background:#f7f7f7;padding:1em;overflow:auto;font-size:12px}h2{margin-top:1.6em}"""


def render_report(title: str, run: dict[str, Any], summary: dict[str, Any], sections: Iterable[tuple[str, str]]) -> str:
    """A self-contained HTML page: run facts, summary figures, then (heading, html) sections."""
    facts = {k: run.get(k) for k in ("id", "name", "status", "model_id", "q_sae_id", "k_sae_id", "layer",
                                      "heads", "n_samples", "n_pairs", "code_version", "created", "finished",
                                      "wall_s")}
    facts_df = pd.DataFrame({"field": list(facts), "value": [_fmt(v) for v in facts.values()]})
    summary_df = pd.DataFrame({"figure": list(summary), "value": [_fmt(v) for v in summary.values()]})
    body = [f"<h1>{html.escape(title)}</h1>", "<h2>Run</h2>", html_table(facts_df),
            "<h2>Summary</h2>", html_table(summary_df)]
    for heading, content in sections:
        body.append(f"<h2>{html.escape(heading)}</h2>{content}")
    config = json.dumps(run.get("config", {}), indent=2, sort_keys=True, default=str)
    body.append(f"<h2>Config</h2><pre>{html.escape(config)}</pre>")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body>{''.join(body)}</body></html>")
