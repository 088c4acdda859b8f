"""Token heat maps: HTML (coloured spans with a hover title) and PNG (matplotlib, wrapped lines)."""

from __future__ import annotations

import html
import io
import os
import pathlib
from typing import Any, Optional, Sequence

import numpy as np

from adaptgrad_jax import _files


def _prepare(tokens, scores, stderr, mask):
  tokens = [str(t) for t in tokens]
  s = np.asarray(scores, np.float64)
  if s.shape != (len(tokens),):
    raise ValueError(f"scores has shape {s.shape} for {len(tokens)} tokens; pass one score per token.")
  if not np.all(np.isfinite(s)):
    raise ValueError("scores holds NaN or inf; token scores must be finite.")
  e = None
  if stderr is not None:
    e = np.asarray(stderr, np.float64)
    if e.shape != s.shape:
      raise ValueError(f"stderr has shape {e.shape} but scores has {s.shape}; pass one standard error per token.")
  keep = np.ones(len(tokens), bool) if mask is None else np.asarray(mask, bool)
  if keep.shape != s.shape:
    raise ValueError(f"mask has shape {keep.shape} but scores has {s.shape}; pass one boolean per token.")
  scale = float(np.max(np.abs(s[keep]))) if keep.any() else 0.0
  return tokens, s, e, keep, scale


def _colour(value: float, scale: float) -> tuple[float, float, float]:
  """White to red for positive, white to blue for negative, by ``|value| / scale``."""
  t = 0.0 if scale == 0 else min(abs(value) / scale, 1.0)
  if value >= 0:
    return (1.0, 1.0 - 0.75 * t, 1.0 - 0.75 * t)
  return (1.0 - 0.75 * t, 1.0 - 0.75 * t, 1.0)


def token_heatmap_html(
    tokens: Sequence[str],
    scores: Any,
    *,
    stderr: Optional[Any] = None,
    mask: Optional[Any] = None,
    title: Optional[str] = None,
    full_document: bool = True,
) -> str:
  """Token scores as HTML: one coloured span per token, its score (and standard error) on hover.

  Positive scores are red, negative blue, the strongest colour at the largest
  ``|score|`` of the real tokens; padded tokens (``mask`` False) are left
  out. Tokens and the title are HTML-escaped (``<``, ``&``, quotes), so any
  text is safe to show.

  Args:
    tokens: the token strings, one per score.
    scores: ``(L,)`` token scores (e.g. :func:`token_scores`).
    stderr: ``(L,)`` their standard errors, shown as ``score ± stderr``.
    mask: ``(L,)`` booleans, True on real tokens.
    title: a heading.
    full_document: a whole HTML page (True) or a ``<div>`` to embed.

  Returns:
    The HTML text.

  Example:
    >>> from adaptgrad_jax import text
    >>> page = text.token_heatmap_html(["<b>", "ok"], [1.0, -0.5], stderr=[0.1, 0.2], full_document=False)
    >>> "&lt;b&gt;" in page and "<b>" not in page, 'title="score 1 ± 0.1"' in page
    (True, True)
  """
  tokens, s, e, keep, scale = _prepare(tokens, scores, stderr, mask)
  spans = []
  for i, tok in enumerate(tokens):
    if not keep[i]:
      continue
    r, g, b = (int(round(255 * c)) for c in _colour(s[i], scale))
    hover = f"score {s[i]:.4g}" + (f" ± {e[i]:.2g}" if e is not None else "")
    spans.append(f'<span style="background-color: rgb({r}, {g}, {b}); padding: 1px 2px; margin: 1px;'
                 f' border-radius: 3px;" title="{html.escape(hover, quote=True)}">{html.escape(tok)}</span>')
  body = (f"<h3>{html.escape(title)}</h3>\n" if title else "") + (
      '<div style="font-family: monospace; line-height: 1.9; max-width: 60em;">' + " ".join(spans) + "</div>")
  if not full_document:
    return body
  return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>"
          f"{html.escape(title or 'token attribution')}</title></head>\n<body>\n{body}\n</body></html>\n")


