"""A run ticket: everything a process needs to execute one planned run, in one JSON file.

The runner writes it in the run's folder before it hands the run to torchrun or SLURM; the
processes that execute it (possibly on another machine sharing the workspace) read it and need
nothing else: not the spec file, not the plan. It names the MLflow run the runner opened, so a
requeued job resumes the same run.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lafite.errors import UserError

TICKET_NAME = "ticket.json"


@dataclass
class RunTicket:
    spec_id: str
    scale: str
    row: str
    seed: int
    hash: str
    config: dict[str, Any]
    run_dir: str
    workspace: str
    tracking_uri: str | None
    run_id: str
    parent_id: str
    path: str = field(default="", compare=False)

    @property
    def label(self) -> str:
        return f"{self.row} (seed {self.seed})"


def write_ticket(ticket: RunTicket) -> Path:
    """Write atomically into the run folder; returns its path."""
    folder = Path(ticket.run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / TICKET_NAME
    ticket.path = str(path)
    data = asdict(ticket)
    data.pop("path")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)
    return path


def read_ticket(path: Path) -> RunTicket:
    try:
        data = json.loads(Path(path).read_text())
        return RunTicket(**data, path=str(path))
    except (OSError, ValueError, TypeError) as exc:
        raise UserError(f"run ticket {path} cannot be read ({exc}); run the table again to "
                        "write a new one") from exc
