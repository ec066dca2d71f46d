"""Cluster settings of the SLURM launcher, written once by a lab and overridden per command.

Three sources, later ones winning: a spec's ``scales.<scale>.slurm`` section (what a table needs
at that scale: time, GPUs per run), the user's cluster file (``$LAFITE_CLUSTER_CONFIG``, else
``~/.config/lafite-repro/cluster.yaml``: the lab's partition, account, QoS), and the command
line. Each source is a mapping of the keys in :data:`FIELDS`; an unknown key or a bad value is one
message naming the source.

Example cluster file::

    slurm:
      partition: gpu
      account: vision-lab
      qos: normal
      time: "2-00:00:00"      # or minutes, e.g. 2880
      gpus_per_run: 4
      cpus_per_task: 8
      mem_gb: 64
      sbatch: ["--exclusive", "--mail-type=FAIL"]
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from lafite.errors import UserError

FIELDS = {
    "partition": "SLURM partition (sbatch --partition)",
    "time": "time limit per job: minutes, or D-HH:MM:SS / HH:MM:SS (sbatch --time)",
    "account": "account to charge (sbatch --account)",
    "qos": "quality of service (sbatch --qos)",
    "constraint": "node features required (sbatch --constraint)",
    "gpus_per_run": "GPUs of one node per run; one DDP process per GPU (0: CPU, one process)",
    "cpus_per_task": "CPU cores per process (sbatch --cpus-per-task)",
    "mem_gb": "memory per node in GB (sbatch --mem; 0: the partition's default)",
    "sbatch": "extra sbatch arguments, a list such as ['--exclusive', '--mail-type=FAIL']",
    "max_requeues": "how often a job may be requeued after preemption or its time limit",
    "signal_delay_s": "seconds before the time limit at which a job checkpoints and requeues",
}
DEFAULT_CLUSTER_FILE = Path("~/.config/lafite-repro/cluster.yaml")


@dataclass(frozen=True)
class SlurmSettings:
    partition: str = ""
    time: int = 24 * 60  # minutes
    account: str = ""
    qos: str = ""
    constraint: str = ""
    gpus_per_run: int = 0
    cpus_per_task: int = 1
    mem_gb: int = 0
    sbatch: tuple[str, ...] = field(default_factory=tuple)
    max_requeues: int = 20
    signal_delay_s: int = 90

    def merged(self, values: dict[str, Any], source: str) -> SlurmSettings:
        """These settings with ``values`` (one source's mapping) applied, checked."""
        if not isinstance(values, dict):
            raise UserError(f"{source}: expected a mapping of SLURM settings "
                            f"({', '.join(FIELDS)}), got {type(values).__name__}")
        changes: dict[str, Any] = {}
        for key, value in values.items():
            if value is None:
                continue
            name = str(key).replace("-", "_")
            if name not in FIELDS:
                raise UserError(f"{source}: unknown SLURM setting {key!r}; valid: "
                                f"{', '.join(FIELDS)}")
            changes[name] = _checked(name, value, source)
        return replace(self, **changes)

    def sbatch_options(self) -> dict[str, str]:
        """The sbatch options these settings give a job (for --dry-run and for submitit)."""
        options = {"time": _format_minutes(self.time), "nodes": "1",
                   "ntasks-per-node": str(max(self.gpus_per_run, 1)),
                   "cpus-per-task": str(self.cpus_per_task)}
        for name in ("partition", "account", "qos", "constraint"):
            if getattr(self, name):
                options[name] = getattr(self, name)
        if self.gpus_per_run:
            options["gpus-per-node"] = str(self.gpus_per_run)
        if self.mem_gb:
            options["mem"] = f"{self.mem_gb}G"
        options["signal"] = f"USR2@{self.signal_delay_s}"
        return options

    def extra_parameters(self) -> dict[str, Any]:
        """The extra sbatch arguments as submitit's ``additional_parameters``: ``--key=value``
        becomes key -> value, a bare ``--flag`` key -> True (rendered ``#SBATCH --flag``)."""
        extra: dict[str, Any] = {}
        for arg in self.sbatch:
            key, _, value = arg.lstrip("-").partition("=")
            extra[key.replace("-", "_")] = value if value else True
        return extra


def _checked(name: str, value: Any, source: str) -> Any:
    where = f"{source}: {name}"
    if name == "time":
        return parse_time(value, where)
    if name in ("gpus_per_run", "cpus_per_task", "mem_gb", "max_requeues", "signal_delay_s"):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise UserError(f"{where}: expected a whole number >= 0, got {value!r}")
        if name == "cpus_per_task" and value < 1:
            raise UserError(f"{where}: a process needs at least one CPU core, got {value!r}")
        return value
    if name == "sbatch":
        if isinstance(value, str):
            value = value.split()
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise UserError(f"{where}: expected a list of sbatch arguments such as "
                            f"['--exclusive'], got {value!r}")
        bad = [v for v in value if not v.startswith("--")]
        if bad:
            raise UserError(f"{where}: sbatch arguments are given in long form "
                            f"(--name=value); got {bad}")
        return tuple(value)
    if not isinstance(value, str) or any(c.isspace() for c in value):
        raise UserError(f"{where}: expected one word, got {value!r}")
    return value


_TIME = re.compile(r"^(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+)$")


def parse_time(value: Any, where: str = "--time") -> int:
    """Minutes from ``90``, ``"90"``, ``"1:30:00"`` or ``"2-00:00:00"``."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    text = str(value).strip()
    if text.isdigit() and int(text) > 0:
        return int(text)
    match = _TIME.match(text)
    if match:
        days, hours, minutes, seconds = match.groups()
        if hours is None:  # "MM:SS"
            hours, minutes, seconds = "0", minutes, seconds
        total = int(days or 0) * 1440 + int(hours) * 60 + int(minutes) + (int(seconds) > 0)
        if total > 0:
            return total
    raise UserError(f"{where}: expected a time limit in minutes or D-HH:MM:SS, got {value!r}")


def _format_minutes(minutes: int) -> str:
    days, rest = divmod(minutes, 1440)
    hours, mins = divmod(rest, 60)
    return f"{days}-{hours:02d}:{mins:02d}:00" if days else f"{hours:02d}:{mins:02d}:00"


def cluster_file() -> Path:
    return Path(os.environ.get("LAFITE_CLUSTER_CONFIG") or DEFAULT_CLUSTER_FILE).expanduser()


def resolve(spec_section: dict[str, Any] | None, spec_where: str,
            command_line: dict[str, Any]) -> SlurmSettings:
    """Spec section, then the user's cluster file, then the command line."""
    settings = SlurmSettings()
    if spec_section:
        settings = settings.merged(spec_section, spec_where)
    path = cluster_file()
    if path.is_file():
        import yaml

        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise UserError(f"{path}: not valid YAML ({exc})") from None
        if not isinstance(data, dict) or not isinstance(data.get("slurm", {}), dict):
            raise UserError(f"{path}: expected a top-level 'slurm:' mapping of settings "
                            f"({', '.join(FIELDS)})")
        unknown = set(data) - {"slurm"}
        if unknown:
            raise UserError(f"{path}: unknown section(s) {sorted(unknown)}; the file holds one "
                            "'slurm:' mapping")
        settings = settings.merged(data.get("slurm") or {}, str(path))
    return settings.merged(command_line, "command line")


__all__ = ["FIELDS", "SlurmSettings", "cluster_file", "parse_time", "resolve"]
