"""The `condlora` command: maps subcommands to typed functions in their own modules.

Each command module exposes `add_arguments(parser)` and `main(args) -> int`. Errors caused by the
user (`CondLoRAError`) print one line and exit with code 2; no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import NoReturn

from .. import __version__
from ..errors import CondLoRAError

COMMANDS = {
    "train": ("condlora.cli.train", "fine-tune one model on a GLUE task or own data files (LoRA, CondLoRA, ...)"),
    "study": ("condlora.cli.study", "the paper's study: LR search, seeds, CIs and paired tests, Tables 2, 3 and 4"),
    "analyze": ("condlora.cli.analyze", "conversion matrices, subspace similarity heatmaps and Table 3"),
    "bench": ("condlora.cli.bench", "training/inference speed and memory against real PEFT LoRA"),
    "export": ("condlora.cli.export", "write a condlora adapter as a plain PEFT LoRA adapter"),
}


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and epilogs as written; every option's default in its help unless the help names it."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        """Wrapped help lines that keep hyphenated names (condlora-general) whole."""
        import textwrap

        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if "default" in text or default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return text
        shown = ",".join(map(str, default)) if isinstance(default, list) else default
        return f"{text} (default: {shown})".replace("%", "%%")


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (the usage is in `-h`), exit code 2."""

    def error(self, message: str) -> NoReturn:
        """Print `PROG: error: MESSAGE (PROG -h lists the options)` and exit with code 2."""
        self.exit(2, f"{self.prog}: error: {message} ({self.prog} -h lists the options)\n")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The argument parser; only `command`'s own arguments are built (keeps `-h` fast)."""
    parser = Parser(prog="condlora", formatter_class=HelpFormatter,
                    description="CondLoRA: a single linear layer yields task-adapted low-rank matrices.")
    parser.add_argument("--version", action="version", version=f"condlora {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text, formatter_class=HelpFormatter)
        if name == command:
            importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    try:
        parser = build_parser(command if command in COMMANDS else None)
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        return int(importlib.import_module(COMMANDS[args.command][0]).main(args) or 0)
    except CondLoRAError as e:
        print(f"condlora {command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