def token_heatmap_png(
    path: Optional[str | os.PathLike],
    tokens: Sequence[str],
    scores: Any,
    *,
    mask: Optional[Any] = None,
    title: Optional[str] = None,
    line_width: int = 100,
    overwrite: bool = False,
) -> Any:
  """Token scores as a figure for papers: coloured tokens in wrapped lines of ``line_width`` characters.

  A monospace layout: tokens flow left to right and wrap at ``line_width``
  characters, so 512 tokens make about 30 readable lines at the default
  width (the figure grows in height, never shrinks its font). Colours as in
  :func:`token_heatmap_html`, with a colour bar of the score scale.

  Args:
    path: where to save the PNG (atomically; 150 dpi), or None to only return the figure.
    tokens: the token strings.
    scores: ``(L,)`` token scores.
    mask: ``(L,)`` booleans, True on real tokens (padding is left out).
    title: a title above the text.
    line_width: characters per line.
    overwrite: replace an existing file.

  Returns:
    The matplotlib figure.

  Raises:
    FileExistsError: ``path`` exists and ``overwrite`` is False.

  Example:
    >>> from adaptgrad_jax import text
    >>> import numpy as np
    >>> fig = text.token_heatmap_png(None, ["the", "cat"] * 256, np.linspace(-1, 1, 512))
    >>> bool(5 < fig.get_size_inches()[1] < 12)   # 512 tokens of 3 letters: 21 lines, 12 x 8.5 inches
    True
  """
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg", force=False)
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  from matplotlib import colors  # pylint: disable=import-outside-toplevel

  if isinstance(line_width, bool) or not isinstance(line_width, int) or line_width < 10:
    raise ValueError(f"line_width={line_width!r} must be an int >= 10 (characters per line).")
  tokens, s, _, keep, scale = _prepare(tokens, scores, None, mask)
  placed, col, row = [], 0, 0
  for i, tok in enumerate(tokens):
    if not keep[i]:
      continue
    tok = tok.replace("\n", "\\n") or " "
    width = min(len(tok), line_width)
    if col and col + width > line_width:
      col, row = 0, row + 1
    placed.append((col, row, tok[:line_width], s[i]))
    col += width + 1
  rows = row + 1
  fig_w = 12.0
  font = fig_w * 72 / (line_width * 0.66)
  line_h = font * 1.9 / 72
  fig_h = rows * line_h + (0.6 if title else 0.2) + 0.7
  fig = plt.figure(figsize=(fig_w, fig_h))
  ax = fig.add_axes([0.0, 0.7 / fig_h, 1.0, 1.0 - (0.7 + (0.6 if title else 0.2)) / fig_h])
  ax.set_xlim(-0.5, line_width + 0.5)
  ax.set_ylim(rows - 0.5, -0.5)
  ax.axis("off")
  for c, r, tok, v in placed:
    ax.text(c, r, tok, family="monospace", fontsize=font, va="center", ha="left",
            bbox={"facecolor": _colour(v, scale), "edgecolor": "none", "pad": 1.0})
  if title:
    fig.suptitle(title, y=1.0 - 0.15 / fig_h, va="top")
  cmap = colors.LinearSegmentedColormap.from_list("tokens", [_colour(-1, 1), (1, 1, 1), _colour(1, 1)])
  cax = fig.add_axes([0.3, 0.3 / fig_h, 0.4, 0.12 / fig_h])
  bar = fig.colorbar(plt.cm.ScalarMappable(colors.Normalize(-scale or -1, scale or 1), cmap), cax=cax,
                     orientation="horizontal")
  bar.ax.tick_params(labelsize=8)
  if path is not None:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=150)
    _files.atomic_write(path, lambda f: f.write(buf.getvalue()), overwrite=overwrite)
  return fig


def save_html(path: str | os.PathLike, page: str, *, overwrite: bool = False) -> pathlib.Path:
  """Writes an HTML page atomically (UTF-8); refuses to replace a file unless ``overwrite``."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  return _files.atomic_write(path, lambda f: f.write(page.encode("utf-8")), overwrite=overwrite)
