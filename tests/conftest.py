"""Shared pytest fixtures."""

import itertools
import os
import pathlib

import jax
import numpy as np
import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
MNIST_PATH = REPO_ROOT.parent / "shared" / "data" / "mnist.npz"


@pytest.fixture
def getkey():
  """Returns a function that hands out fresh, deterministic PRNG keys."""
  counter = itertools.count()
  base = jax.random.key(0)
  return lambda: jax.random.fold_in(base, next(counter))


@pytest.fixture(scope="session")
def mnist_npz():
  """Path to the shared full MNIST archive (tests and CI read it from there)."""
  path = pathlib.Path(os.environ.get("ADAPTGRAD_TEST_MNIST", MNIST_PATH))
  if not path.exists():
    pytest.fail(f"MNIST archive not found at {path}; see ../shared/data/README.md")
  return path


@pytest.fixture
def rng():
  return np.random.default_rng(0)
