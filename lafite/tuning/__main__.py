"""``python -m lafite.tuning worker '<json>'``: the entry point of an extra worker process."""

from __future__ import annotations

import json
import signal
import sys
from typing import Any

from lafite.errors import UserError
from lafite.tuning.running import WorkerArgs, work

# -- worker entry point ------------------------------------------------------------------------


def _interrupt(signum: int, frame: Any) -> None:
    """SIGTERM from the parent (it was interrupted): leave like Ctrl-C, so the trial's MLflow
    run is closed as KILLED and Optuna records the trial as failed (to be retried)."""
    raise KeyboardInterrupt


def _worker_main(argv: list[str]) -> int:
    """``python -m lafite.tuning worker '<json WorkerArgs>'``: one extra worker process."""
    if len(argv) != 2 or argv[0] != "worker":
        print("usage: python -m lafite.tuning worker '<json>' (started by lafite-repro tune)",
              file=sys.stderr)
        return 2
    args = WorkerArgs(**json.loads(argv[1]))
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        work(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))
