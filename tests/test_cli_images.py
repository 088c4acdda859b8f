"""Images of every Pillow mode are converted with their range kept, or refused in one line.

Issue 15, section 4: a 16-bit grey ramp keeps its grey levels (not black and
white), alpha, palette, CMYK, 1-bit and float images convert as documented,
and a decompression-bomb-sized image is a one-line error that says the size
and the limit. The images are built here; references are computed from the
pixel values, not from the reader.
"""

import struct
import zlib

import numpy as np
import pytest

from _cli_errors import error_line as _error_line
from adaptgrad_jax.cli import _shared, main
from adaptgrad_jax.cli._errors import CliError

PIL = pytest.importorskip("PIL")
from PIL import Image  # pylint: disable=wrong-import-position

MLP = ["--model", "mlp", "--weights", "random"]


def _ramp16():
  """64 grey levels spread over the 16-bit range, 28x28 (the MLP's input size: no resampling)."""
  levels = np.arange(64, dtype=np.uint16) * 1040  # 0 .. 65520
  return levels[np.arange(28 * 28) % 64].reshape(28, 28)


def _png_header_only(path, width, height):
  """A PNG whose header claims width x height (Pillow checks the size when opening)."""

  def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

  path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                   + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b""))
  return path


# ----------------------------------------------------------------------------
# Through the command line: what the model sees is stored in the sweep's .npz.


def test_a_16_bit_grey_ramp_keeps_its_64_levels_in_the_model_input(tmp_path, capsys):
  ramp = _ramp16()
  path = tmp_path / "ramp16.png"
  Image.fromarray(ramp).save(path)
  with Image.open(path) as img:
    assert img.mode == "I;16"  # a real 16-bit file
  out = tmp_path / "fig"
  assert main(["confidence", str(path), *MLP, "--cs", "0.9", "--n", "1", "--target", "0", "--out", str(out)]) == 0
  capsys.readouterr()
  x = np.load(out / "ramp16_confidence.npz")["image"][..., 0]
  expected = np.round(ramp / 65535.0 * 255.0) / 255.0
  assert len(np.unique(x)) == 64
  np.testing.assert_allclose(x, expected, atol=1e-6)
  assert x.min() == 0.0 and x.max() == pytest.approx(np.round(65520 / 65535 * 255) / 255)


def test_a_float_tiff_in_0_1_is_read_and_outside_is_refused(tmp_path, capsys):
  values = (np.arange(28 * 28, dtype=np.float32) / (28 * 28 - 1)).reshape(28, 28)
  good = tmp_path / "float.tif"
  Image.fromarray(values, "F").save(good)
  np.testing.assert_array_equal(_shared.read_image(good, grayscale=True), np.round(values * 255).astype(np.uint8))
  bad = tmp_path / "hdr.tif"
  Image.fromarray(values * 4.0 - 1.0, "F").save(bad)
  assert main(["explain", str(bad), *MLP, "--out", str(tmp_path / "o")]) == 1
  err = _error_line(capsys)
  assert f"cannot read image {bad}" in err and "[-1, 3] outside [0, 1]" in err and "rescale" in err
  assert not (tmp_path / "o").exists()


def test_32_bit_integer_images_are_refused(tmp_path, capsys):
  path = tmp_path / "int32.tif"
  Image.fromarray(_ramp16().astype(np.int32)).save(path)
  with Image.open(path) as img:
    assert img.mode == "I"
  assert main(["explain", str(path), *MLP, "--out", str(tmp_path / "o")]) == 1
  err = _error_line(capsys)
  assert "32-bit integers" in err and "8- or 16-bit" in err


