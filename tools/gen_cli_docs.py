"""Regenerate docs/cli.md from the argparse parser, so the CLI reference can never drift.

python tools/gen_cli_docs.py            # rewrite docs/cli.md
python tools/gen_cli_docs.py --check    # exit 1 when docs/cli.md is stale (the test suite runs this)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from prostate_vq.cli import build_parser

DOC = Path(__file__).resolve().parents[1] / "docs" / "cli.md"


def render() -> str:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {choice.dest: choice.help for choice in sub._choices_actions}
    lines = [
        "# Command-line reference",
        "",
        "Generated from the parser by `python tools/gen_cli_docs.py`; a test fails when it is stale.",
        "Every command exits 0 on success and 2 with one line naming the file and the problem on bad input.",
        "`python -m prostate_vq` is the same program (that is what `torchrun` launches).",
        "",
    ]
    for name, subparser in sub.choices.items():
        subparser.formatter_class = lambda prog: argparse.HelpFormatter(prog, width=100)
        lines += [f"## `prostate-vq {name}`", "", helps.get(name, ""), "", "```text", subparser.format_help().rstrip(), "```", ""]
    return "\n".join(lines)


def main() -> int:
    check = "--check" in sys.argv[1:]
    text = render()
    if check:
        if not DOC.exists() or DOC.read_text(encoding="utf-8") != text:
            print(f"{DOC} is stale: run python tools/gen_cli_docs.py", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(text, encoding="utf-8")
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
