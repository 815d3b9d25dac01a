"""``python -m fusionkit.sweep.worker JOB.json``: run one sweep job in a fresh process.

The local device queue starts one per run with ``CUDA_VISIBLE_DEVICES`` set; the record lands in
the run directory. Exit status: 0 for ok, 1 for a failed run, 130 after Ctrl-C.
"""

from __future__ import annotations

import sys
from pathlib import Path

from fusionkit.sweep.execute import execute_job
from fusionkit.sweep.plan import SweepJob


def main(argv: list[str] | None = None) -> int:
    """Run the job in ``argv[0]``; returns the exit status."""
    args = sys.argv[1:] if argv is None else argv
    job = SweepJob.from_json(Path(args[0]).read_text())
    try:
        record = execute_job(job)
    except KeyboardInterrupt:
        return 130
    return 0 if record["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