@pytest.mark.parametrize("megapixels", [200, 100])
def test_a_decompression_bomb_is_one_line_with_the_size_and_the_limit(megapixels, tmp_path, capsys):
  """200 Mpixel is above Pillow's error limit, 100 Mpixel above its warning limit: both refused."""
  path = _png_header_only(tmp_path / "huge.png", 20000, megapixels * 50)
  limit = Image.MAX_IMAGE_PIXELS
  for argv in (["explain", str(path), *MLP, "--out", str(tmp_path / "o")],
               ["convergence", str(path), *MLP, "--out", str(tmp_path / "o")]):
    assert main(argv) == 1
    err = _error_line(capsys)
    assert f"cannot read image {path}: {megapixels} Mpixel is above the limit of {limit / 1e6:.0f} Mpixel" in err
    assert "downscale" in err
  assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("content", [b"", b"\x89PNG\r\n\x1a\n" + b"\0" * 40, b"GIF89a" + b"\xff" * 20])
def test_broken_files_are_one_line(content, tmp_path, capsys):
  path = tmp_path / "broken.png"
  path.write_bytes(content)
  assert main(["explain", str(path), *MLP, "--out", str(tmp_path / "o")]) == 1
  assert f"cannot read image {path}" in _error_line(capsys)


# ----------------------------------------------------------------------------
# The reader, mode by mode, against references computed from the pixels.


@pytest.fixture
def rgba():
  rng = np.random.default_rng(0)
  return rng.integers(0, 256, (6, 5, 4), dtype=np.uint8)


def _save(image, tmp_path, name):
  path = tmp_path / name
  image.save(path)
  return path


def _luma(rgb):
  """Pillow's (ITU-R 601-2) RGB to L, the conversion the MNIST model's inputs use."""
  rgb = rgb.astype(np.float64)
  return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def test_rgba_and_la_are_composited_over_black(rgba, tmp_path):
  path = _save(Image.fromarray(rgba, "RGBA"), tmp_path, "rgba.png")
  expected = np.round(rgba[..., :3] * (rgba[..., 3:] / 255.0))
  np.testing.assert_array_equal(_shared.read_image(path), expected)
  np.testing.assert_allclose(_shared.read_image(path, grayscale=True), _luma(expected), atol=1)
  la = rgba[..., [0, 3]]
  path = _save(Image.fromarray(la, "LA"), tmp_path, "la.png")
  grey = np.round(la[..., 0] * (la[..., 1] / 255.0))
  np.testing.assert_array_equal(_shared.read_image(path, grayscale=True), grey)
  np.testing.assert_array_equal(_shared.read_image(path), np.repeat(grey[..., None], 3, -1))


def test_palette_with_and_without_transparency(rgba, tmp_path):
  palette = np.arange(256 * 3, dtype=np.uint8).reshape(-1) % 251
  indices = rgba[..., 0]
  image = Image.fromarray(indices, "P")
  image.putpalette(palette.tolist())
  colours = palette.reshape(256, 3)[indices]
  np.testing.assert_array_equal(_shared.read_image(_save(image, tmp_path, "p.png")), colours)
  image.info["transparency"] = int(indices[0, 0])
  path = tmp_path / "pt.png"
  image.save(path, transparency=int(indices[0, 0]))
  expected = np.where((indices == indices[0, 0])[..., None], 0, colours)
  np.testing.assert_array_equal(_shared.read_image(path), expected)


def test_one_bit_and_cmyk(rgba, tmp_path):
  bits = rgba[..., 0] > 127
  path = _save(Image.fromarray(bits), tmp_path, "bits.png")
  with Image.open(path) as img:
    assert img.mode == "1"
  np.testing.assert_array_equal(_shared.read_image(path, grayscale=True), np.where(bits, 255, 0))
  path = _save(Image.fromarray(rgba, "CMYK"), tmp_path, "cmyk.tif")
  cmy, k = rgba[..., :3].astype(np.float64), rgba[..., 3:].astype(np.float64)
  np.testing.assert_allclose(_shared.read_image(path), (255 - cmy) * (255 - k) / 255, atol=1)


