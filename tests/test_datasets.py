"""Tests for adaptgrad_jax.datasets: IDX parsing, lookup order, embedded subset."""

import gzip
import hashlib
import pathlib
import struct
import urllib.request

import numpy as np
import pytest

from adaptgrad_jax import datasets
from adaptgrad_jax.datasets import _build_subset
from adaptgrad_jax.datasets import _mnist

SUBSET = pathlib.Path(datasets.__file__).resolve().parents[1] / "data" / "mnist_subset.npz"


@pytest.fixture(autouse=True)
def no_network(monkeypatch, tmp_path):
  """No test may download; the cache and env var point at empty places."""
  def refuse(*args, **kwargs):
    raise AssertionError("a test tried to download")
  monkeypatch.setattr(urllib.request, "urlopen", refuse)
  monkeypatch.setenv("ADAPTGRAD_JAX_CACHE", str(tmp_path / "cache"))
  monkeypatch.delenv("ADAPTGRAD_JAX_MNIST", raising=False)


def idx_bytes(array):
  """An independent IDX encoder (struct, big-endian), for uint8 arrays."""
  array = np.asarray(array, np.uint8)
  header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
  header += b"".join(struct.pack(">I", d) for d in array.shape)
  return header + array.tobytes()


def fake_mnist(rng, n_train=30, n_test=10):
  return {
      "x_train": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
      "y_train": rng.integers(0, 10, n_train).astype(np.uint8),
      "x_test": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
      "y_test": rng.integers(0, 10, n_test).astype(np.uint8),
  }


def write_idx_dir(directory, data, gz=True):
  directory.mkdir(parents=True, exist_ok=True)
  for name, (key, _) in _mnist.MNIST_FILES.items():
    payload = idx_bytes(data[key])
    if gz:
      (directory / (name + ".gz")).write_bytes(gzip.compress(payload))
    else:
      (directory / name).write_bytes(payload)


# ------------------------------------------------------------------- IDX
@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_matches_independent_encoder(tmp_path, rng, gz):
  arr = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
  path = tmp_path / ("a.idx" + (".gz" if gz else ""))
  payload = idx_bytes(arr)
  path.write_bytes(gzip.compress(payload) if gz else payload)
  np.testing.assert_array_equal(datasets.read_idx(path), arr)


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int32, np.float32, np.float64])
def test_write_read_idx_round_trip(tmp_path, rng, dtype):
  arr = (rng.normal(size=(3, 4, 2)) * 100).astype(dtype)
  for name in ("x.idx", "x.idx.gz"):
    datasets.write_idx(tmp_path / name, arr)
    back = datasets.read_idx(tmp_path / name)
    assert back.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(back, arr)


def test_read_idx_bad_files(tmp_path):
  bad = tmp_path / "notes.txt"
  bad.write_text("hello world")
  with pytest.raises(ValueError, match="is not an IDX file .* 00000803"):
    datasets.read_idx(bad)
  truncated = tmp_path / "short.idx"
  truncated.write_bytes(idx_bytes(np.zeros((4, 28, 28)))[:-10])
  with pytest.raises(ValueError, match="truncated or corrupt"):
    datasets.read_idx(truncated)


# ----------------------------------------------------------------- mnist()
@pytest.mark.parametrize("gz", [False, True])
def test_mnist_reads_idx_directory(tmp_path, rng, gz):
  data = fake_mnist(rng)
  write_idx_dir(tmp_path / "m", data, gz=gz)
  got = datasets.mnist(tmp_path / "m")
  assert got.x_train.shape == (30, 28, 28, 1) and got.x_train.dtype == np.float32
  np.testing.assert_allclose(got.x_train[..., 0], data["x_train"] / 255.0, rtol=1e-6)
  np.testing.assert_array_equal(got.y_test, data["y_test"])
  assert got.y_train.dtype == np.int32
  raw = datasets.mnist(tmp_path / "m", dtype="uint8")
  np.testing.assert_array_equal(raw.x_test[..., 0], data["x_test"])


