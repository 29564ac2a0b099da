"""Page filters that survive navigation and can be shared as a URL (no torch).

Streamlit forgets a widget's value when its page is left (the widget is not rendered in that run), and
`st.switch_page` clears the query parameters. A page names its filters once, as {widget key: (query
parameter, parse)}; then

* `restore(page, fields)` (before the widgets): query parameters win (a shared URL), else the values the
  page had when it was last left; a parameter that does not parse is an `st.error` naming it and its value.
* `save(page, fields)` (after the widgets): remembers the values and writes them to the query parameters,
  so the address bar always shares the current view.
"""

from __future__ import annotations

from typing import Any, Callable

import streamlit as st

Fields = dict[str, tuple[str, Callable[[str], Any]]]


def as_bool(text: str) -> bool:
    low = str(text).strip().lower()
    if low not in ("true", "false", "1", "0"):
        raise ValueError("expected true or false")
    return low in ("true", "1")


def as_int(text: str, lo: int = 0, hi: int | None = None) -> int:
    try:
        value = int(str(text).strip())
    except ValueError:
        value = None
    if value is None or value < lo or (hi is not None and value > hi):
        raise ValueError(f"expected a whole number in {lo} … {hi if hi is not None else '∞'}")
    return value


def int_in(lo: int, hi: int | None = None) -> Callable[[str], int]:
    return lambda text: as_int(text, lo, hi)


def choice(options) -> Callable[[str], str]:
    """A parser accepting one of `options` (shown in its error)."""
    allowed = [str(o) for o in options]

    def parse(text: str) -> str:
        if str(text) not in allowed:
            raise ValueError(f"choose one of {', '.join(allowed)}")
        return str(text)
    return parse


def restore(page: str, fields: Fields) -> None:
    saved = st.session_state.get(f"_persist_{page}", {})
    params = st.query_params.to_dict()
    applied = st.session_state.get(f"_persist_{page}_applied")
    fresh = {name: params[name] for _, (name, _) in fields.items() if name in params}
    use_params = bool(fresh) and fresh != applied
    for key, (name, parse) in fields.items():
        if use_params and name in fresh:
            try:
                st.session_state[key] = parse(fresh[name])
            except (TypeError, ValueError) as exc:
                st.error(f"URL parameter {name} = {fresh[name]!r} ignored: {exc}", icon=":material/link_off:")
        elif key not in st.session_state and key in saved:
            st.session_state[key] = saved[key]
    if use_params:
        st.session_state[f"_persist_{page}_applied"] = fresh


def save(page: str, fields: Fields) -> None:
    values = {key: st.session_state[key] for key in fields if key in st.session_state}
    st.session_state[f"_persist_{page}"] = values
    out = {fields[key][0]: (str(v).lower() if isinstance(v, bool) else str(v)) for key, v in values.items()}
    keep = {k: v for k, v in st.query_params.to_dict().items() if k not in {n for n, _ in fields.values()}}
    if {**keep, **out} != st.query_params.to_dict():
        st.query_params.from_dict({**keep, **out})
    st.session_state[f"_persist_{page}_applied"] = out
