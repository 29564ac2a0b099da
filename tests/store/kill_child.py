"""Child process for the kill -9 tests: ingest every job of a jobs folder, killing itself with SIGKILL at
the `kill_at`-th statement the ingest sends to DuckDB (0 = never), or just running until killed from outside.

    python -m tests.store.kill_child <db> <jobs_root> <kill_at>

Prints the number of statements on stdout when it finishes (how the test learns the range of moments).
"""

from __future__ import annotations

import os
import signal
import sys

from store import Store, ingest_all_jobs


class KillingConnection:
    """A connection proxy that counts `execute` calls and kills the process at call number `kill_at`
    (before the statement runs: everything earlier is sent, this one and the rest never are)."""

    def __init__(self, con, kill_at: int):
        self._con, self._kill_at, self.calls = con, kill_at, 0

    def execute(self, *args, **kwargs):
        self.calls += 1
        if self.calls == self._kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return self._con.execute(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._con, name)


def main(argv: list[str]) -> int:
    db, jobs_root, kill_at = argv[0], argv[1], int(argv[2])
    store = Store(db)
    with store.write() as con:
        proxy = KillingConnection(con, kill_at)
        ingest_all_jobs(proxy, jobs_root)
    store.close()
    print(proxy.calls, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
