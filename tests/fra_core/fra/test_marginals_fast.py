"""`sample_marginals`' fast path (uncentred values: side sums + the selected bands' abs sums) gives the
per-cell reference's numbers (`sample_marginals_general`) and a cell-by-cell brute force's, on tiny random
inputs: causal and bidirectional masks, the diagonal and BOS key / query excluded, weighted or not."""

import pytest
import torch

from fra_core.fra.marginals import sample_marginals, sample_marginals_fast, sample_marginals_general

F64 = torch.float64
H, T, K, L, D, NQ, NK, SCALE = 2, 7, 3, 4, 5, 2, 3, 1.7


def _inputs(seed: int, weighted: str | None):
    """(qf, qon, kf, kon, kid, qn, kn, weight): features 0 where absent, as `batch_marginals` passes them."""
    g = torch.Generator().manual_seed(seed)
    qon, kon = torch.rand(T, K, generator=g) > 0.3, torch.rand(T, L, generator=g) > 0.3
    qf = torch.randn(H, T, K, D, dtype=F64, generator=g) * qon[None, :, :, None]
    kf = torch.randn(H, T, L, D, dtype=F64, generator=g) * kon[None, :, :, None]
    qn, kn = torch.randn(H, T, NQ, D, dtype=F64, generator=g), torch.randn(H, T, NK, D, dtype=F64, generator=g)
    kid = torch.randint(0, 5, (T, L), generator=g)
    w = None if weighted is None else torch.rand(H, T, T, dtype=F64, generator=g)
    if weighted == "signed":
        w = w - 0.5
    return qf, qon, kf, kon, kid, qn, kn, w


