"""The demo's MNIST MLP cache: atomic meta.json, a lock against two demos training at once, the accuracy."""

import json

import numpy as np
import pytest

from adaptgrad_jax import _files
from adaptgrad_jax.cli import _mnist

TINY = dict(_mnist.QUICK_SETTINGS, train_size=300, epochs=1)


@pytest.fixture
def cache(tmp_path, monkeypatch):
  monkeypatch.setenv("ADAPTGRAD_JAX_CACHE", str(tmp_path / "cache"))
  return tmp_path / "cache"


def test_translations_are_the_nine_one_pixel_shifts():
  x = np.zeros((1, 5, 5, 1), np.float32)
  x[0, 2, 2, 0] = 1.0
  moved, labels = _mnist.translations(x, np.asarray([4]), 1)
  assert moved.shape == (9, 5, 5, 1) and labels.tolist() == [4] * 9
  np.testing.assert_array_equal(moved[0], x[0])  # the original first
  where = sorted(tuple(int(v) for v in np.argwhere(m[..., 0] == 1.0)[0]) for m in moved)
  assert where == [(r, c) for r in (1, 2, 3) for c in (1, 2, 3)]
  assert np.all(moved.sum(axis=(1, 2, 3)) == 1.0)


def test_cache_meta_is_written_atomically_and_read_back(cache, monkeypatch):
  writes = []
  real = _files.atomic_write
  monkeypatch.setattr(_files, "atomic_write", lambda path, fn, **kw: writes.append(path) or real(path, fn, **kw))
  first = _mnist.trained_mlp(TINY, progress=False, log=lambda m: None)
  assert "trained now, cached in" in first.description
  meta = [p for p in writes if p.name == "meta.json"]
  assert len(meta) == 1 and json.loads(meta[0].read_text())["accuracy"] == pytest.approx(first.accuracy)
  again = _mnist.trained_mlp(TINY, progress=False, log=lambda m: None)
  assert "loaded from" in again.description and again.accuracy == pytest.approx(first.accuracy)
  assert f"{first.accuracy:.1%}" in again.description
  model, description = _mnist.demo_mlp(TINY, progress=False)  # the two-value form explain --model mlp uses
  assert description == again.description


def test_a_second_demo_waits_for_the_lock_then_trains_uncached(cache, monkeypatch):
  monkeypatch.setattr(_mnist, "WAIT_SECONDS", 0.6)
  messages = []
  folder = cache / "demo"
  folder.mkdir(parents=True)
  name = f"mlp-{_mnist.settings_hash(dict(TINY))}"
  with _files.exclusive_lock(folder / f"{name}.lock"):  # another demo is training this MLP
    result = _mnist.trained_mlp(TINY, progress=False, log=messages.append)
  assert any("another process is training" in m for m in messages)
  assert any("training without caching" in m for m in messages)
  assert "not cached" in result.description
  assert not (folder / name / "meta.json").exists()
