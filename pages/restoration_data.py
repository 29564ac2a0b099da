"""Restoration data: read eBL fragments (upload, a path, or the shipped demo sample), audit their
characters, preview the cleaning before/after, see the vocabulary, and build a masked dataset."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from fra_core.atf import (
    CLEAN_CHOICES,
    AtfError,
    CleanOptions,
    audit_fragments,
    build_vocab,
    clean_fragment,
    load_fragments,
    parse_atf,
    parse_corpus,
    sample_path,
)
from fra_core.paths import PathError, check_upload_size, user_path
from fra_core.restoration.dataset import BuildDatasetConfig, DatasetBuildError, build_restoration_dataset
from ui.auth import page_gate
from ui.common import show_error, workspace

page_gate(__file__)  # sign-in and role, on every run (see ui.auth)

STATUS_HELP = "status per character: c read on the tablet (maskable) · b editor's restoration · g gap · m kept markup"


@st.cache_data(show_spinner="Reading fragments…", max_entries=4)
def read_upload(data: bytes, name: str):
    return parse_corpus(data, name)


@st.cache_data(show_spinner="Reading fragments…", max_entries=4)
def read_path(path: str):
    return load_fragments(path)


@st.cache_data(show_spinner="Auditing characters…", max_entries=8)
def run_audit(fragments, options: CleanOptions, max_len: int):
    return audit_fragments(fragments, options, max_len)


def choose_source():
    kind = st.radio("Source", ["Demo sample (shipped)", "Upload", "File on this machine"], horizontal=True)
    if kind == "Upload":
        up = st.file_uploader("eBL JSON / JSONL, or an ATF text file", type=["json", "jsonl", "atf", "txt"])
        return (read_upload(check_upload_size(up.getvalue(), up.name), up.name), up.name) if up else (None, None)
    if kind == "File on this machine":
        path = st.text_input("Path", placeholder="/data/ebl/fragments.json").strip()
        return (read_path(str(user_path(path, what="fragments path"))), path) if path else (None, None)
    return read_path(str(sample_path())), str(sample_path())


def choose_options() -> CleanOptions:
    with st.expander("Cleaning options", expanded=False):
        cols = st.columns(3)
        values = {}
        for i, (name, choices) in enumerate(CLEAN_CHOICES.items()):
            values[name] = cols[i % 3].selectbox(name.replace("_", " "), choices, key=f"clean_{name}")
    return CleanOptions(**values)


def show_audit(fragments, options: CleanOptions, max_len: int) -> None:
    report = run_audit(fragments, options, max_len)
    summary = report.summary()
    m = st.columns(6)
    m[0].metric("fragments", summary["fragments"])
    m[1].metric("text lines", summary["text_lines"])
    m[2].metric("clean characters", f"{summary['clean_chars']:,}")
    m[3].metric("distinct characters", summary["distinct_chars"])
    m[4].metric("lost (gap + restored)", f"{100 * summary['lost_share']:.1f} %")
    m[5].metric(f"longer than {max_len}", summary["fragments_over_max_len"], help="chunked by line when building")
    if report.unknown:
        st.warning("Characters eBL-ATF does not define: " + ", ".join(
            f"`{c}` ×{n} (first in {report.unknown_examples[c]})" for c, n in report.unknown.items()))
    c1, c2 = st.columns([3, 2])
    c1.markdown("**Per fragment**")
    c1.dataframe(pd.DataFrame(report.fragments), hide_index=True, height=300, width="stretch")
    c2.markdown("**Characters**")
    c2.dataframe(pd.DataFrame(report.chars), hide_index=True, height=300, width="stretch")
    st.caption("Line kinds: " + ", ".join(f"{k} {v}" for k, v in sorted(report.line_kinds.items())))


def show_preview(fragments, options: CleanOptions) -> None:
    ids = [f.fragment_id for f in fragments]
    pick = st.selectbox("Fragment", ids, key="preview_fragment")
    frag = fragments[ids.index(pick)]
    before, after = st.columns(2)
    before.markdown("**ATF (before)**")
    before.code(frag.atf or "(empty)", language=None)
    after.markdown("**Cleaned text lines (after)**")
    lines = clean_fragment(frag, options)
    after.code("\n".join(line.text for line in lines) or "(no text lines)", language=None)
    rows = [{"kind": line.kind, "raw": line.raw} for line in parse_atf(frag.atf)]
    with st.expander("Line classification and per-character status"):
        st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
        st.caption(STATUS_HELP)
        st.dataframe(pd.DataFrame([{"text": line.text, "status": line.status} for line in lines]),
                     hide_index=True, width="stretch")


def show_vocab(fragments, options: CleanOptions) -> None:
    from fra_core.atf import char_counts

    lines = [line for f in fragments for line in clean_fragment(f, options)]
    if not lines:
        st.info("No text lines left after cleaning.")
        return
    vocab = build_vocab(lines)
    counts = char_counts(lines)
    rows = [{"id": i, "token": vocab.token(i), "count": counts.get(vocab.token(i), None)} for i in range(vocab.size)]
    st.caption(f"{vocab.size} ids: 6 reserved (pad, mask, gap, unk, bos, eos), then characters by frequency.")
    st.dataframe(pd.DataFrame(rows), hide_index=True, height=300, width="stretch")


def build_form(fragments, options: CleanOptions, source: str) -> None:
    with st.form("build_dataset"):
        c = st.columns(4)
        name = c[0].text_input("Dataset name", "restoration")
        max_len = c[1].number_input("Max length (tokens, with <bos>)", 16, 8192, 768)
        mask_rate = c[2].number_input("Mask rate", 0.01, 0.9, 0.15)
        span_prob = c[3].number_input("Span share", 0.0, 1.0, 0.5)
        max_span = c[0].number_input("Max span", 2, 64, 8)
        val_frac = c[1].number_input("Validation share", 0.0, 0.5, 0.1)
        test_frac = c[2].number_input("Test share", 0.0, 0.5, 0.1)
        broken = c[3].selectbox("Editors' restorations as input", ["keep", "gap"])
        seed = c[0].number_input("Seed", 0, 2**31 - 1, 0)
        go = st.form_submit_button("Build dataset", type="primary")
    if not go:
        return
    try:
        cfg = BuildDatasetConfig(**options.to_dict(), source=source, name=name.strip(), max_len=int(max_len),
                                 mask_rate=float(mask_rate), span_prob=float(span_prob), max_span=int(max_span),
                                 val_frac=float(val_frac), test_frac=float(test_frac), broken_input=broken,
                                 seed=int(seed))
        with st.spinner("Cleaning, chunking, masking, saving…"):
            folder = build_restoration_dataset(cfg, workspace(), fragments=fragments)
    except (ValueError, OSError) as exc:
        show_error(exc, "Could not build the dataset")
        return
    st.success(f"Saved dataset **{cfg.name}** to `{folder}`")
    import json

    stats = json.loads((folder / "settings.json").read_text(encoding="utf-8"))["stats"]
    st.dataframe(pd.DataFrame(stats).T, width="stretch")


st.title("Restoration data")
st.caption("eBL fragment records (JSON list or JSONL with an `atf` field) or plain ATF files.")
try:
    fragments, source = choose_source()
except (AtfError, DatasetBuildError, PathError) as exc:
    show_error(exc, "Could not read the fragments")
    st.stop()
if not fragments:
    st.info("Choose a file to start.")
    st.stop()
options = choose_options()
max_len = int(st.session_state.get("audit_max_len", 768))
audit_tab, preview_tab, vocab_tab, build_tab = st.tabs(["Audit", "Cleaning preview", "Vocabulary", "Build dataset"])
with audit_tab:
    st.number_input("Model context for the length check", 16, 8192, 768, key="audit_max_len")
    show_audit(fragments, options, max_len)
with preview_tab:
    show_preview(fragments, options)
with vocab_tab:
    show_vocab(fragments, options)
with build_tab:
    build_form(fragments, options, source)