def _masks(kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(sel, amask) [T, T] bool: causal / bidirectional attention, cells excluded as the engine's options do."""
    amask = torch.ones(T, T, dtype=torch.bool)
    if kind.startswith("causal"):
        amask = amask.tril()
    sel = amask.clone()
    if "nodiag" in kind:
        sel.fill_diagonal_(False)
    if "nobos" in kind:
        sel[:, 0] = False
        sel[0, :] = False
    if kind == "empty":
        sel[:] = False
    return sel, amask


def _brute(qf, qon, kf, kon, qn, kn, sel, w) -> dict:
    """Every cell's value, one at a time (uncentred): q_val / k_val (n, sum, abs) and the node totals."""
    q_all, k_all = qf.sum(2) + qn.sum(2), kf.sum(2) + kn.sum(2)
    q_val, k_val = torch.zeros(H, T, K, 3, dtype=F64), torch.zeros(H, T, L, 3, dtype=F64)
    q_nodes, k_nodes = torch.zeros(H, NQ, 4, dtype=F64), torch.zeros(H, NK, 4, dtype=F64)

    def add(row, v):
        row += torch.tensor([1.0, v, abs(v)], dtype=F64)

    for h in range(H):
        for i in range(T):
            for j in range(T):
                if not sel[i, j]:
                    continue
                c = 1.0 if w is None else float(w[h, i, j])
                for k in range(K):
                    if qon[i, k]:
                        add(q_val[h, i, k], float(qf[h, i, k] @ k_all[h, j]) / SCALE * c)
                for n in range(L):
                    if kon[j, n]:
                        add(k_val[h, j, n], float(q_all[h, i] @ kf[h, j, n]) / SCALE * c)
                for n in range(NQ):
                    add(q_nodes[h, n, :3], float(qn[h, i, n] @ k_all[h, j]) / SCALE * c)
                    q_nodes[h, n, 3] += float(qn[h, i, n] @ kf[h, j].sum(0)) / SCALE * c
                for n in range(NK):
                    add(k_nodes[h, n, :3], float(q_all[h, i] @ kn[h, j, n]) / SCALE * c)
                    k_nodes[h, n, 3] += float(qf[h, i].sum(0) @ kn[h, j, n]) / SCALE * c
    return {"q_val": q_val, "k_val": k_val, "q_nodes": q_nodes, "k_nodes": k_nodes}


def _close(got: dict, want: dict, keys=None) -> bool:
    """Every tensor within float64 rounding: |got − want| ≤ 1e-12 · max |want| (+ a floor for all-zero)."""
    return all(torch.allclose(got[k], want[k], rtol=0, atol=1e-12 * max(1.0, float(want[k].abs().max())))
               for k in keys or want)


MASKS = ["causal", "causal_nodiag", "causal_nodiag_nobos", "bidir", "bidir_nodiag_nobos", "empty"]


@pytest.mark.parametrize("weighted", [None, "pattern", "signed"])
@pytest.mark.parametrize("mask", MASKS)
def test_fast_path_equals_the_per_cell_reference_and_brute_force(mask, weighted):
    qf, qon, kf, kon, kid, qn, kn, w = _inputs(MASKS.index(mask), weighted)
    sel, amask = _masks(mask)
    want = _brute(qf, qon, kf, kon, qn, kn, sel, w)
    general = sample_marginals_general(qf, qon, kf, kon, kid, qn, kn, sel, amask, False, w, SCALE)
    assert _close(general, want)
    for bands in (1, 3, 4, T + 2):  # one band, uneven bands, the default, more bands than rows (empty ones)
        fast = sample_marginals_fast(qf, qon, kf, kon, qn, kn, sel, w, SCALE, bands=bands)
        assert _close(fast, want), bands
        assert _close(fast, general, ["q_feat", "k_feat", "q_all", "k_all"])
        assert fast["q_val"].shape == (H, T, K, 3) and fast["k_nodes"].shape == (H, NK, 4)


@pytest.mark.parametrize("drop", ["diagonal", "bos_key", "bos_query"])
def test_the_comparison_sees_one_dropped_line_of_cells(drop):
    """The check above is tight enough to fail if the fast path lost the diagonal, the BOS key column or
    the BOS query row (cells it spans at a band's edge)."""
    qf, qon, kf, kon, kid, qn, kn, w = _inputs(1, None)
    sel, _ = _masks("causal")
    lost = sel.clone()
    if drop == "diagonal":
        lost.fill_diagonal_(False)
    elif drop == "bos_key":
        lost[:, 0] = False
    else:
        lost[0, :] = False
    want = _brute(qf, qon, kf, kon, qn, kn, sel, w)
    assert not _close(sample_marginals_fast(qf, qon, kf, kon, qn, kn, lost, w, SCALE), want)


@pytest.mark.parametrize("centre", [False, True])
def test_sample_marginals_takes_the_fast_path_unless_centred(centre, monkeypatch):
    """Uncentred → the fast path; row-centred → the per-cell reference (centring is not linear per band)."""
    import fra_core.fra.marginals as marginals

    qf, qon, kf, kon, kid, qn, kn, w = _inputs(3, "pattern")
    sel, amask = _masks("causal_nodiag")
    want = sample_marginals_general(qf, qon, kf, kon, kid, qn, kn, sel, amask, centre, w, SCALE)
    taken = []
    for name in ("sample_marginals_fast", "sample_marginals_general"):
        real = getattr(marginals, name)
        monkeypatch.setattr(marginals, name, lambda *a, real=real, name=name, **kw: taken.append(name) or real(*a, **kw))
    got = sample_marginals(qf, qon, kf, kon, kid, qn, kn, sel, amask, centre, w, SCALE)
    assert taken == ["sample_marginals_general" if centre else "sample_marginals_fast"]
    assert _close(got, want)


def test_features_and_nodes_of_one_buffer_are_joined_without_a_copy():
    """`batch_marginals` lays a side's features and nodes out in one [H, T, K + n, d] buffer: the fast
    path joins the two slices as a view of it (other inputs: a copy), with the same numbers."""
    from fra_core.fra.marginals import _joined

    qf, qon, kf, kon, kid, qn, kn, w = _inputs(4, None)
    sel, _ = _masks("causal_nodiag")
    bq, bk = torch.cat([qf, qn], 2), torch.cat([kf, kn], 2)
    views = (bq[:, :, :K], bq[:, :, K:], bk[:, :, :L], bk[:, :, L:])
    joined = _joined(views[0], views[1])
    assert joined.data_ptr() == bq.data_ptr() and torch.equal(joined, bq)
    assert _joined(qf, qn).data_ptr() != qf.data_ptr() and torch.equal(_joined(qf, qn), bq)
    assert torch.equal(_joined(views[1], views[0]), torch.cat([qn, qf], 2))  # not in buffer order: a copy
    got = sample_marginals_fast(views[0], qon, views[2], kon, views[1], views[3], sel, w, SCALE)
    assert _close(got, _brute(qf, qon, kf, kon, qn, kn, sel, w))
