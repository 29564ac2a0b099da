"""Store CLI: ``python -m store ingest <job_dir> <db_path>`` — ingest a job's shards into a database file.

Used by ``python -m fra_core accumulate --ingest`` (as a child process, so fra_core never imports store).
Exit 0 when ingested, also when the database is busy (an app holds it: it ingests the job itself when it
next lists runs); exit 2 on bad input.
"""

from __future__ import annotations

import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 3 or argv[0] != "ingest":
        print("usage: python -m store ingest <job_dir> <db_path>", file=sys.stderr)
        return 2
    from store import Store, StoreBusy, StoreError, ingest_job_shards

    job_dir, db_path = Path(argv[1]), Path(argv[2])
    if not (job_dir / "job.json").is_file():
        print(f"error: {job_dir} is not a job folder (no job.json)", file=sys.stderr)
        return 2
    store = Store(db_path, timeout_s=5)
    try:
        with store.write() as con:
            res = ingest_job_shards(con, job_dir)
    except StoreBusy:
        print("database busy (an app holds it): the app ingests this job when it next lists runs", flush=True)
        return 0
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        store.close()
    print(f"ingested run {res['run']}: {res['shards']} new shards, {res['samples']} samples", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
