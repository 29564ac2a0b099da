"""Is the Hugging Face Hub usable? One check for the model, SAE and dataset loaders (torch-free).

Offline machines are common (CI, air-gapped laptops, cluster nodes). The HF clients retry for tens of
seconds before they give up; these checks answer within seconds so loaders can fail fast with a fix.
"""

from __future__ import annotations

import os
import socket
import threading
from contextlib import contextmanager
from urllib.parse import urlparse

_TRUE = ("1", "true", "yes")


def offline_requested() -> bool:
    """HF_HUB_OFFLINE (or HF_DATASETS_OFFLINE) is set: the user asked for no Hub traffic at all."""
    return any(os.environ.get(name, "").lower() in _TRUE for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def hub_reachable(timeout_s: float = 3.0) -> bool:
    """Not offline_requested() and a TCP connection to the Hub (or $HF_ENDPOINT) opens within `timeout_s`.

    The probe runs in a daemon thread because a DNS lookup is not covered by the socket timeout and can hang.
    """
    if offline_requested():
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((url.hostname, url.port or 443), timeout=timeout_s):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout_s + 0.5)
    return bool(result and result[0])


@contextmanager
def forced_offline():
    """Force the HF clients offline while loading from the cache (they read the flag at import time, so
    patch huggingface_hub's constant too); restores both afterwards."""
    import huggingface_hub.constants as hf_constants

    old_env, old_const = os.environ.get("HF_HUB_OFFLINE"), hf_constants.HF_HUB_OFFLINE
    os.environ["HF_HUB_OFFLINE"], hf_constants.HF_HUB_OFFLINE = "1", True
    try:
        yield
    finally:
        hf_constants.HF_HUB_OFFLINE = old_const
        if old_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old_env
