"""Headless CLI: ``python -m fra_core <command> [options]``.

Each command lives with its capability and is imported lazily (``module:function`` taking argv and
returning an exit code), so ``python -m fra_core demo`` does not import SAELens, DuckDB users do not
import torch, and so on. Bad input exits non-zero with a one-line reason on stderr.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("fra_core.models.demo", "build (if needed) and load the demo model; print per-head scores"),
    "train-sae": ("fra_core.sae.train", "train an SAE from a YAML config (TrainSAEConfig)"),
    "accumulate": ("fra_core.accumulate.cli", "accumulate FRA pair statistics from a YAML config"),
    "convert": ("fra_core.restoration.convert", "convert a restoration checkpoint to HookedTransformer"),
    "train-restoration": ("fra_core.restoration.train", "train a restoration model from a YAML config"),
    "hash-password": ("fra_core.server", "hash a password for the server config's [passwords] table"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        lines = [f"  {name:<18} {help_}" for name, (_, help_) in COMMANDS.items()]
        print("usage: python -m fra_core <command> [options]\n\ncommands:\n" + "\n".join(lines))
        if argv and argv[0] not in ("-h", "--help"):
            print(f"error: unknown command {argv[0]!r}", file=sys.stderr)
            return 2
        return 0
    module = importlib.import_module(COMMANDS[argv[0]][0])
    return int(module.cli_main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
