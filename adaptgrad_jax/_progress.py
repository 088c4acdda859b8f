"""One progress bar for the library and its CLI (rich, optional)."""

from __future__ import annotations

import contextlib
import sys
from typing import Any, Callable, Iterator, Optional


@contextlib.contextmanager
def progress_bar(enabled: bool, total: Optional[int], description: str, *, console: Any = None,
                 show_rate: bool = False, **fields: str) -> Iterator[Callable[..., None]]:
  """A rich progress bar on stderr (or ``console``); yields ``advance(n=1, **fields)``.

  ``fields`` name extra columns shown after the count (e.g. ``loss="-"``),
  updated by keyword through ``advance``. Disabled, or without rich installed,
  ``advance`` does nothing.

  Example:
    >>> with progress_bar(False, 3, "steps") as advance:
    ...   for _ in range(3):
    ...     advance()
  """
  if not enabled:
    yield lambda n=1, **kw: None
    return
  try:
    from rich import progress as rp  # pylint: disable=import-outside-toplevel
    from rich.console import Console  # pylint: disable=import-outside-toplevel
  except ImportError:
    yield lambda n=1, **kw: None
    return
  columns = [rp.TextColumn("[bold]{task.description}"), rp.BarColumn(), rp.MofNCompleteColumn()]
  columns += [rp.TextColumn(f"{name} {{task.fields[{name}]}}") for name in fields]
  columns += [rp.TimeElapsedColumn(), rp.TimeRemainingColumn()]
  if show_rate:
    columns.append(rp.TextColumn("{task.fields[rate]}"))
  with rp.Progress(*columns, console=console or Console(file=sys.stderr), transient=False) as bar:
    task = bar.add_task(description, total=total, rate="", **fields)

    def advance(n: int = 1, **updates: str) -> None:
      bar.update(task, advance=n, **updates)
      speed = bar.tasks[task].speed if show_rate else None
      if speed:
        bar.update(task, rate=f"{speed:.1f}/s")

    yield advance
