"""Tests for adaptgrad_jax.viz: scalings (closed forms) and rendering (PNGs)."""

import doctest
import os
import subprocess
import sys
import textwrap
import warnings

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from adaptgrad_jax import viz
from adaptgrad_jax.viz import _plot, _scaling


def _half_map(h=6, w=8, left=True):
  m = np.zeros((h, w))
  if left:
    m[:, : w // 2] = 1.0
  else:
    m[:, w // 2 :] = 1.0
  return m


# ---------------------------------------------------------------- scalings


def test_reduce_channels_closed_forms():
  m = np.array([[[3.0, -4.0, 0.0], [1.0, 1.0, -2.0]]])  # HWC, 1x2x3
  np.testing.assert_allclose(viz.reduce_channels(m, "sum"), [[-1.0, 0.0]])
  np.testing.assert_allclose(viz.reduce_channels(m, "abs_sum"), [[7.0, 4.0]])
  np.testing.assert_allclose(viz.reduce_channels(m, "mean"), [[-1 / 3, 0.0]], rtol=1e-6)
  np.testing.assert_allclose(viz.reduce_channels(m, "max_abs"), [[4.0, 2.0]])
  np.testing.assert_allclose(viz.reduce_channels(m, "l2"), [[5.0, np.sqrt(6.0)]], rtol=1e-6)
  # CHW with channel_axis=0, and an NCHW batch with channel_axis=1, agree.
  chw = np.moveaxis(m, -1, 0)
  np.testing.assert_allclose(viz.reduce_channels(chw, "l2", channel_axis=0),
                             viz.reduce_channels(m, "l2"))
  batch = np.stack([m, 2 * m])
  out = viz.reduce_channels(np.moveaxis(batch, -1, 1), "abs_sum", channel_axis=1)
  np.testing.assert_allclose(out, [[[7.0, 4.0]], [[14.0, 8.0]]])
  # HW maps and channel-less NHW batches pass through; JAX arrays are accepted.
  assert viz.reduce_channels(np.ones((5, 4))).shape == (5, 4)
  assert viz.reduce_channels(np.ones((2, 5, 4)), channel_axis=None).shape == (2, 5, 4)
  got = viz.reduce_channels(jnp.asarray(m), "abs_sum")
  assert isinstance(got, np.ndarray) and got.dtype == np.float32


def test_reduce_channels_rejects_bad_arguments():
  with pytest.raises(ValueError, match="how='median'"):
    viz.reduce_channels(np.ones((2, 2, 3)), "median")
  with pytest.raises(ValueError, match="channel_axis=None"):
    viz.reduce_channels(np.ones((2, 2, 2, 3)), channel_axis=None)
  with pytest.raises(ValueError, match="shape"):
    viz.reduce_channels(np.ones((2, 2, 2, 3, 1)))


def test_normalize_abs_percentile_clipping_is_exact():
  a = np.arange(100.0).reshape(10, 10)
  vmax = 98.01  # numpy's linear-interpolated 99th percentile of 0..99
  assert np.percentile(a, 99) == pytest.approx(vmax)
  expected = np.clip(a / vmax, 0, 1)
  np.testing.assert_allclose(viz.normalize_abs(a), expected, rtol=1e-6)
  # The minimum is subtracted (PAIR's VisualizeImageGrayscale): an offset is gone.
  np.testing.assert_allclose(viz.normalize_abs(a + 5.0), expected, rtol=1e-6)
  # Channels are reduced by the sum of absolute values, the paper's convention.
  hwc = np.stack([a / 2, -a / 2], axis=-1)
  np.testing.assert_allclose(viz.normalize_abs(hwc), expected, rtol=1e-6)
  # Exactly one pixel above the percentile saturates; 100 is min-max scaling.
  assert int((viz.normalize_abs(a) == 1.0).sum()) == 1
  np.testing.assert_allclose(viz.normalize_abs(a, 100), a / 99.0, rtol=1e-6)
  # 50th percentile: half the pixels saturate.
  assert int((viz.normalize_abs(a, 50) == 1.0).sum()) == 50


def test_normalize_abs_scales_each_map_of_a_batch_on_its_own(rng):
  m = rng.normal(size=(7, 9, 3))
  batch = np.stack([m, 100.0 * m, -m])
  out = viz.normalize_abs(batch)
  assert out.shape == (3, 7, 9)
  for k in range(3):
    np.testing.assert_allclose(out[k], viz.normalize_abs(m), rtol=1e-5, atol=1e-6)
  nhw = viz.normalize_abs(batch.sum(-1), channel_axis=None, how="sum")
  np.testing.assert_allclose(nhw[0], viz.normalize_abs(m, how="sum"), rtol=1e-5, atol=1e-6)


def test_normalize_diverging_keeps_sign_and_clips(rng):
  m = rng.normal(size=(12, 10, 3))
  s = m.sum(-1)
  out = viz.normalize_diverging(m)
  assert out.shape == (12, 10) and out.min() >= -1.0 and out.max() <= 1.0
  np.testing.assert_array_equal(np.sign(out), np.sign(s))
  span = np.percentile(np.abs(s), 99)
  np.testing.assert_allclose(out, np.clip(s / span, -1, 1), rtol=1e-5, atol=1e-6)
  # Symmetric in the sign: a mostly negative map is the mirror image.
  np.testing.assert_allclose(viz.normalize_diverging(-m), -out, rtol=1e-6)
  with pytest.raises(ValueError, match="lose the sign"):
    viz.normalize_diverging(m, how="abs_sum")


@pytest.mark.parametrize("fn", [viz.normalize_abs, viz.normalize_diverging])
def test_zero_and_sparse_maps_give_no_nan(fn):
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # no division-by-zero RuntimeWarning
    zero = fn(np.zeros((4, 5, 3)))
    np.testing.assert_array_equal(zero, np.zeros((4, 5)))
    batch = fn(np.stack([np.zeros((4, 5, 3)), np.ones((4, 5, 3))]))
    np.testing.assert_array_equal(batch[0], 0.0)
    # A single non-zero pixel: the 99th percentile is 0, the pixel still shows.
    sparse = np.zeros((100, 100))
    sparse[3, 4] = 2.0
    out = fn(sparse)
    assert out[3, 4] == 1.0 and np.count_nonzero(out) == 1


@pytest.mark.parametrize(
  "fn", [viz.normalize_abs, viz.normalize_diverging, viz.reduce_channels, viz.to_rgb]
)
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_maps_raise_naming_the_argument(fn, bad):
  m = np.ones((4, 4, 3))
  m[1, 2, 0] = bad
  with pytest.raises(ValueError, match=r"^map contains"):
    fn(m)


@pytest.mark.parametrize("p", [0, -1, 101, np.nan])
def test_bad_percentile_raises(p):
  with pytest.raises(ValueError, match="percentile"):
    viz.normalize_abs(np.ones((3, 3)), p)


# ---------------------------------------------------------------- rendering


def test_to_rgb_png_is_bright_left_dark_right(tmp_path):
  m = _half_map(6, 8)[..., None] * np.array([1.0, -1.0, 0.5])  # HWC
  rgb = viz.to_rgb(m)
  path = viz.save_png(tmp_path / "map.png", rgb)
  with Image.open(path) as im:
    assert im.size == (8, 6) and im.mode == "RGB"
    px = np.asarray(im)
  np.testing.assert_array_equal(px, rgb)
  assert px[:, :4].min() == 255 and px[:, 4:].max() == 0
  # A batch renders to a batch of RGB images.
  assert viz.to_rgb(np.stack([m, m])).shape == (2, 6, 8, 3)


def test_to_rgb_diverging_colours_sign():
  s = np.array([[-1.0, 0.0, 1.0]])
  rgb = viz.to_rgb(s, "diverging", percentile=100).astype(int)  # bwr
  neg, zero, pos = rgb[0]
  assert neg[2] > 200 and neg[0] < 50  # blue
  assert zero.min() > 240  # white
  assert pos[0] > 200 and pos[2] < 50  # red
  with pytest.raises(ValueError, match="scaling='log'"):
    viz.to_rgb(s, "log")
  with pytest.raises(ValueError, match="cmap='no-such-map'"):
    viz.to_rgb(s, cmap="no-such-map")


def test_overlay_alpha_limits_and_inputs(rng):
  image = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
  m = rng.normal(size=(6, 8, 3))
  np.testing.assert_array_equal(viz.overlay(image, m, alpha=0.0), image)
  # Float images in bounds, grayscale HW and an alpha channel are accepted.
  as_float = image / 255.0
  np.testing.assert_array_equal(viz.overlay(as_float, m, alpha=0.0), image)
  np.testing.assert_array_equal(viz.overlay(image * 1.0, m, alpha=0.0, bounds=(0, 255)), image)
  gray = viz.overlay(image[..., 0], m, alpha=0.0)
  np.testing.assert_array_equal(gray, np.repeat(image[..., :1], 3, axis=-1))
  rgba = np.concatenate([image, np.full((6, 8, 1), 255, np.uint8)], axis=-1)
  np.testing.assert_array_equal(viz.overlay(rgba, m, alpha=0.0), image)
  # alpha=1 is the coloured map; in between is the blend.
  heat = viz.to_rgb(m, cmap="jet")
  np.testing.assert_array_equal(viz.overlay(image, m, alpha=1.0), heat)
  half = viz.overlay(image, m, alpha=0.5).astype(int)
  assert np.abs(half - (image.astype(int) + heat) / 2).max() <= 1.0
  with pytest.raises(ValueError, match="alpha=1.5"):
    viz.overlay(image, m, alpha=1.5)
  with pytest.raises(ValueError, match="same height and width"):
    viz.overlay(image, m[:5])
  with pytest.raises(ValueError, match="outside bounds"):
    viz.overlay(image * 1.0, m)
  bad = as_float.copy()
  bad[0, 0, 0] = np.nan
  with pytest.raises(ValueError, match=r"^image contains"):
    viz.overlay(bad, m)


def test_save_png_refuses_to_overwrite_and_is_atomic(tmp_path):
  path = tmp_path / "sub" / "x.png"
  viz.save_png(path, np.zeros((4, 4), np.uint8))
  before = path.read_bytes()
  with pytest.raises(FileExistsError, match="overwrite=True"):
    viz.save_png(path, np.full((4, 4), 255, np.uint8))
  assert path.read_bytes() == before
  viz.save_png(path, np.full((4, 4), 1.0), overwrite=True)
  with Image.open(path) as im:
    assert np.asarray(im).min() == 255
  assert sorted(os.listdir(path.parent)) == ["x.png"]  # no temporary left over
  with pytest.raises(ValueError, match=r"floats in \[0, 1\]"):
    viz.save_png(tmp_path / "y.png", np.full((4, 4), 2.0))
  with pytest.raises(ValueError, match="one image"):
    viz.save_png(tmp_path / "y.png", np.zeros((2, 4, 4, 3), np.uint8))
  assert not (tmp_path / "y.png").exists()


def test_plot_grid_png_size_labels_and_cells(tmp_path):
  maps = [[_half_map(left=True), _half_map(left=False)]]
  path = tmp_path / "grid.png"
  fig = viz.plot_grid(maps, row_labels=["AG"], col_labels=["left", "right"],
                      path=path, dpi=50, cell_size=1.5)
  w_in, h_in = fig.get_size_inches()
  with Image.open(path) as im:
    assert im.size == (round(w_in * 50), round(h_in * 50))
    px = np.asarray(im.convert("L")).astype(float)
  assert [ax.get_title() for ax in fig.axes] == ["left", "right"]
  assert fig.axes[0].get_ylabel() == "AG"
  # Pixel statistics inside each cell (axes bbox in PNG pixel coordinates).
  fig.canvas.draw()
  means = []
  for ax in fig.axes:
    x0, y0, x1, y1 = ax.get_window_extent().extents
    top, bottom = px.shape[0] - y1, px.shape[0] - y0
    cell = px[int(top) + 2 : int(bottom) - 2, int(x0) + 2 : int(x1) - 2]
    mid = cell.shape[1] // 2
    means.append((cell[:, : mid - 2].mean(), cell[:, mid + 2 :].mean()))
  (l0, r0), (l1, r1) = means
  assert l0 > 250 and r0 < 5 and l1 < 5 and r1 > 250
  with pytest.raises(FileExistsError):
    viz.plot_grid(maps, row_labels=None, col_labels=None, path=path)


def test_plot_grid_images_and_overlay(rng):
  maps = rng.normal(size=(3, 2, 6, 8, 3))  # (R, C, H, W, channels)
  images = rng.random((2, 6, 8, 3))  # one per column
  fig = viz.plot_grid(maps, row_labels=["Grad", "SG", "AG"], col_labels=["a", "b"],
                      images=images, title="t")
  assert len(fig.axes) == 8 and fig.axes[0].get_ylabel() == "Input"
  assert fig.axes[2].get_ylabel() == "Grad"
  # A single image for all columns (columns are N or c) is shown once.
  fig = viz.plot_grid(maps, row_labels=None, col_labels=["N=10", "N=50"], images=images[0])
  assert not fig.axes[1].axison and fig.axes[2].get_title() == "N=10"
  fig = viz.plot_grid(maps, row_labels=None, col_labels=None, images=images[0],
                      overlay=True, scaling="diverging")
  assert len(fig.axes) == 6
  with pytest.raises(ValueError, match="row_labels"):
    viz.plot_grid(maps, row_labels=["a"], col_labels=None)
  with pytest.raises(ValueError, match="3 entries"):
    viz.plot_grid(maps, row_labels=None, col_labels=None, images=[images[0]] * 3)
  with pytest.raises(ValueError, match="needs images"):
    viz.plot_grid(maps, row_labels=None, col_labels=None, overlay=True)


def test_missing_matplotlib_and_pillow_name_the_extra(monkeypatch, tmp_path):
  monkeypatch.setitem(sys.modules, "matplotlib", None)
  monkeypatch.setitem(sys.modules, "PIL", None)
  m = _half_map()
  with pytest.raises(ImportError, match=r'pip install "matplotlib>=3.7" "pillow>=9" .*-e "\.\[plot\]"'):
    viz.plot_grid([[m]], row_labels=None, col_labels=None)
  with pytest.raises(ImportError, match=r'to_rgb needs matplotlib.*-e "\.\[plot\]"'):
    viz.to_rgb(m, cmap="viridis")
  with pytest.raises(ImportError, match=r'save_png needs Pillow.*-e "\.\[plot\]"'):
    viz.save_png(tmp_path / "a.png", viz.to_rgb(m))
  assert viz.to_rgb(m).shape == (6, 8, 3)  # gray needs neither
  assert not list(tmp_path.iterdir())


def test_importing_viz_does_not_import_matplotlib():
  code = textwrap.dedent("""
    import sys
    import numpy as np
    import adaptgrad_jax.viz as viz
    assert "matplotlib" not in sys.modules and "PIL" not in sys.modules
    sys.modules["matplotlib"] = None
    print(viz.normalize_abs(np.eye(3)).sum())
  """)
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
  out = subprocess.run(
    [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False
  )
  assert out.returncode == 0, out.stderr
  assert out.stdout.strip() == "3.0"


@pytest.mark.parametrize("module", [_scaling, _plot])
def test_docstring_examples_run(module):
  result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
  assert result.attempted > 0 and result.failed == 0


def _text_outside(fig):
  """The visible texts of ``fig`` that reach beyond its saved canvas."""
  fig.canvas.draw()
  renderer, box = fig.canvas.get_renderer(), fig.bbox
  outside = []
  for artist in fig.findobj(lambda a: hasattr(a, "get_text") and a.get_visible() and a.get_text()):
    e = artist.get_window_extent(renderer)
    if e.x0 < box.x0 - 0.5 or e.x1 > box.x1 + 0.5 or e.y0 < box.y0 - 0.5 or e.y1 > box.y1 + 0.5:
      outside.append((artist.get_text(), [round(float(v)) for v in e.extents]))
  return outside


def test_plot_grid_keeps_every_title_and_label_inside_with_captions_colour_bar_and_transpose(rng):
  """The demo's photo figure had its title cut at both sides: long texts are wrapped to their room."""
  maps = rng.normal(size=(3, 2, 8, 8, 3))
  title = "a figure title far longer than two narrow columns of maps could ever hold on one line " * 2
  labels = dict(row_labels=["Grad", "SmoothGrad", "AdaptGrad"],
                col_labels=["chelsea: Egyptian cat (0.79)", "coffee: espresso (0.90)"],
                cell_labels=[["deterministic"] * 2, ["rel. error 97%", "95%"], ["rel. error 90%", "87%"]])
  tall = viz.plot_grid(maps, images=rng.random((2, 8, 8, 3)), title=title, colorbar=True, cell_size=1.0, **labels)
  wide = viz.plot_grid(maps, images=rng.random((2, 8, 8, 3)), title=title, colorbar=True, transpose=True,
                       cell_size=1.0, **labels)
  for fig in (tall, wide):
    assert _text_outside(fig) == []
    assert "99th percentile" in fig.axes[-1].get_xlabel()  # the colour bar names the scaling
  (tall_w, tall_h), (wide_w, wide_h) = tall.get_size_inches(), wide.get_size_inches()
  assert wide_w / wide_h > 1.5 * tall_w / tall_h
  # Transposed: the images are the first column, methods the column titles, photos the row labels.
  axes = np.asarray(wide.axes[:-1]).reshape(2, 4)
  assert [ax.get_title() for ax in axes[0]] == ["Input", "Grad", "SmoothGrad", "AdaptGrad"]
  assert axes[1, 0].get_ylabel().replace("\n", " ") == "coffee: espresso (0.90)"
  assert axes[1, 2].get_xlabel() == "95%" and axes[0, 1].get_xlabel() == "deterministic"
  with pytest.raises(ValueError, match="cell_labels"):
    viz.plot_grid(maps, row_labels=None, col_labels=None, cell_labels=[["a", "b"]])
