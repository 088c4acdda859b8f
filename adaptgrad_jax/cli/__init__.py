"""The ``adaptgrad-jax`` command line: ``demo``, ``explain``, ``evaluate``,
``convergence``, ``confidence``.

``main(argv)`` is the console script (``adaptgrad-jax``) and
``python -m adaptgrad_jax``. It returns the exit code: 0 on success, 2 for a
bad command line, 1 when the command could not be carried out (the message
says why and how to fix it, on one line). ``--debug`` shows tracebacks.

Outputs are never half written nor silently replaced: each file is written
atomically, the ``--out`` folder is locked while a command runs, and an
interrupted command continues where it stopped when run again (see each
command's ``--help``).
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from typing import Optional, Sequence

from adaptgrad_jax.cli import _errors
from adaptgrad_jax.cli._errors import CliError, UsageError

__all__ = ["main"]

PROG = "adaptgrad-jax"

EPILOG = """\
examples:
  adaptgrad-jax demo                                  # offline, a few minutes on 2 CPU cores
  adaptgrad-jax explain cat.jpg --method adaptgrad --out maps/
  adaptgrad-jax evaluate --mnist --methods sg,ag --out eval/
  adaptgrad-jax explain-text "w12 B w30 a" --method adaptgrad --out text_maps/
  adaptgrad-jax convergence cat.jpg --ns 1,10,20,50,100 --out figures/
  adaptgrad-jax confidence cat.jpg --cs 0.5,0.8,0.9,0.95,0.99,0.999 --out figures/

'adaptgrad-jax COMMAND --help' describes each command.
"""


class _Formatter(argparse.RawDescriptionHelpFormatter):
  def __init__(self, prog):
    super().__init__(prog, max_help_position=32, width=min(100, max(60, _terminal_width())))


def _terminal_width() -> int:
  try:
    return os.get_terminal_size().columns
  except OSError:
    return 100


class _Parser(argparse.ArgumentParser):
  """An ArgumentParser whose errors are one line, raised instead of printed."""

  def error(self, message):  # pylint: disable=signature-differs
    raise UsageError(f"{message} (see {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
  # pylint: disable=import-outside-toplevel
  from adaptgrad_jax.cli import _demo, _evaluate, _explain, _sweeps, _text

  try:
    from adaptgrad_jax import __version__ as version
  except ImportError:  # pragma: no cover
    version = "unknown"
  parser = _Parser(
    prog=PROG, formatter_class=_Formatter, epilog=EPILOG,
    description="AdaptGrad (NeurIPS 2025) and friends: less noisy gradient explanations, in JAX.")
  parser.add_argument("--version", action="version", version=f"{PROG} {version}")
  parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
  subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
  _demo.add_parser(subparsers, _Formatter)
  _explain.add_parser(subparsers, _Formatter)
  _sweeps.add_parsers(subparsers, _Formatter)
  _evaluate.add_parser(subparsers, _Formatter)
  _text.add_parser(subparsers, _Formatter)
  for sub in subparsers.choices.values():
    sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                     help="show full tracebacks on errors")
  return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Runs the command line and returns its exit code.

  Args:
    argv: the arguments after the program name; default ``sys.argv[1:]``.

  Returns:
    0 on success, 1 when the command failed, 2 for a bad command line, 130
    when interrupted.

  Example:
    >>> from adaptgrad_jax.cli import main
    >>> main(["explain", "--help"])  # doctest: +SKIP
  """
  argv = list(sys.argv[1:] if argv is None else argv)
  debug = "--debug" in argv
  from rich.console import Console  # pylint: disable=import-outside-toplevel

  console = Console(highlight=False)
  err_console = Console(stderr=True, highlight=False)
  command = None
  try:
    parser = build_parser()
    try:
      args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help and --version
      return int(exit_.code or 0)
    command = args.command
    if command is None:
      parser.print_help()
      return _errors.EXIT_USAGE
    return int(args.run(args, console, err_console) or 0)
  except KeyboardInterrupt:
    where = f"{PROG} {command}" if command else PROG
    print(f"{where}: interrupted; the files written so far are whole: run the same command again to continue",
          file=sys.stderr)
    return _errors.EXIT_INTERRUPTED
  except Exception as err:  # pylint: disable=broad-except
    if debug:
      traceback.print_exc()
    message, code = _errors.describe(err)
    where = f"{PROG} {command}" if command else PROG
    print(f"{where}: error: {message}", file=sys.stderr)
    return code
