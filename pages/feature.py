"""Feature: one SAE feature across the stored runs — what it fires on, how often, its label, its FRA
partners per head — from DuckDB only (never imports torch); its weight-based views on demand.

Deep link: `feature?model=<model>&sae=<sae id>&feature=<id>[&run=<run id>]`; every feature id of the app
links here. The query parameters follow the widgets, so the address bar always shares the current view.
"""

from __future__ import annotations

import streamlit as st

from fra_core.neuronpedia import feature_url as neuronpedia_url
from store import StoreBusy, StoreError
from store.feature_queries import feature_runs, feature_saes
from ui import auth as ui_auth
from ui import common as ui
from ui import feature as ui_feature
from ui import store as ui_store
from ui.store import METRIC_LABELS

ui_auth.page_gate(__file__)  # sign-in and role, on every run (see ui.auth)

P = "fp"
PARTNER_METRICS = ["mean_abs", "mean", "sum", "abs_sum", "max_abs", "count"]

st.title("Feature")
ui_store.sync_jobs()
try:
    with ui_store.get_store().read() as cur:
        saes = feature_saes(cur)
except (StoreError, StoreBusy) as exc:
    ui.show_error(exc, "Cannot read the database")
    st.stop()
if saes.empty:
    st.info("No stored runs yet: a feature's page is built from accumulation runs (**Dataset accumulation**).")
    st.stop()

# ----------------------------------------------------------------------------- query parameters → widgets
params = {k: v for k, v in st.query_params.to_dict().items() if k in ("model", "sae", "feature", "run")}
if params and params != st.session_state.get(f"{P}_applied"):
    choices = list(zip(saes["sae_id"], saes["model_id"]))
    wanted = (params.get("sae"), params.get("model"))
    match = next((c for c in choices if c[0] == wanted[0] and (wanted[1] is None or c[1] == wanted[1])), None)
    if params.get("sae") and match is None:
        st.error(f"sae = {params['sae']!r} (model {params.get('model') or 'any'}) has no stored run here.",
                 icon=":material/error:")
    elif match is not None:
        st.session_state[f"{P}_sae"] = match
    if str(params.get("feature", "")).isdigit():
        st.session_state[f"{P}_feature"] = int(params["feature"])
    elif "feature" in params:
        st.error(f"feature = {params['feature']!r} is not a feature id (a whole number ≥ 0).", icon=":material/error:")
    if str(params.get("run", "")).isdigit():
        st.session_state[f"{P}_run_wanted"] = int(params["run"])
    st.session_state[f"{P}_applied"] = params

options = list(zip(saes["sae_id"], saes["model_id"]))
if st.session_state.get(f"{P}_sae") not in options:
    st.session_state.pop(f"{P}_sae", None)
c = st.columns([3, 1, 3])
sae_id, model_id = c[0].selectbox("SAE", options, format_func=lambda o: f"{o[0]}  ·  model {o[1]}", key=f"{P}_sae",
                                  help="The SAEs of the stored runs (with the model each ran on).")
d_sae = saes.loc[(saes["sae_id"] == sae_id) & (saes["model_id"] == model_id), "d_sae"].iloc[0]
fid = int(c[1].number_input("Feature id", min_value=0, max_value=max(int(d_sae or 1) - 1, 0), step=1,
                            key=f"{P}_feature", help=f"0 … {int(d_sae or 1) - 1} (d_sae = {d_sae})"))
with ui_store.get_store().read() as cur:
    runs = feature_runs(cur, sae_id, model_id)
run_rows = {int(r["id"]): r for _, r in runs.iterrows()}
wanted = st.session_state.pop(f"{P}_run_wanted", None)
if wanted in run_rows:
    st.session_state[f"{P}_run"] = wanted
elif st.session_state.get(f"{P}_run") not in run_rows:
    st.session_state.pop(f"{P}_run", None)
run_id = c[2].selectbox("Run", list(run_rows), key=f"{P}_run", help="Stored runs of this SAE (finished ones "
                        "first, failed ones last); every figure below comes from the chosen run.",
                        format_func=lambda i: f"#{i} {run_rows[i]['name']} · {run_rows[i]['status']} · "
                                              f"{int(run_rows[i]['n_samples']):,} samples")
st.query_params.from_dict({"model": model_id, "sae": sae_id, "feature": fid, "run": run_id})
st.session_state[f"{P}_applied"] = st.query_params.to_dict()
src = int(run_rows[run_id]["src"])
all_runs = ui_store.runs()
version = ui_store.run_version(all_runs, run_id)


def q(name: str, *args, **kwargs):
    return ui_store.query(name, version, *args, **kwargs)


try:
    info = q("feature_overview", run_id, fid, src=src)
    run_info = q("get_run", run_id)
except StoreError as exc:
    ui.show_error(exc)
    st.stop()
sae_of_src = {int(s["src"]): s["sae_id"] for s in run_info["sources"]}