def test_mnist_npz_env_and_cache(tmp_path, rng, monkeypatch):
  data = fake_mnist(rng)
  np.savez(tmp_path / "digits.npz", **data)
  got = datasets.mnist(tmp_path / "digits.npz", dtype="uint8")
  np.testing.assert_array_equal(got.x_train[..., 0], data["x_train"])
  # Environment variable.
  monkeypatch.setenv("ADAPTGRAD_JAX_MNIST", str(tmp_path / "digits.npz"))
  np.testing.assert_array_equal(datasets.mnist(dtype="uint8").y_train, data["y_train"])
  monkeypatch.delenv("ADAPTGRAD_JAX_MNIST")
  # Cache directory ($ADAPTGRAD_JAX_CACHE/mnist), IDX files.
  write_idx_dir(datasets.cache_dir() / "mnist", data)
  np.testing.assert_array_equal(datasets.mnist(dtype="uint8").y_test, data["y_test"])


def test_mnist_full_archive(mnist_npz):
  got = datasets.mnist(mnist_npz)
  assert got.x_train.shape == (60000, 28, 28, 1) and got.x_test.shape == (10000, 28, 28, 1)
  assert list(got.y_train[:5]) == [5, 0, 4, 1, 9] and list(got.y_test[:5]) == [7, 2, 1, 0, 4]
  assert got.x_train.min() == 0.0 and got.x_train.max() == 1.0


def test_mnist_missing_says_how_to_get_it(tmp_path):
  with pytest.raises(FileNotFoundError) as e:
    datasets.mnist()
  msg = str(e.value)
  assert "download=True" in msg and "mnist_embedded()" in msg
  assert "ADAPTGRAD_JAX_MNIST" in msg and str(tmp_path / "cache" / "mnist") in msg
  with pytest.raises(FileNotFoundError, match="not found"):
    datasets.mnist(tmp_path / "nowhere")


def test_mnist_wrong_files(tmp_path, rng):
  np.savez(tmp_path / "wrong.npz", images=np.zeros((2, 28, 28)), labels=np.zeros(2))
  with pytest.raises(ValueError, match=r"has arrays \['images', 'labels'\].*missing"):
    datasets.mnist(tmp_path / "wrong.npz")
  (tmp_path / "text.npz").write_text("not a zip")
  with pytest.raises(ValueError, match="not a readable .npz archive"):
    datasets.mnist(tmp_path / "text.npz")
  (tmp_path / "data.csv").write_text("1,2,3")
  with pytest.raises(ValueError, match="not an .npz archive"):
    datasets.mnist(tmp_path / "data.csv")
  data = fake_mnist(rng)
  data["x_train"] = np.zeros((30, 32, 32), np.uint8)
  np.savez(tmp_path / "cifar.npz", **data)
  with pytest.raises(ValueError, match=r"x_train has shape \(30, 32, 32\), expected"):
    datasets.mnist(tmp_path / "cifar.npz")
  data = fake_mnist(rng)
  data["y_test"] = data["y_test"] + 10
  np.savez(tmp_path / "labels.npz", **data)
  with pytest.raises(ValueError, match="labels outside 0..9"):
    datasets.mnist(tmp_path / "labels.npz")
  partial = tmp_path / "partial"
  write_idx_dir(partial, fake_mnist(rng))
  (partial / "t10k-labels-idx1-ubyte.gz").unlink()
  with pytest.raises(ValueError, match="only some MNIST IDX files; missing"):
    datasets.mnist(partial)
  with pytest.raises(ValueError, match="dtype='float64'"):
    datasets.mnist(tmp_path / "cifar.npz", dtype="float64")


