"""Errors of the command line: one line that says what went wrong and how to fix it.

The CLI never shows a traceback for a user mistake. Its own checks raise
:class:`UsageError` (a bad command line: exit code 2, like argparse) or
:class:`CliError` (the command could not be carried out: exit code 1), whose
message names the value and the fix. Errors raised by the library (its
``ValueError`` messages already name the argument and the fix) are shown the
same way by :func:`describe`. ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import errno
import math
from typing import Callable
from adaptgrad_jax._extras import install_hint

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

_MAX_CHARS = 600


class CliError(Exception):
  """A failure the user can fix, shown as one line; exit code 1."""

  exit_code = EXIT_FAILURE


class UsageError(CliError):
  """A bad command line (unknown name, bad option value); exit code 2."""

  exit_code = EXIT_USAGE


def one_line(message: str) -> str:
  """Joins a (possibly multi-line) message into one line, shortened if very long."""
  text = " ".join(part.strip() for part in str(message).splitlines() if part.strip())
  if len(text) > _MAX_CHARS:
    text = text[: _MAX_CHARS - 30].rstrip() + " ... (--debug shows all)"
  return text


def describe(err: BaseException) -> tuple[str, int]:
  """The one-line message and exit code for an exception reaching ``main``."""
  from adaptgrad_jax._files import LockedError  # pylint: disable=import-outside-toplevel

  if isinstance(err, CliError):
    return one_line(str(err)), err.exit_code
  if isinstance(err, LockedError):  # a concurrent run on the same --out
    return one_line(str(err)), EXIT_FAILURE
  if isinstance(err, ImportError):
    return one_line(str(err)), EXIT_FAILURE
  if isinstance(err, FileExistsError):
    return one_line(f"{err}; pass --overwrite to replace it"), EXIT_FAILURE
  if isinstance(err, MemoryError):
    return "out of memory; lower --batch-size (noise samples evaluated at once) or --n", EXIT_FAILURE
  if isinstance(err, (ValueError, TypeError, OSError, KeyError, OverflowError)):
    text = str(err) or type(err).__name__
    if isinstance(err, OSError) and getattr(err, "filename", None) and err.strerror:
      text = f"{err.filename}: {err.strerror}"
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
      text += "; free some space or choose another --out, then run the same command again to continue"
    return one_line(text), EXIT_FAILURE
  if "RESOURCE_EXHAUSTED" in str(err) or "Out of memory" in str(err):
    return "out of memory; lower --batch-size (noise samples evaluated at once) or --n", EXIT_FAILURE
  return (
    one_line(f"unexpected error {type(err).__name__}: {err} (run again with --debug for the traceback"
             " and report it)"),
    EXIT_FAILURE,
  )


def require_plotting(command: str) -> None:
  """Fails early, before any work, when the plotting extra is missing."""
  import importlib.util  # pylint: disable=import-outside-toplevel

  missing = [name for name, module in (("matplotlib", "matplotlib"), ("Pillow", "PIL"))
             if importlib.util.find_spec(module) is None]
  if missing:
    raise CliError(
      f"{command} writes PNG figures and needs {' and '.join(missing)}; install them with "
      + install_hint("plot"))


# ----------------------------------------------------------------------------
# argparse value types: each raises a message that names the value and the fix.


def _number(text: str, option: str) -> float:
  try:
    value = float(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"{option} {text!r} is not a number") from None
  if not math.isfinite(value):
    raise argparse.ArgumentTypeError(f"{option} {text!r} must be finite")
  return value


def output_folder(text: str) -> str:
  """``--out``: a folder path, never empty (an empty path would mean the current folder)."""
  if not text.strip():
    raise argparse.ArgumentTypeError(
      f"--out {text!r} is empty; pass a folder, e.g. --out maps (--out . for the current folder)")
  if "\0" in text:
    raise argparse.ArgumentTypeError(f"--out {text!r} holds a NUL character; pass a folder path")
  return text


def confidence(text: str) -> float:
  """``--c``: a confidence level in (0, 1)."""
  value = _number(text, "--c")
  if not 0.0 < value < 1.0:
    raise argparse.ArgumentTypeError(
      f"--c {text} is a confidence level and must lie in (0, 1); the paper uses 0.95")
  return value


def relative_tolerance(text: str) -> float:
  """``--rtol``: a number (the library checks that it lies in (0, 1))."""
  return _number(text, "--rtol")


def noise_level(text: str) -> float:
  """``--alpha``: SmoothGrad's noise level, >= 0."""
  value = _number(text, "--alpha")
  if value < 0:
    raise argparse.ArgumentTypeError(
      f"--alpha {text} is SmoothGrad's noise level sigma / (x_max - x_min) and must be >= 0;"
      " SmoothGrad recommends 0.2")
  return value


_MAX_COUNT = 2 ** 31 - 1  # counts beyond int32 overflow inside jitted code


def positive_int(option: str, hint: str) -> Callable[[str], int]:
  """An argparse type for an int in [1, 2**31 - 1], with a hint on what it counts."""

  def parse(text: str) -> int:
    try:
      value = int(text)
    except ValueError:
      raise argparse.ArgumentTypeError(f"{option} {text!r} must be a whole number >= 1; {hint}") from None
    if value < 1:
      raise argparse.ArgumentTypeError(f"{option} {text} must be >= 1; {hint}")
    if value > _MAX_COUNT:
      raise argparse.ArgumentTypeError(f"{option} {text} is too large (at most {_MAX_COUNT}); {hint}")
    return value

  return parse


def seed(text: str) -> int:
  """``--seed``: a whole number that fits a 64-bit integer (jax.random.key's range)."""
  try:
    value = int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"--seed {text!r} must be a whole number, e.g. 0") from None
  if not -(2 ** 63) <= value < 2 ** 63:
    raise argparse.ArgumentTypeError(f"--seed {text} does not fit a 64-bit integer; pick a smaller one, e.g. 0")
  return value


def target(text: str) -> int | str:
  """``--target``: a class index or ``predicted``."""
  if text == "predicted":
    return text
  try:
    value = int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(
      f"--target {text!r} must be a class index (e.g. 285 for 'Egyptian cat' in ImageNet) or"
      " 'predicted'") from None
  if value < 0:
    raise argparse.ArgumentTypeError(f"--target {text} must be a class index >= 0 or 'predicted'")
  return value


def float_list(option: str, check: Callable[[str], float]) -> Callable[[str], list[float]]:
  """A comma-separated list of numbers, each checked by ``check``."""

  def parse(text: str) -> list[float]:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
      raise argparse.ArgumentTypeError(f"{option} {text!r} must be a comma-separated list, e.g. 0.9,0.95,0.99")
    return [check(p) for p in parts]

  return parse


def int_list(option: str, hint: str) -> Callable[[str], list[int]]:
  """A comma-separated list of ints >= 1."""
  one = positive_int(option, hint)

  def parse(text: str) -> list[int]:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
      raise argparse.ArgumentTypeError(f"{option} {text!r} must be a comma-separated list, e.g. 1,10,50")
    return [one(p) for p in parts]

  return parse
