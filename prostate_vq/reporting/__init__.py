"""Figures (matplotlib object API, no pyplot state) and the Markdown report (``write_report``)."""

from __future__ import annotations

__all__ = ["write_report"]


def __getattr__(name: str):
    # Lazy, so that importing prostate_vq.reporting.figures does not pull in torch and the report code.
    if name == "write_report":
        from prostate_vq.reporting.markdown import write_report

        return write_report
    raise AttributeError(f"module 'prostate_vq.reporting' has no attribute {name!r}")
