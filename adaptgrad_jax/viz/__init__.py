"""Visualisation of saliency maps: scalings, overlays, PNG files, labelled grids.

The scalings (`reduce_channels`, `normalize_abs`, `normalize_diverging`) are
pure NumPy. The rendering functions need the optional plotting extra,
``plot`` (matplotlib and Pillow: `pip install -e ".[plot]"` in a clone), imported only when
called.
"""

from adaptgrad_jax.viz._plot import overlay as overlay
from adaptgrad_jax.viz._plot import plot_grid as plot_grid
from adaptgrad_jax.viz._plot import save_png as save_png
from adaptgrad_jax.viz._plot import to_rgb as to_rgb
from adaptgrad_jax.viz._scaling import normalize_abs as normalize_abs
from adaptgrad_jax.viz._scaling import normalize_diverging as normalize_diverging
from adaptgrad_jax.viz._scaling import reduce_channels as reduce_channels

__all__ = [
  "normalize_abs",
  "normalize_diverging",
  "overlay",
  "plot_grid",
  "reduce_channels",
  "save_png",
  "to_rgb",
]
