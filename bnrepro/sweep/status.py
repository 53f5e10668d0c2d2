"""How a sweep point ended, in its run directory: `sweep_status.json` (finished, diverged or failed, with the
error and traceback) and its group's log, `train.log`. Imports neither jax nor ray."""

from __future__ import annotations

import json
import traceback
from pathlib import Path
from typing import Any

from absl import logging

from bnrepro.training.run_dir import SWEEP_STATUS_FILE, write_atomically

STATUS_FILE = SWEEP_STATUS_FILE
LOG_FILE = "train.log"  # a group's log, in its first point's run directory (a link to it in the others')


def read_status(run_dir: Path) -> dict[str, Any] | None:
    """A point's `sweep_status.json`, or None if it has not ended yet."""
    path = run_dir / STATUS_FILE
    return json.loads(path.read_text()) if path.exists() else None


def write_status(run_dir: Path, status: dict[str, Any]) -> None:
    """Records how a point ended in `RUN_DIR/sweep_status.json` (atomically), and in the log with its error and
    traceback, if any."""
    run_dir.mkdir(parents=True, exist_ok=True)
    write_atomically(run_dir / STATUS_FILE, json.dumps(status, indent=2) + "\n")
    error = f": {status['error']}\n{status.get('traceback', '')}".rstrip() if status.get("error") else ""
    logging.info("%s: %s%s", run_dir.name, status["status"], error)


def failure(e: BaseException) -> dict[str, Any]:
    """The status of a point stopped by `e`: its message and traceback."""
    return {
        "status": "failed",
        "error": f"{type(e).__name__}: {e}",
        "traceback": "".join(traceback.format_exception(e)),
    }
