import pytest
import torch

from fra_core.devices import dtype_for, pick_device


def test_auto_prefers_cuda_else_cpu(monkeypatch):
    monkeypatch.delenv("FRA_DEVICE", raising=False)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert pick_device().type == expected
    assert pick_device("auto").type == expected


def test_env_var_and_explicit_cpu(monkeypatch):
    monkeypatch.setenv("FRA_DEVICE", "cpu")
    assert pick_device() == torch.device("cpu")
    assert dtype_for(torch.device("cpu")) == torch.float32


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA present")
def test_unavailable_devices_are_clear_errors():
    with pytest.raises(ValueError, match="CUDA is not available"):
        pick_device("cuda")
    with pytest.raises(ValueError, match="unknown device"):
        pick_device("tpu")


def test_mps_is_opt_in_only(monkeypatch):
    monkeypatch.delenv("FRA_DEVICE", raising=False)
    assert pick_device("auto").type != "mps"
