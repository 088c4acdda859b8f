"""Shared pytest fixtures.

Tests that need the data in ``../shared/data`` (full MNIST, the paper's
released models) take the ``shared_data`` fixture or one built on it. Where
that folder is missing (a clone on its own), they skip with a message saying
how to provide it. ``.ci/run`` sets ``ADAPTGRAD_JAX_REQUIRE_DATA=1``: there a
missing file is a failure, so CI always proves these tests.
"""

import itertools
import os
import pathlib

import jax
import numpy as np
import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
DATA_ENV = "ADAPTGRAD_JAX_SHARED_DATA"
REQUIRE_ENV = "ADAPTGRAD_JAX_REQUIRE_DATA"
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data"


def shared_data_path(name: str) -> pathlib.Path:
  """``$ADAPTGRAD_JAX_SHARED_DATA/name`` (default ``../shared/data/name``), or skip / fail.

  Skips when it is missing, except where ``$ADAPTGRAD_JAX_REQUIRE_DATA`` is
  ``1`` (CI), which fails instead.
  """
  root = pathlib.Path(os.environ.get(DATA_ENV) or DEFAULT_DATA)
  path = root / name
  if path.exists():
    return path
  message = (
      f"{path} not found: this test needs the shared data folder. Set"
      f" {DATA_ENV}=/path/to/shared/data (holding mnist.npz and"
      " adaptgrad-released/) or clone the project beside ../shared."
  )
  if os.environ.get(REQUIRE_ENV) == "1":
    pytest.fail(message + f" ({REQUIRE_ENV}=1: data-dependent tests must run here.)")
  pytest.skip(message)


@pytest.fixture
def getkey():
  """Returns a function that hands out fresh, deterministic PRNG keys."""
  counter = itertools.count()
  base = jax.random.key(0)
  return lambda: jax.random.fold_in(base, next(counter))


@pytest.fixture(scope="session")
def mnist_npz():
  """Path to the full MNIST archive (``mnist.npz`` in the shared data folder)."""
  return shared_data_path("mnist.npz")


@pytest.fixture(scope="session")
def released_models_dir():
  """The paper's released MNIST models (``adaptgrad-released/`` in the shared data folder)."""
  return shared_data_path("adaptgrad-released")


@pytest.fixture
def rng():
  return np.random.default_rng(0)


OPTIMISATIONS_ENV = "JAX_DISABLE_MOST_OPTIMIZATIONS"


def pytest_configure(config):
  """Compiles the suite's programs without most of XLA's optimisation passes, unless the environment says otherwise.

  The suite is compile-bound: its programs are tiny and run once or twice. On
  2 cores (``-n 2``) the tests took 1,911 s with the passes and 1,421 s
  without them. The values are the same up to rounding. The environment
  variable carries the choice to child processes (CLI runs, attribution
  workers), so every side of a comparison compiles alike.
  ``JAX_DISABLE_MOST_OPTIMIZATIONS=0`` tests the optimised programs users run
  (``.ci/run`` does so for the numerical core's modules).
  """
  del config
  os.environ.setdefault(OPTIMISATIONS_ENV, "1")
  jax.config.update("jax_disable_most_optimizations", os.environ[OPTIMISATIONS_ENV].lower() in ("1", "true"))
