"""contracts.row_strengths runs its tile blocks on every usable core: the bits equal a one-thread run."""

import numpy as np
import pytest

from fra_core import contracts, pair_strengths


@pytest.mark.parametrize("unsorted", [False, True])
def test_g_on_all_cores_has_the_bits_of_one_core(monkeypatch, unsorted):
    rng = np.random.default_rng(7)
    qv = rng.normal(size=(300, 4, 64)) * rng.gamma(1.0, 1.0, (300, 1, 1))
    kv = rng.normal(size=(500, 4, 64)) * rng.gamma(1.0, 1.0, (500, 1, 1))
    qi, ki = np.sort(rng.integers(0, 300, 20_000)), rng.integers(0, 500, 20_000)
    if unsorted:
        qi = rng.permutation(qi)
    threads = []
    real = pair_strengths._on_cores
    monkeypatch.setattr(pair_strengths, "_on_cores", lambda fn, args: (threads.append(len(args)), real(fn, args)))
    monkeypatch.setattr(pair_strengths.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    many = contracts.row_strengths(qv, qi, kv, ki)
    monkeypatch.setattr(pair_strengths.os, "sched_getaffinity", lambda pid: {0}, raising=False)
    one = contracts.row_strengths(qv, qi, kv, ki)
    assert threads and threads[0] > 4  # many blocks, shared among the cores
    assert np.array_equal(many.view(np.uint64), one.view(np.uint64))
