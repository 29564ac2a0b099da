"""The one base class of every user-facing error in FRA Studio (torch-free, imported by `store` too).

Pages catch `FRAStudioError` and show its one-line message with `st.error`; the CLI prints it and exits
non-zero. It derives from ValueError because almost every case is bad input (a shape, a name, a value);
errors that are about the machine rather than the input (a full disk, a busy database) also derive from
RuntimeError.
"""

from __future__ import annotations


class FRAStudioError(ValueError):
    """Bad input or an unusable resource; the message names the field, shape or value and the fix."""
