"""Short readable names of a run's dictionary sources (no streamlit, no torch).

A run's sources are SAE refs: a workspace name ("demo-l1-ln1"), a registry ref
("release:gpt2-small-hook-z-kk/blocks.3.hook_z", 45 characters) or a ckkissane file
("ckkissane:/…/gpt2-small_L3_Hcat_z_lr1.20e-03_….pt"). Tables show them as e.g. "kk L3", "res-jb L5" or
"hook_z L3"; exports keep the full ref beside the short name (`store` rows only hold the source index).
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath

MAX_PLAIN = 24  # a plain name (no ':' or '/') up to this long is already readable: kept as it is
_HOOK_LAYER = re.compile(r"blocks\.(\d+)\.")
_KK_FILE_LAYER = re.compile(r"_L(\d+)_")


def _layer(ref: str, hook: str | None) -> int | None:
    for text, pattern in ((hook or "", _HOOK_LAYER), (ref, _HOOK_LAYER), (ref, _KK_FILE_LAYER)):
        m = pattern.search(text)
        if m:
            return int(m.group(1))
    return None


def _point(ref: str, hook: str | None) -> str | None:
    """The hook point without its block: 'hook_z', 'hook_resid_pre', 'ln1.hook_normalized' → 'ln1'."""
    text = hook or (ref.rsplit("/", 1)[-1] if "blocks." in ref else "")
    m = re.search(r"blocks\.\d+\.(.+)$", text)
    if not m:
        return None
    point = m.group(1).removeprefix("attn.")
    return point.split(".")[0] if point.endswith(".hook_normalized") else point


def short_name(ref: str, hook: str | None = None, model: str | None = None) -> str:
    """e.g. 'kk L3' (the gpt2-small-hook-z-kk release, or a ckkissane file), 'res-jb L5' (a registry release
    of `model`, named without the model), 'hook_z L3' (any other ref with a layer), the name itself for a
    short plain name."""
    ref = str(ref or "")
    if ref and len(ref) <= MAX_PLAIN and ":" not in ref and "/" not in ref:
        return ref
    layer = _layer(ref, hook)
    suffix = "" if layer is None else f" L{layer}"
    if ref.startswith("ckkissane:") or "hook-z-kk/" in ref:
        return f"kk{suffix}"
    if ref.startswith("release:") and layer is not None:
        release = ref.removeprefix("release:").split("/", 1)[0]
        for prefix in (f"{model}-" if model else None, "gpt2-small-"):
            if prefix and release.startswith(prefix) and len(release) - len(prefix) <= 16:
                return f"{release[len(prefix):]}{suffix}"
    point = _point(ref, hook)
    if point is not None:
        return f"{point}{suffix}"
    tail = PurePosixPath(ref.split(":", 1)[-1]).name or ref
    return tail if len(tail) <= MAX_PLAIN else tail[:MAX_PLAIN - 1] + "…"


def short_names(sources: list[dict], model: str | None = None) -> dict[int, str]:
    """{src: short name} of a run's sources (`get_run(...)["sources"]` rows), unique within the run: two
    sources that would read the same get their index appended ('kk L3 #0', 'kk L3 #1')."""
    names = {int(s["src"]): short_name(s.get("sae_id") or s.get("name") or "", s.get("hook"), model) for s in sources}
    seen: dict[str, int] = {}
    for name in names.values():
        seen[name] = seen.get(name, 0) + 1
    return {src: (f"{name} #{src}" if seen[name] > 1 else name) for src, name in names.items()}
