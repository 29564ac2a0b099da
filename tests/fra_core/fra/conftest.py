"""FRA tests run single-threaded: the tensors are tiny, and on a shared 2-core machine torch's
intra-op threads only add scheduling stalls (a 10 ms engine call becomes 1.5 s under load)."""

import pytest


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    yield
