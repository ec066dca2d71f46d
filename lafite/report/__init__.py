"""The reproduction report: paper versus reproduced, table by table, with figures.

``build_report(workspace, scale=None, out_dir="reports", fmt="html", ...)`` is what
``lafite-repro report`` calls. Import-light on purpose: matplotlib, jinja2 and mlflow load only
when a report is built.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lafite.report.build import Study

__all__ = ["Study", "build_report"]


def build_report(*args: Any, **kwargs: Any) -> list[Path]:
    """See :func:`lafite.report.build.build_report`."""
    from lafite.report.build import build_report as build

    return build(*args, **kwargs)


def __getattr__(name: str) -> Any:
    if name == "Study":
        from lafite.report.build import Study

        return Study
    raise AttributeError(name)
