"""AppTest: the Pair tables page on an all-pair run stored as co-activation rows (issue 14): every view
renders from `pair_rows` / `pair_example_rows` with the per-head numbers the store computes."""

from __future__ import annotations

import numpy as np

from tests.pages.test_pair_tables_page import _ok, _open, _top
from tests.store.coact_jobs import LAYERS, expected_rows, make_coact_job
from ui.pair_filters import VIEWS


def test_every_view_renders_on_a_coact_run(workspace):
    _, cells, extra = make_coact_job(workspace.jobs, "coact-page", n_shards=2, seed=4)
    at = _open(params={"pt_min_count": "1", "pt_head": "L1H2"})
    _ok(at)
    exp = expected_rows(cells, extra["vecs"])
    key = ["q_src", "q_feat", "k_src", "k_feat"]
    head = exp[(exp["layer"] == 1) & (exp["head"] == 2)].sort_values(key)
    top = _top(at).sort_values(key)
    assert len(top) == len(head)  # fewer than the page's row count: every pair of the head
    np.testing.assert_array_equal(top["n"].to_numpy(), head["n"].to_numpy())
    np.testing.assert_allclose(top["sum"].to_numpy(), head["sum"].to_numpy(), rtol=1e-9)
    for view in VIEWS[1:]:
        at.radio(key="pt_view").set_value(view).run()
        _ok(at)
    at.radio(key="pt_view").set_value("SQL").run()
    at.button(key="pt_sql_run").click().run()
    _ok(at)
    per_head = at.dataframe[0].value
    assert {(int(r.layer), int(r.head)) for r in per_head.itertuples()} >= {
        (layer, h) for layer, heads in LAYERS.items() for h in heads}