# ----------------------------------------------------------------------------- header
st.subheader(f"Feature {fid} · {ui_feature.meaning(info)}")
link = neuronpedia_url(sae_id, fid)
st.caption(f"`{sae_id}` on `{info['hook']}` of model **{model_id}** · run #{run_id} "
           + (f"· [Neuronpedia ↗]({link})" if link else "· no Neuronpedia page (not a Neuronpedia-hosted "
                                                     "registry SAE)"))
m = st.columns(4)
m[0].metric("Density", "—" if info["density"] is None else f"{info['density']:.3%}",
            help="active tokens / tokens the run's job encoded")
m[1].metric("Active tokens", f"{info['n_active']:,}")
m[2].metric("Tokens seen", f"{info['n_tokens']:,}")
m[3].metric("Top token", info["top_tokens"][0][0] if info["top_tokens"] else "—",
            help="the token it is most often active on (its share of the active tokens in brackets below)")
ui_store.feature_label_editor(version, run_id, fid, src)

left, right = st.columns([3, 2])
hist = q("feature_histogram", run_id, fid, src=src)
if hist.empty:
    left.info("No activation histogram stored for this feature in this run (never active, or a run from "
              "before histograms were stored).")
else:
    left.altair_chart(ui_feature.histogram(hist), width="stretch")
if info["n_active"]:
    right.markdown("**Most frequent tokens** (where active · before it)")
    n = max(info["n_active"], 1)
    right.dataframe({"token": [t for t, _ in info["top_tokens"]], "share": [k / n for _, k in info["top_tokens"]]},
                    hide_index=True, width="stretch",
                    column_config={"share": st.column_config.ProgressColumn("share", format="percent", max_value=1)})
    right.caption("Before it: " + ", ".join(f"‘{t}’ {k / n:.0%}" for t, k in info["top_prev"][:5]))

# ----------------------------------------------------------------------------- contexts
st.subheader("Top activating contexts")
top = q("feature_contexts", run_id, fid, src=src, kind="top", n=10)
if top.empty:
    st.info("No stored contexts for this feature in this run.")
else:
    scale = float(top["value"].abs().max())
    ui_feature.contexts(top, scale, "Each token shaded by the feature's activation on it (hover: the value); "
                                    "the activating token is boxed.")
    with st.expander("Quantile groups (contexts drawn at random from each activation interval)"):
        groups = q("feature_contexts", run_id, fid, src=src, kind="sample", n=4, groups=5)
        for name, part in groups.groupby("group", sort=False):
            st.markdown(f"**Interval {name}**")
            ui_feature.contexts(part, scale)

# ----------------------------------------------------------------------------- FRA partners
st.subheader("Top FRA partners per head")
c = st.columns([2, 1, 1])
metric = c[0].selectbox("Rank partners by", PARTNER_METRICS, format_func=METRIC_LABELS.get, key=f"{P}_metric",
                        help="mean |FRA| per occurrence surfaces specific pairs; sums favour dense features.")
min_count = int(c[1].number_input("Min occurrences", 1, None, 2, key=f"{P}_min_count",
                                  help="pairs seen fewer times are left out (a mean of 1 occurrence is noise)"))
per_head = int(c[2].number_input("Per head", 1, 50, 5, key=f"{P}_per_head", help="partners shown per head"))
cols, shown = st.columns(2), {}
for col, side, title in ((cols[0], "query", "As query: its key partners"), (cols[1], "key", "As key: its query partners")):
    df = q("partners_by_head", run_id, fid, src=src, side=side, metric=metric, n=per_head, min_count=min_count)
    col.markdown(f"**{title}**")
    if df.empty:
        col.info(f"Feature {fid} has no pairs as {side} with at least {min_count} occurrences.")
        continue
    table, config = ui_feature.partners_table(df, sae_of_src, model_id, run_id, METRIC_LABELS[metric])
    col.dataframe(table, hide_index=True, width="stretch", column_config=config)
    shown[side] = df
ui_feature.open_pair_controls(version, run_id, run_info, fid, src, shown)

marg = q("feature_marginal", run_id, fid, src=src)
if not marg.empty:
    st.subheader("Marginal contributions (exact, all pairs)")
    marg.insert(0, "where", [f"L{int(a)}H{int(b)} as {s}" for a, b, s in zip(marg["layer"], marg["head"], marg["side"])])
    st.dataframe(marg.drop(columns=["layer", "head", "side"]), hide_index=True, width="stretch", column_config={
        "share": st.column_config.NumberColumn("share of the head's scores", format="percent"),
        "n": st.column_config.NumberColumn("cells where active", format="%d")})

# ----------------------------------------------------------------------------- weight-based (on demand)
st.subheader("From the weights")
if not ui_auth.can("run"):
    st.caption("Your role reads stored runs only: the weight-based views load models.")
    st.stop()
if st.button("Load decoder → vocabulary and weight partners", key=f"{P}_weights",
             help="Loads the model and the SAE (torch): a few seconds the first time."):
    st.session_state[f"{P}_weights_for"] = (model_id, sae_id, fid)
if st.session_state.get(f"{P}_weights_for") == (model_id, sae_id, fid):
    ui_feature.weight_views(model_id, sae_id, fid, run_info.get("layer"), sae_of_src, run_id)
else:
    st.caption("Not loaded: the stored parts above need no model.")
