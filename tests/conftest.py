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


@pytest.fixture(scope="module")
def unoptimized_xla():
  """Compiles the module's programs without XLA:CPU's backend optimisations.

  For modules whose programs run once or twice on tiny inputs, where compiling
  costs more than running (the CLI's MNIST tests: 50.5 s of CPU, 37.9 s
  without the passes). The values are the same; only how hard XLA optimises
  changes. The environment variable carries it to child processes (CLI runs,
  attribution workers), so every side of a comparison compiles alike. Not
  suite-wide: it slows tests whose programs do real work (full-width
  convolutions). Use it with ``pytestmark = pytest.mark.usefixtures("unoptimized_xla")``.
  """
  name = "jax_disable_most_optimizations"
  previous = jax.config.values.get(name, False)
  with pytest.MonkeyPatch.context() as patch:
    patch.setenv("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
    jax.config.update(name, True)
    yield
    jax.config.update(name, previous)