def test_download_checks_checksums_and_leaves_no_partial_file(tmp_path, monkeypatch):
  class FakeResponse:
    def __init__(self, payload):
      self.payload = payload

    def read(self):
      return self.payload

    def __enter__(self):
      return self

    def __exit__(self, *args):
      return False

  monkeypatch.setattr(urllib.request, "urlopen",
                      lambda url, timeout=None: FakeResponse(b"corrupt"))
  with pytest.raises(OSError, match="checksum mismatch"):
    datasets.download_mnist(tmp_path / "dl")
  assert list((tmp_path / "dl").iterdir()) == []


def test_download_writes_verified_files(tmp_path, monkeypatch, rng):
  data = fake_mnist(rng)
  payloads = {name: gzip.compress(idx_bytes(data[key]))
              for name, (key, _) in _mnist.MNIST_FILES.items()}
  fake_md5 = {name: (key, hashlib.md5(payloads[name]).hexdigest())
              for name, (key, _) in _mnist.MNIST_FILES.items()}
  monkeypatch.setattr(_mnist, "MNIST_FILES", fake_md5)
  calls = []

  def serve(url, timeout=None):
    calls.append(url)
    name = url.rsplit("/", 1)[1][:-3]

    class R:
      def read(self):
        return payloads[name]

      def __enter__(self):
        return self

      def __exit__(self, *a):
        return False
    return R()

  monkeypatch.setattr(urllib.request, "urlopen", serve)
  got = datasets.mnist(download=True, dtype="uint8")
  np.testing.assert_array_equal(got.x_train[..., 0], data["x_train"])
  assert len(calls) == 4 and calls[0].startswith("https://")
  datasets.download_mnist()  # already there and valid: no new request
  assert len(calls) == 4


# ------------------------------------------------------------ embedded subset
def test_embedded_subset_shape_balance_size():
  assert SUBSET.stat().st_size <= 3_000_000
  d = datasets.mnist_embedded()
  assert d.x_train.shape == (10000, 28, 28, 1) and d.x_test.shape == (2000, 28, 28, 1)
  assert d.x_train.dtype == np.float32 and 0.0 <= d.x_train.min() and d.x_train.max() == 1.0
  np.testing.assert_array_equal(np.bincount(d.y_train), [1000] * 10)
  np.testing.assert_array_equal(np.bincount(d.y_test), [200] * 10)
  assert (SUBSET.parent / "MNIST_LICENSE.md").read_text().count("CC BY-SA 3.0") + \
      (SUBSET.parent / "MNIST_LICENSE.md").read_text().count("Attribution-Share Alike 3.0") >= 1


def test_embedded_subset_is_the_documented_selection(mnist_npz):
  full = np.load(mnist_npz)
  with np.load(SUBSET) as sub:
    for split, per_class in (("train", 1000), ("test", 200)):
      idx = sub[f"{split}_index"]
      expected = np.sort(np.concatenate(
          [np.flatnonzero(full[f"y_{split}"] == c)[:per_class] for c in range(10)]))
      np.testing.assert_array_equal(idx, expected)
      np.testing.assert_array_equal(sub[f"x_{split}"], full[f"x_{split}"][idx])
      np.testing.assert_array_equal(sub[f"y_{split}"], full[f"y_{split}"][idx])


def test_build_subset_is_deterministic(tmp_path, rng):
  data = fake_mnist(rng, n_train=200, n_test=100)
  data["y_train"] = np.arange(200) % 10
  data["y_test"] = np.arange(100) % 10
  np.savez(tmp_path / "m.npz", **data)
  out = _build_subset.build(tmp_path / "m.npz", tmp_path / "sub.npz",
                            per_class_train=3, per_class_test=2)
  with np.load(out) as sub:
    np.testing.assert_array_equal(sub["train_index"], np.arange(30))
    np.testing.assert_array_equal(sub["x_test"], data["x_test"][:20])
  with pytest.raises(ValueError, match="class 0 has only 20 examples < 21"):
    _build_subset.build(tmp_path / "m.npz", tmp_path / "x.npz", per_class_train=21)