def test_sixteen_bit_to_rgb_and_the_exif_orientation(tmp_path):
  ramp = _ramp16()
  path = _save(Image.fromarray(ramp), tmp_path, "ramp16.tif")
  rgb = _shared.read_image(path)
  assert rgb.shape == (28, 28, 3) and len(np.unique(rgb)) == 64
  np.testing.assert_array_equal(rgb[..., 1], np.round(ramp / 65535 * 255))
  # EXIF orientation 6: stored 2x3, shown rotated 90 degrees clockwise (3x2).
  exif = Image.Exif()
  exif[0x0112] = 6
  stored = np.arange(6, dtype=np.uint8).reshape(2, 3)
  path = tmp_path / "rotated.png"
  Image.fromarray(stored).save(path, exif=exif)
  np.testing.assert_array_equal(_shared.read_image(path, grayscale=True), np.rot90(stored, k=-1))


def test_nan_in_a_float_image_is_refused(tmp_path):
  values = np.zeros((4, 4), np.float32)
  values[1, 2] = np.nan
  path = _save(Image.fromarray(values, "F"), tmp_path, "nan.tif")
  with pytest.raises(CliError, match="NaN or inf"):
    _shared.read_image(path)


def test_a_png_transparent_colour_is_composited_over_black(tmp_path):
  grey = np.array([[0, 50, 100, 50]], np.uint8)
  path = tmp_path / "trns_l.png"
  Image.fromarray(grey).save(path, transparency=50)
  np.testing.assert_array_equal(_shared.read_image(path, grayscale=True), [[0, 0, 100, 0]])
  rgb = np.array([[[1, 2, 3], [4, 5, 6]]], np.uint8)
  path = tmp_path / "trns_rgb.png"
  Image.fromarray(rgb).save(path, transparency=(4, 5, 6))
  np.testing.assert_array_equal(_shared.read_image(path), [[[1, 2, 3], [0, 0, 0]]])
  deep = np.array([[0, 1000, 65535]], np.uint16)
  path = tmp_path / "trns_16.png"
  Image.fromarray(deep).save(path, transparency=1000)
  np.testing.assert_array_equal(_shared.read_image(path, grayscale=True), [[0, 0, 255]])


@pytest.mark.parametrize("command", ["explain", "convergence"])
def test_an_elongated_image_is_refused_before_its_resize_exhausts_memory(command, tmp_path, capsys):
  """ResNet's preprocessing resizes the shorter side to 256: a 40000x2 strip would become 1.3 Gpixel."""
  path = tmp_path / "strip.png"
  Image.fromarray(np.zeros((2, 40000), np.uint8)).save(path)
  limit = Image.MAX_IMAGE_PIXELS
  assert (256 * 40000 // 2) * 256 > limit
  out = tmp_path / "o"
  assert main([command, str(path), "--model", "resnet18", "--weights", "random", "--out", str(out)]) == 1
  err = _error_line(capsys)
  assert f"cannot explain {path}: its 40000x2 pixels" in err and "5120000x256 = 1311 Mpixel" in err
  assert "crop the image" in err and not out.exists()
  # The MLP resizes the whole image to 28x28: the same strip is fine for it (no refusal).
  _shared.check_images([path], grayscale=True, short_side=None)


def test_mode_i_takes_its_white_level_from_the_file(tmp_path, monkeypatch):
  """Mode I from a PNG (older Pillow opens 16-bit PNGs so) or a 16-bit TIFF is 16-bit, EXIF or not."""
  ramp = _ramp16()
  path = _save(Image.fromarray(ramp), tmp_path, "ramp16.png")
  real_open = Image.open

  def open_as_mode_i(*args, **kwargs):  # what Pillow < 10 returns for a 16-bit grey PNG
    img = real_open(*args, **kwargs)
    img.load()
    as_i = img.convert("I")
    as_i.format, as_i.info = img.format, dict(img.info)
    return as_i

  monkeypatch.setattr(Image, "open", open_as_mode_i)
  np.testing.assert_array_equal(_shared.read_image(path, grayscale=True), np.round(ramp / 65535 * 255))
