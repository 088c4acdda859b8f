"""Rendering of saliency maps: colour maps, overlays, PNG files, labelled grids.

matplotlib (colour maps, grids) and Pillow (PNG files) are optional: they are
imported only when a function needs them, and a missing one raises an
ImportError that names the packages and the extra (``plot``) to install.
Figures are built with `matplotlib.figure.Figure` and the Agg canvas, never
through `pyplot`: nothing opens a window, and the user's backend is untouched.

Images are `HW`, `HWC` (C = 1, 3 or 4) or batches `NHWC`, as uint8 or as floats
in `bounds` (default [0, 1], the core's default input bounds). Map layouts
follow `adaptgrad_jax.viz` (see `normalize_abs`).
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import textwrap
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from adaptgrad_jax import _files
from adaptgrad_jax.viz import _scaling
from adaptgrad_jax._extras import install_hint

if TYPE_CHECKING:  # pragma: no cover
  from matplotlib.figure import Figure

__all__ = ["to_rgb", "overlay", "save_png", "plot_grid"]

SCALINGS = ("abs", "diverging")
_DEFAULT_CMAP = {"abs": "gray", "diverging": "bwr"}
_DEFAULT_OVERLAY_CMAP = {"abs": "jet", "diverging": "bwr"}
_INSTALL_HINT = "install it with " + install_hint("plot")


def _import_matplotlib(what: str):
  """Imports matplotlib lazily; a clear ImportError names the extra."""
  try:
    import matplotlib  # pylint: disable=import-outside-toplevel
    import matplotlib.colors  # pylint: disable=import-outside-toplevel,unused-import
  except ImportError as e:
    raise ImportError(
      f"adaptgrad_jax.viz.{what} needs matplotlib, which is not installed; "
      f"{_INSTALL_HINT}"
    ) from e
  return matplotlib


def _import_pil(what: str):
  try:
    from PIL import Image  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError(
      f"adaptgrad_jax.viz.{what} needs Pillow, which is not installed; "
      f"{_INSTALL_HINT}"
    ) from e
  return Image


def _scale(
  map: Any,  # pylint: disable=redefined-builtin
  scaling: str,
  percentile: float,
  channel_axis: int | None,
) -> np.ndarray:
  """Scales to [0, 1] for a colour map: abs as is, diverging (v + 1) / 2."""
  if scaling == "abs":
    return _scaling.normalize_abs(map, percentile, channel_axis=channel_axis)
  if scaling == "diverging":
    d = _scaling.normalize_diverging(map, percentile, channel_axis=channel_axis)
    return (d + 1.0) / 2.0
  raise ValueError(
    f"scaling={scaling!r} is unknown; use 'abs' (magnitudes in [0, 1], the "
    "paper's figures) or 'diverging' (signed, in [-1, 1])"
  )


def _colorize(v: np.ndarray, cmap: str | Any, what: str) -> np.ndarray:
  """Maps values in [0, 1] to float RGB in [0, 1] with shape `v.shape + (3,)`."""
  if isinstance(cmap, str) and cmap in ("gray", "grey", "Greys_r"):
    return np.repeat(v[..., None], 3, axis=-1).astype(np.float64)  # no mpl
  mpl = _import_matplotlib(what)
  try:
    cm = mpl.colormaps[cmap] if isinstance(cmap, str) else cmap
  except KeyError as e:
    raise ValueError(
      f"cmap={cmap!r} is not a matplotlib colour map; use e.g. 'gray', "
      "'inferno', 'jet' or 'bwr' (see matplotlib.colormaps)"
    ) from e
  return np.asarray(cm(v), dtype=np.float64)[..., :3]


def _to_uint8(x: np.ndarray) -> np.ndarray:
  return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def to_rgb(
  map: Any,  # pylint: disable=redefined-builtin
  scaling: str = "abs",
  cmap: str | Any | None = None,
  *,
  percentile: float = 99,
  channel_axis: int | None = -1,
) -> np.ndarray:
  """Renders a saliency map (or a batch) as an RGB uint8 image.

  The map is scaled with `normalize_abs` (`scaling="abs"`, [0, 1]) or
  `normalize_diverging` (`scaling="diverging"`, [-1, 1] shifted to [0, 1] so
  that zero is the colour map's midpoint) and passed through `cmap`.

  Args:
    map: one map (`HW`, `HWC`) or a batch (`NHWC`, or `NHW` with
      `channel_axis=None`).
    scaling: `"abs"` or `"diverging"`.
    cmap: a matplotlib colour map name or object. Default `"gray"` for `"abs"`
      (white = most salient, as the paper's figures; needs no matplotlib) and
      `"bwr"` for `"diverging"` (blue negative, white zero, red positive).
    percentile: the clipping percentile, 99 as in the paper's code.
    channel_axis: the map's channel axis, or None when it has none.

  Returns:
    A uint8 array of shape `(H, W, 3)` or `(N, H, W, 3)`.

  Raises:
    ValueError: unknown `scaling` or `cmap`, a bad shape, or NaN in the map.
    ImportError: a non-gray `cmap` is asked for and matplotlib is missing.

  Example:
    >>> import numpy as np
    >>> m = np.zeros((4, 6)); m[:, :3] = 1.0
    >>> rgb = to_rgb(m)
    >>> rgb.shape, rgb.dtype, int(rgb[0, 0, 0]), int(rgb[0, 5, 0])
    ((4, 6, 3), dtype('uint8'), 255, 0)
  """
  v = _scale(map, scaling, percentile, channel_axis)
  if cmap is None:
    cmap = _DEFAULT_CMAP[scaling]
  return _to_uint8(_colorize(v, cmap, "to_rgb"))


def _image_to_float_rgb(
  image: Any, bounds: tuple[float, float], spatial: tuple[int, ...]
) -> np.ndarray:
  """Converts an image to float RGB in [0, 1] of shape `spatial + (3,)`."""
  img = np.asarray(image)
  if img.dtype == np.uint8:
    x = img.astype(np.float64) / 255.0
  else:
    x = _scaling._as_finite_array(img, "image")  # pylint: disable=protected-access
    lo, hi = (float(b) for b in bounds)
    if not hi > lo:
      raise ValueError(f"bounds={bounds} must be (low, high) with low < high")
    tol = 1e-6 * (hi - lo)
    if x.min() < lo - tol or x.max() > hi + tol:
      raise ValueError(
        f"image has values in [{x.min():.4g}, {x.max():.4g}], outside "
        f"bounds={bounds}; pass the image's value range as bounds=(low, high) "
        "(e.g. bounds=(0, 255) for float pixels) or a uint8 image"
      )
    x = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
  if x.shape == spatial:  # channel-less grayscale
    x = x[..., None]
  if x.shape[:-1] != spatial or x.shape[-1] not in (1, 3, 4):
    raise ValueError(
      f"image has shape {img.shape} but the map's spatial shape is {spatial}; "
      "the image must be HW or HWC with C in (1, 3, 4) (NHWC for a batch) and "
      "the same height and width as the map (resize one of them first)"
    )
  if x.shape[-1] == 1:
    x = np.repeat(x, 3, axis=-1)
  return x[..., :3]


def overlay(
  image: Any,
  map: Any,  # pylint: disable=redefined-builtin
  *,
  alpha: float = 0.5,
  cmap: str | Any | None = None,
  scaling: str = "abs",
  percentile: float = 99,
  bounds: tuple[float, float] = (0.0, 1.0),
  channel_axis: int | None = -1,
) -> np.ndarray:
  """Blends a coloured saliency map over its input image.

  `out = (1 - alpha) * image + alpha * cmap(scaled map)`, per pixel, in RGB.
  The counterpart of Captum's `visualize_image_attr(method="blended_heat_map")`
  as an array rather than a plot.

  Args:
    image: the explained input, `HW`/`HWC` (or `NHWC` for a batch of maps),
      uint8 or floats in `bounds`; grayscale is repeated to RGB, an alpha
      channel is dropped.
    map: its saliency map, same height and width (layouts as `normalize_abs`).
    alpha: the weight of the heat map in [0, 1]; 0 returns the image, 1 the
      coloured map.
    cmap: a matplotlib colour map; default `"jet"` for `"abs"` and `"bwr"` for
      `"diverging"`.
    scaling: `"abs"` or `"diverging"` (see `to_rgb`).
    percentile: the clipping percentile, 99 as in the paper's code.
    bounds: the value range of a float image, default (0, 1) like the core's
      `bounds`; ignored for uint8 images.
    channel_axis: the map's channel axis, or None when it has none.

  Returns:
    A uint8 RGB array of shape `(H, W, 3)` (or `(N, H, W, 3)`).

  Raises:
    ValueError: `alpha` outside [0, 1], an image outside `bounds`, mismatched
      shapes, or NaN in the map or image.
    ImportError: matplotlib is missing (needed by non-gray colour maps).

  Example:
    >>> import numpy as np
    >>> image = np.full((4, 4, 3), 0.5)
    >>> out = overlay(image, np.ones((4, 4)), alpha=0.0)
    >>> out.shape, int(out[0, 0, 0])
    ((4, 4, 3), 128)
  """
  if isinstance(alpha, bool) or not 0.0 <= float(alpha) <= 1.0:
    raise ValueError(
      f"alpha={alpha!r} is the heat map's opacity and must lie in [0, 1]; "
      "0.5 is a good start"
    )
  v = _scale(map, scaling, percentile, channel_axis)
  base = _image_to_float_rgb(image, bounds, v.shape)
  if float(alpha) == 0.0:
    return _to_uint8(base)
  if cmap is None:
    cmap = _DEFAULT_OVERLAY_CMAP[scaling]
  heat = _colorize(v, cmap, "overlay")
  return _to_uint8((1.0 - float(alpha)) * base + float(alpha) * heat)


def _atomic_write(
  path: str | os.PathLike,
  write: Callable[[str], None],
  overwrite: bool,
  suffix: str = ".png",
) -> pathlib.Path:
  """Writes via `write(tmp_path)` to a temp file beside `path`, then renames.

  Without `overwrite` the final step is a hard link, which fails atomically if
  `path` appeared meanwhile; a reader never sees a half-written file.
  """
  path = pathlib.Path(path)
  if path.exists() and not overwrite:
    raise FileExistsError(
      f"{path} already exists; pass overwrite=True to replace it or choose "
      "another path"
    )
  if path.is_dir():
    raise IsADirectoryError(f"{path} is a directory; pass a file path ending in {suffix}")
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = _files.temp_file(path.parent, prefix=f".{path.name}.", suffix=suffix)  # the umask's mode
  os.close(fd)
  try:
    write(tmp)
    if overwrite:
      os.replace(tmp, path)
    else:
      try:
        os.link(tmp, path)
      except FileExistsError:
        raise FileExistsError(
          f"{path} already exists; pass overwrite=True to replace it or "
          "choose another path"
        ) from None
      except OSError:  # file systems without hard links
        if path.exists():
          raise FileExistsError(
            f"{path} already exists; pass overwrite=True to replace it"
          ) from None
        os.replace(tmp, path)
  finally:
    with contextlib.suppress(FileNotFoundError):
      os.unlink(tmp)
  return path


def save_png(
  path: str | os.PathLike,
  array: Any,
  *,
  overwrite: bool = False,
) -> pathlib.Path:
  """Saves an image array as a PNG file, atomically, without clobbering.

  The file is written to a temporary name in the same directory and then
  renamed, so an interrupted run never leaves a truncated PNG. Missing parent
  directories are created.

  Args:
    path: the destination file.
    array: uint8 `HW` (grayscale), `HWC` with C in (1, 3, 4), e.g. the output
      of `to_rgb` or `overlay`; a float array is taken to lie in [0, 1].
    overwrite: replace an existing file; by default refuse.

  Returns:
    The path written, as a `pathlib.Path`.

  Raises:
    FileExistsError: `path` exists and `overwrite` is False.
    ValueError: the array's shape or value range is not an image.
    ImportError: Pillow is missing.

  Example:
    >>> import numpy as np, tempfile, os
    >>> d = tempfile.mkdtemp()
    >>> p = save_png(os.path.join(d, "map.png"), to_rgb(np.eye(8)))
    >>> p.name
    'map.png'
  """
  img = np.asarray(array)
  if img.ndim == 3 and img.shape[-1] == 1:
    img = img[..., 0]
  if not (img.ndim == 2 or (img.ndim == 3 and img.shape[-1] in (3, 4))):
    raise ValueError(
      f"array has shape {img.shape}; save_png writes one image, HW or HWC "
      "with C in (1, 3, 4). For a batch, save each image, or use plot_grid"
    )
  if img.dtype != np.uint8:
    x = _scaling._as_finite_array(img, "array")  # pylint: disable=protected-access
    if x.min() < 0.0 or x.max() > 1.0:
      raise ValueError(
        f"array is {img.dtype} with values in [{x.min():.4g}, {x.max():.4g}]; "
        "pass uint8 or floats in [0, 1] (e.g. the output of to_rgb)"
      )
    img = _to_uint8(x)
  image_mod = _import_pil("save_png")
  pil = image_mod.fromarray(img)
  return _atomic_write(path, lambda tmp: pil.save(tmp, format="PNG"), overwrite)


def _as_grid(maps: Any) -> list[list[Any]]:
  if isinstance(maps, (list, tuple)):
    rows = [list(r) if isinstance(r, (list, tuple)) else list(np.asarray(r)) for r in maps]
  else:
    arr = np.asarray(maps)
    if arr.ndim < 4:
      raise ValueError(
        f"maps has shape {arr.shape}; plot_grid needs rows x columns of maps: "
        "an array (R, C, H, W[, channels]) or a nested list maps[row][col]"
      )
    rows = [list(r) for r in arr]
  if not rows or any(len(r) != len(rows[0]) or not r for r in rows):
    raise ValueError(
      "maps must be a non-empty rectangular grid maps[row][col]; got rows of "
      f"lengths {[len(r) for r in rows]}"
    )
  return rows


def plot_grid(
  maps: Any,
  *,
  row_labels: Sequence[str] | None,
  col_labels: Sequence[str] | None,
  images: Any = None,
  scaling: str = "abs",
  overlay: bool = False,  # pylint: disable=redefined-outer-name
  cmap: str | Any | None = None,
  alpha: float = 0.5,
  percentile: float = 99,
  bounds: tuple[float, float] = (0.0, 1.0),
  channel_axis: int | None = -1,
  image_label: str = "Input",
  title: str | None = None,
  cell_labels: Sequence[Sequence[str | None]] | None = None,
  colorbar: bool = False,
  transpose: bool = False,
  cell_size: float = 2.0,
  path: str | os.PathLike | None = None,
  dpi: int = 150,
  overwrite: bool = False,
) -> "Figure":
  """Draws a labelled grid of saliency maps, like the paper's figures.

  Rows are methods (Grad, SG, AG, ...), columns images, sample counts N or
  confidence levels c (Figures 1, 2, 4, 5, 6 of the paper). Each map is scaled
  on its own (`normalize_abs` / `normalize_diverging`).

  Args:
    maps: `maps[row][col]`, a nested list of maps or an array
      `(R, C, H, W[, channels])`.
    row_labels: R labels shown left of the rows, or None.
    col_labels: C labels shown above the columns, or None.
    images: optional inputs: one per column (a list, or an array with C leading
      entries) or a single image for every column (columns are N or c).
      Without `overlay` they are drawn as an extra first row `image_label`
      (a single image only in its first cell); with `overlay` each map is
      blended over its column's image.
    scaling: `"abs"` or `"diverging"`.
    overlay: blend the maps over `images` (see `overlay`) instead of showing
      them alone.
    cmap: the colour map; default as `to_rgb` (or `overlay` when overlaying).
    alpha: the heat map's opacity when overlaying.
    percentile: the clipping percentile, 99 as in the paper's code.
    bounds: the value range of float images.
    channel_axis: the maps' channel axis, or None when they have none.
    image_label: the row label of the input images.
    title: an optional figure title.
    cell_labels: optional captions under the maps, `cell_labels[row][col]`
      (a string or None per map), e.g. each map's relative error.
    colorbar: add a colour bar under the grid whose label names the scaling
      (what 0 and 1, or -1 and 1, mean).
    transpose: draw rows as columns: `maps[row][col]` is shown at column
      `row`, row `col`, so methods run across and images down (a wide figure
      for many methods and few images); the images become the first column,
      `row_labels` the column titles and `col_labels` the row labels.
    cell_size: the size of one cell in inches.
    path: if given, the figure is also saved there as a PNG (atomically).
    dpi: the resolution of the saved PNG in dots per inch.
    overwrite: replace an existing `path`; by default refuse.

  Returns:
    The `matplotlib.figure.Figure` (Agg canvas; no window is opened). Its PNG
    is `figsize * dpi` pixels. Titles and labels are wrapped to the width
    they have, so all text lies inside the saved figure.

  Raises:
    ValueError: the labels or images do not match the grid, or a bad option.
    FileExistsError: `path` exists and `overwrite` is False.
    ImportError: matplotlib is missing.

  Example:
    >>> import numpy as np
    >>> maps = np.random.default_rng(0).normal(size=(2, 3, 8, 8))
    >>> fig = plot_grid(maps, row_labels=["SG", "AG"],
    ...                 col_labels=["N=10", "N=20", "N=50"])
    >>> len(fig.axes)
    6
    >>> fig = plot_grid(maps, row_labels=["SG", "AG"], col_labels=["a", "b", "c"],
    ...                 cell_labels=[["1%"] * 3, ["2%"] * 3], colorbar=True, transpose=True)
    >>> len(fig.axes)  # six maps and the colour bar
    7

  References:
    Zhou et al., AdaptGrad, NeurIPS 2025, Figures 1, 2, 4, 5, 6.
  """
  _import_matplotlib("plot_grid")
  # pylint: disable=import-outside-toplevel,redefined-outer-name
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  grid = _as_grid(maps)
  n_rows, n_cols = len(grid), len(grid[0])
  for name, labels, n in (("row_labels", row_labels, n_rows), ("col_labels", col_labels, n_cols)):
    if labels is not None and (isinstance(labels, str) or len(labels) != n):
      raise ValueError(
        f"{name}={labels!r} must be a sequence of {n} labels (one per "
        f"{name[:3]}) or None; the grid has {n_rows} rows and {n_cols} columns"
      )
  if cell_labels is not None and (
    isinstance(cell_labels, str) or len(cell_labels) != n_rows
    or any(isinstance(r, str) or len(r) != n_cols for r in cell_labels)
  ):
    raise ValueError(
      f"cell_labels must be {n_rows} rows of {n_cols} captions (a string or "
      "None per map, like maps[row][col]) or None"
    )
  if not cell_size > 0:
    raise ValueError(f"cell_size={cell_size} must be > 0 (inches); 2.0 is the default")
  if not (isinstance(dpi, (int, np.integer)) and dpi > 0):
    raise ValueError(f"dpi={dpi!r} must be a positive int; 150 is the default")

  col_images: list[Any] | None = None
  single_image = False
  if images is not None:
    spatial = _scale(grid[0][0], scaling, percentile, channel_axis).shape
    if isinstance(images, (list, tuple)):
      col_images = list(images)
    else:
      arr = np.asarray(images)
      # A single image is HW or HWC; per-column images carry a leading axis.
      if arr.shape[:2] == spatial and arr.ndim in (2, 3):
        single_image = True
        col_images = [arr] * n_cols
      else:
        col_images = list(arr) if arr.ndim >= 3 else [arr]
    if len(col_images) != n_cols:
      raise ValueError(
        f"images has {len(col_images)} entries but the grid has {n_cols} "
        "columns; pass one image per column or a single image for all columns"
      )
  elif overlay:
    raise ValueError("overlay=True needs images=...; pass the explained inputs")

  cells: list[list[np.ndarray | None]] = []
  captions: list[list[str | None]] = []
  if col_images is not None and not overlay:
    base = []
    for j, img in enumerate(col_images):
      if single_image and j > 0:
        base.append(None)
        continue
      arr = np.asarray(img)
      img_spatial = arr.shape if arr.ndim == 2 else arr.shape[:-1]
      base.append(_to_uint8(_image_to_float_rgb(arr, bounds, tuple(img_spatial))))
    cells.append(base)
    captions.append([None] * n_cols)
  for i, row in enumerate(grid):
    out_row = []
    for j, m in enumerate(row):
      if overlay:
        out_row.append(_overlay(
          col_images[j], m, alpha=alpha, cmap=cmap, scaling=scaling,
          percentile=percentile, bounds=bounds, channel_axis=channel_axis,
        ))
      else:
        out_row.append(to_rgb(m, scaling, cmap, percentile=percentile, channel_axis=channel_axis))
    cells.append(out_row)
    captions.append(list(cell_labels[i]) if cell_labels is not None else [None] * n_cols)
  side = list(row_labels) if row_labels is not None else [None] * n_rows
  if len(cells) > n_rows:
    side = [image_label] + side
  top = list(col_labels) if col_labels is not None else [None] * n_cols
  if transpose:
    cells = [list(c) for c in zip(*cells)]
    captions = [list(c) for c in zip(*captions)]
    side, top = top, side

  first = next(c for row in cells for c in row if c is not None)
  h, w = first.shape[:2]
  cell_w, cell_h = (cell_size, cell_size * h / w) if w >= h else (cell_size * w / h, cell_size)
  n_fig_rows, n_fig_cols = len(cells), len(cells[0])
  # Text is wrapped to the room it has, so nothing is cut at the figure's edge.
  label_size, caption_size, title_size = 10.0, 8.0, 12.0
  side = [_wrap(t, cell_h, label_size) for t in side]
  top = [_wrap(t, cell_w, label_size) for t in top]
  captions = [[_wrap(t, cell_w, caption_size) for t in row] for row in captions]
  side_lines = max((_lines(t) for t in side), default=0)
  top_lines = max((_lines(t) for t in top), default=0)
  caption_lines = [max((_lines(t) for t in row), default=0) for row in captions]
  width = cell_w * n_fig_cols + side_lines * label_size * 1.3 / 72 + 0.1
  title = _wrap(title, width - 0.2, title_size)
  bar_label = None
  if colorbar:
    bar_label = _wrap(_scaling_label(scaling, percentile, channel_axis, overlay, alpha),
                      min(width - 0.3, max(0.6 * width, 2.5)), caption_size + 1)
  height = (cell_h * n_fig_rows + sum(caption_lines) * caption_size * 1.3 / 72
            + top_lines * label_size * 1.3 / 72 + _lines(title) * title_size * 1.4 / 72
            + (0.45 + _lines(bar_label) * (caption_size + 1) * 1.5 / 72 if colorbar else 0.0) + 0.1)
  fig = Figure(figsize=(width, height), dpi=dpi, layout="constrained")
  fig.get_layout_engine().set(w_pad=0.04, h_pad=0.04, wspace=0.0, hspace=0.0)
  FigureCanvasAgg(fig)
  axes = fig.subplots(n_fig_rows, n_fig_cols, squeeze=False)
  # A single image (columns are N or c) sits alone in its row (column): labels go beside the maps.
  shifted = 1 if single_image and not overlay else 0
  title_row, label_col = (0, shifted) if transpose else (shifted, 0)
  for i, row in enumerate(cells):
    for j, cell in enumerate(row):
      ax = axes[i, j]
      ax.set_xticks([])
      ax.set_yticks([])
      if cell is None:
        ax.set_axis_off()
        continue
      ax.imshow(cell, interpolation="nearest")
      for spine in ax.spines.values():
        spine.set_visible(False)
      if j == label_col and side[i]:
        ax.set_ylabel(side[i], fontsize=label_size)
      if i == title_row and top[j]:
        ax.set_title(top[j], fontsize=label_size)
      if captions[i][j]:
        ax.set_xlabel(captions[i][j], fontsize=caption_size, labelpad=2)
  if title:
    fig.suptitle(title, fontsize=title_size)
  if colorbar:
    import matplotlib.cm  # pylint: disable=import-outside-toplevel
    import matplotlib.colors  # pylint: disable=import-outside-toplevel

    name = cmap if cmap is not None else (_DEFAULT_OVERLAY_CMAP if overlay else _DEFAULT_CMAP)[scaling]
    mappable = matplotlib.cm.ScalarMappable(
      norm=matplotlib.colors.Normalize(-1.0 if scaling == "diverging" else 0.0, 1.0), cmap=name)
    bar = fig.colorbar(mappable, ax=axes, location="bottom", shrink=min(0.6, 4.0 / width) if width > 4 else 0.9,
                       aspect=30, pad=0.01)
    bar.set_label(bar_label, fontsize=caption_size + 1)
    bar.ax.tick_params(labelsize=caption_size)
  if path is not None:
    _atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi), overwrite)
  return fig


def _lines(text: str | None) -> int:
  return 0 if not text else text.count("\n") + 1


def _wrap(text: str | None, inches: float, fontsize: float) -> str | None:
  """``text`` with its lines broken to fit ``inches`` at ``fontsize`` points (a generous glyph width)."""
  if not text:
    return text
  chars = max(6, int(inches * 72.0 / (0.62 * fontsize)))
  return "\n".join(textwrap.fill(line, chars, break_on_hyphens=False) or line for line in str(text).split("\n"))


def _scaling_label(scaling: str, percentile: float, channel_axis: int | None, overlay: bool, alpha: float) -> str:
  """What the colours mean: the scaling of `normalize_abs` / `normalize_diverging`, per map."""
  p = f"{percentile:g}th percentile"
  if scaling == "abs":
    what = "|map|" if channel_axis is None else "|map| summed over channels"
    text = f"{what}, each map on its own: 0 = its minimum, 1 = its {p} and above"
  else:
    what = "map" if channel_axis is None else "map summed over channels"
    text = f"{what} / its {p} of magnitudes, each map on its own, clipped to [-1, 1]; 0 = no attribution"
  return text + (f" (blended over the image, opacity {alpha:g})" if overlay else "")


_overlay = overlay  # plot_grid's `overlay` keyword shadows the function.
