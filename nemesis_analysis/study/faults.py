"""Test hook: make the worker process die in the middle of one chosen job, once (to test retries).

When ``$NEMESIS_FAULT_EXIT_ONCE`` names a marker file whose text is a job id, the worker running that job
removes the marker and exits at the job's first checkpoint (after an epoch or a corruption chunk has been
written). Only one process can remove the file, so the job dies exactly once and its retry completes.
"""

from __future__ import annotations

import os
from pathlib import Path

FAULT_ENV = "NEMESIS_FAULT_EXIT_ONCE"


def maybe_exit(job_id: str) -> None:
    """Exit this process at once (no cleanup, like a killed worker) if the marker names ``job_id``."""
    marker = os.environ.get(FAULT_ENV)
    if not marker:
        return
    path = Path(marker)
    try:
        if path.read_text().strip() != job_id:
            return
        path.unlink()  # the claim: a second process finds no file
    except OSError:
        return
    os._exit(77)
