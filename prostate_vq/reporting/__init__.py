"""The Markdown report (``write_report``) and its tables, from run folders on disk."""

from __future__ import annotations

__all__ = ["write_report"]


def __getattr__(name: str):
    # Lazy, so that importing a reporting module does not pull in the whole report code.
    if name == "write_report":
        from prostate_vq.reporting.markdown import write_report

        return write_report
    raise AttributeError(f"module 'prostate_vq.reporting' has no attribute {name!r}")
