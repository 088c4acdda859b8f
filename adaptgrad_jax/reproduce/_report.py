"""Shared output helpers of the reproductions: rich tables, markdown, JSON."""

from __future__ import annotations

import json
import math
import pathlib
from typing import Any, Sequence

Row = Sequence[Any]


def fmt(value: Any, digits: int = 4) -> str:
  """Formats a table cell: floats with ``digits`` decimals, None as '-'."""
  if value is None:
    return "-"
  if isinstance(value, float):
    if math.isnan(value):
      return "nan"
    return f"{value:.{digits}f}"
  return str(value)


def markdown_table(header: Row, rows: Sequence[Row], digits: int = 4) -> str:
  """A GitHub markdown table."""
  lines = ["| " + " | ".join(str(h) for h in header) + " |",
           "|" + "|".join("---" for _ in header) + "|"]
  for row in rows:
    lines.append("| " + " | ".join(fmt(v, digits) for v in row) + " |")
  return "\n".join(lines)


def print_rich_table(title: str, header: Row, rows: Sequence[Row], digits: int = 4,
                     caption: str | None = None) -> None:
  """Prints a table with rich (falls back to markdown without a terminal)."""
  from rich.console import Console  # pylint: disable=import-outside-toplevel
  from rich.table import Table  # pylint: disable=import-outside-toplevel
  table = Table(title=title, caption=caption)
  for i, h in enumerate(header):
    table.add_column(str(h), justify="left" if i == 0 else "right")
  for row in rows:
    table.add_row(*(fmt(v, digits) for v in row))
  Console().print(table)


def to_jsonable(obj: Any) -> Any:
  """Converts NumPy / JAX scalars and arrays, tuples and NaN for ``json``."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  if isinstance(obj, dict):
    return {str(k): to_jsonable(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [to_jsonable(v) for v in obj]
  if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):
    return to_jsonable(np.asarray(obj).tolist())
  if isinstance(obj, float) and not math.isfinite(obj):
    return None
  return obj


def write_outputs(out_dir: str | pathlib.Path, name: str, data: dict[str, Any],
                  markdown: str) -> tuple[pathlib.Path, pathlib.Path]:
  """Writes ``<out_dir>/<name>.json`` and ``<out_dir>/<name>.md``."""
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  json_path = out / f"{name}.json"
  md_path = out / f"{name}.md"
  json_path.write_text(json.dumps(to_jsonable(data), indent=2) + "\n")
  md_path.write_text(markdown.rstrip() + "\n")
  return json_path, md_path
