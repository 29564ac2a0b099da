"""Every feature id of the explorer pages links to the Feature page (with its own SAE's ref, including
the SAE of a combined upstream hook_z side), and Neuronpedia links come only from registry ids."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from fra_core.neuronpedia import feature_url, neuronpedia_id, parse_registry
from tests.pages.fra_helpers import errors, frame_with, open_page


def _params(url: str) -> dict:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def test_weights_view_links_each_feature_to_its_sae(fra_ws):
    at = open_page("pages/fra_weights.py")
    assert not at.exception and not errors(at), errors(at)
    data = frame_with(at, "abs_sum")
    assert data["q_page"].str.startswith("feature?").all()
    first = _params(data["q_page"].iloc[0])
    assert first["model"] == "demo" and first["sae"] == "demo-l1-ln1" and int(first["feature"]) == data["q_gid"].iloc[0]
    partners = frame_with(at, "partner")
    assert partners["partner_page"].map(lambda u: _params(u)["sae"]).eq("demo-l1-ln1").all()
    at.number_input(key="fra_weights_feature").set_value(0).run()
    opts = at.selectbox(key="fra_weights_qsae").options
    at.selectbox(key="fra_weights_qsae").set_value(next(o for o in opts if o.startswith("upstream"))).run()
    assert not at.exception and not errors(at), errors(at)
    data = frame_with(at, "abs_sum")
    saes = {_params(u)["sae"] for u in data["q_page"]}
    assert saes and all("hook-z" in s or "hook_z" in s or s.startswith("demo-l0") for s in saes), saes


REGISTRY = """\
gpt2-small-hook-z-kk:
  conversion_func: connor_rob_hook_z
  saes:
  - id: blocks.5.hook_z
    l0: 3.0
    neuronpedia: gpt2-small/5-att-kk
    path: gpt2-small_L5_Hcat_z_v9.pt
  - id: blocks.6.hook_z
    path: gpt2-small_L6_Hcat_z_v9.pt
other-release:
  saes:
  - id: layer_1
    neuronpedia: 'model/1-res'
"""


def test_neuronpedia_ids_come_from_the_registry_only():
    by_id, by_file = parse_registry(REGISTRY.splitlines(keepends=True))
    assert by_id == {("gpt2-small-hook-z-kk", "blocks.5.hook_z"): "gpt2-small/5-att-kk",
                     ("other-release", "layer_1"): "model/1-res"}
    assert by_file == {"gpt2-small_L5_Hcat_z_v9.pt": "gpt2-small/5-att-kk"}
    # the installed SAELens registry: ckkissane's GPT-2 Small attention SAEs are hosted; a self-trained SAE
    # on the same hook is not, nor is an unknown file
    assert neuronpedia_id("release:gpt2-small-hook-z-kk/blocks.5.hook_z") == "gpt2-small/5-att-kk"
    assert feature_url("release:gpt2-small-hook-z-kk/blocks.5.hook_z", 7) == \
        "https://www.neuronpedia.org/gpt2-small/5-att-kk/7"
    assert neuronpedia_id("my-gpt2-l5-hook-z") is None and neuronpedia_id("ckkissane:/x/unknown.pt") is None
    assert feature_url("demo-l1-ln1", 3) is None


def test_exports_carry_neuronpedia_links_for_registry_saes_only():
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    from ui.store import with_neuronpedia

    table = pa.table({"q_src": [0, 1], "q_feat": [3, 4], "k_src": [1, 0], "k_feat": [5, 6]})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    data = buf.getvalue()
    assert with_neuronpedia(data, "parquet", {0: "demo-l1-ln1", 1: "mine"}) == data  # self-trained: unchanged
    out = pq.read_table(io.BytesIO(with_neuronpedia(
        data, "parquet", {0: "release:gpt2-small-hook-z-kk/blocks.5.hook_z", 1: "mine"}))).to_pydict()
    assert out["q_neuronpedia"] == ["https://www.neuronpedia.org/gpt2-small/5-att-kk/3", None]
    assert out["k_neuronpedia"] == [None, "https://www.neuronpedia.org/gpt2-small/5-att-kk/6"]
    csv = with_neuronpedia(b"q_src,q_feat,k_src,k_feat\n0,3,0,4\n", "csv",
                           {0: "release:gpt2-small-hook-z-kk/blocks.5.hook_z"}).decode()
    assert "gpt2-small/5-att-kk/3" in csv and "gpt2-small/5-att-kk/4" in csv
