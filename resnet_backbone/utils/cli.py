"""What every command-line tool in tools/ shares: one way to end on an error, and the checks of its arguments.

`run_tool(main)` runs a tool's `main(argv)` and turns its outcome into an exit status:

- the library's own worded errors (`ConfigError`, `DatasetError`, `CheckpointError`, `NonFiniteLossError`,
  `PrecisionError`, a tool's `ToolError`: every exception class defined in the `resnet_backbone` package)
  print `<tool>: error: <message>` on stderr, no traceback, exit status 2 (argparse's status for a bad command
  line). Their messages already say which file / key / record and what to do; a traceback adds nothing.
  Set the environment variable RB_TRACEBACK=1 to get the traceback anyway.
- any other exception (RuntimeError, KeyError, a plain ValueError, ...) is a bug: it propagates, so Python
  prints the full traceback and the status is 1.
- Ctrl-C (KeyboardInterrupt): one line `<tool>: interrupted`, status 130 (128 + SIGINT, as a shell reports it).
- `SystemExit` (argparse errors, `--help`, `sys.exit` inside main) passes through unchanged.

    if __name__ == "__main__":
        sys.exit(run_tool(main))

`main`'s return value becomes the status when it is an int (0 if it returns None, a list, a dict ...).

This module imports nothing heavy (no torch): `resnet_backbone.engine.defaults` builds its parser with it.
"""
from __future__ import annotations

import argparse
import os
import re
import sys

__all__ = ["ToolError", "ToolInputNotFound", "is_library_error", "error_message", "run_tool", "positive_int",
           "OverridesArgumentParser", "misplaced_flags", "check_overrides"]

_PACKAGE = __name__.split(".", 1)[0]  # "resnet_backbone"


class ToolError(Exception):
    """A tool refuses its command line (a combination of arguments, or what is on disk: an output that would
    overwrite an input, an existing dataset without --overwrite ...). The message names the paths/flags."""


class ToolInputNotFound(ToolError, FileNotFoundError):
    """A file or folder named on the command line does not exist (also a FileNotFoundError)."""


def is_library_error(exc: BaseException) -> bool:
    """True for an exception whose class (or one of its bases) is defined in the resnet_backbone package:
    the library's worded errors. Builtin and third-party exceptions are not (they are treated as bugs)."""
    for cls in type(exc).__mro__:
        module = getattr(cls, "__module__", "") or ""
        if module == _PACKAGE or module.startswith(_PACKAGE + "."):
            return True
    return False


def error_message(exc: BaseException) -> str:
    """The text of a library error for the one-line report. An error re-raised from a DataLoader worker carries
    the worker's traceback in its message ("Caught X in DataLoader worker process 0. Original Traceback ...");
    only the original message (its last "X: ..." part) is kept."""
    msg = str(exc).strip()
    if "Original Traceback (most recent call last)" in msg:
        name = re.escape(type(exc).__name__)
        matches = list(re.finditer(rf"^(?:[\w.]+\.)?{name}: ", msg, flags=re.MULTILINE))
        if matches:
            msg = msg[matches[-1].end():].strip() + " (raised in a DataLoader worker)"
    return msg or type(exc).__name__


def _prog(prog: str | None) -> str:
    return prog or os.path.basename(sys.argv[0] if sys.argv and sys.argv[0] else "") or _PACKAGE


def run_tool(main, argv: list[str] | None = None, prog: str | None = None) -> int:
    """Run `main(argv)`; return the exit status (see the module docstring). `prog`: the name in the error line
    (default: the script's file name, like argparse)."""
    try:
        result = main(argv)
    except KeyboardInterrupt as e:
        # an interrupt the library explains (e.g. during a checkpoint save: which file is intact) keeps its words
        print(f"{_prog(prog)}: interrupted" + (f": {e}" if str(e) else ""), file=sys.stderr)
        return 130
    except Exception as e:
        if not is_library_error(e) or os.environ.get("RB_TRACEBACK", "") not in ("", "0"):
            raise
        sys.stdout.flush()
        print(f"{_prog(prog)}: error: {error_message(e)}", file=sys.stderr)
        return 2
    if isinstance(result, bool) or not isinstance(result, int):
        return 0
    return result


def positive_int(text: str) -> int:
    """argparse `type=` for an integer >= 1 (argparse reports "argument --x: must be a positive integer ...")."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _as_flag(token: str, option_strings) -> str | None:
    """The tool's flag that `token` spells ("--flag", "--flag=value", or an unambiguous "--fl"), else None."""
    name = token.split("=", 1)[0]
    if name in option_strings:
        return name
    if name.startswith("--"):
        matches = [s for s in option_strings if s.startswith(name)]
        if len(matches) == 1:
            return matches[0]
    return None


def misplaced_flags(opts, option_strings) -> list[tuple[str, bool]]:
    """The tokens of the KEY VALUE overrides `opts` that are really flags typed after them, as (token, is a flag
    of the tool): a flag of the tool (`option_strings`) anywhere, or any "--word" where a config key should be
    (config keys never start with "-"). Negative numbers are values, not flags."""
    opts = list(opts or [])
    if opts[:1] == ["--"]:
        opts = opts[1:]
    found = []
    for i, token in enumerate(opts):
        if not isinstance(token, str) or not token.startswith("-") or token == "-" or _is_number(token):
            continue
        known = _as_flag(token, option_strings) is not None
        if known or (i % 2 == 0 and token.startswith("--")):
            found.append((token, known))
    return found


def check_overrides(parser: argparse.ArgumentParser, opts) -> None:
    """parser.error (exit 2) when a flag was typed after the KEY VALUE config overrides: argparse hands
    everything from the first override on to `opts`, so the flag would be read as a config key or value."""
    bad = misplaced_flags(opts, list(parser._option_string_actions))
    if not bad:
        return
    first = next(t for t in opts if t != "--")
    known = [f"'{t}'" for t, k in bad if k]
    unknown = [f"'{t}'" for t, k in bad if not k]
    parts = []
    if known:
        names = ", ".join(known)
        parts.append(f"{names} {'is a flag' if len(known) == 1 else 'are flags'} placed after the KEY VALUE config "
                     f"overrides (which start at '{first}'); flags must come before the overrides: move {names} "
                     f"before '{first}'")
    if unknown:
        names = ", ".join(unknown)
        parts.append(f"{names} {'stands' if len(unknown) == 1 else 'stand'} where a config key should be, but "
                     f"config keys do not start with '-', and {'it is' if len(unknown) == 1 else 'they are'} not "
                     "a flag of this tool (see --help; flags come before the KEY VALUE overrides)")
    msg = "; ".join(parts)
    parser.error(msg)


class OverridesArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser whose `opts` positional (KEY VALUE config overrides, nargs=REMAINDER) is checked for
    flags typed after the overrides (`check_overrides`)."""

    def parse_known_args(self, args=None, namespace=None):
        ns, extras = super().parse_known_args(args, namespace)
        if getattr(ns, "opts", None):
            check_overrides(self, ns.opts)
        return ns, extras
