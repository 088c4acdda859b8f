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
import subprocess
import sys

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
  without them; XLA:CPU's older emitters (:func:`_compile_quickly`) then took
  the suite from 1,175 s to 711 s of user CPU (10 min 32 s -> 6 min 26 s).
  The values are the same up to rounding. The environment
  variable carries the choice to child processes (CLI runs, attribution
  workers), so every side of a comparison compiles alike.
  ``JAX_DISABLE_MOST_OPTIMIZATIONS=0`` tests the optimised programs users run
  (``.ci/run`` does so for the numerical core's modules).
  """
  os.environ.setdefault(OPTIMISATIONS_ENV, "1")
  unoptimised = os.environ[OPTIMISATIONS_ENV].lower() in ("1", "true")
  jax.config.update("jax_disable_most_optimizations", unoptimised)
  if unoptimised and not hasattr(config, "workerinput"):
    _compile_quickly()


# XLA:CPU's fusion emitters (its default since 2025) take about 1.6x the compile time of its older ones on the
# suite's programs: user CPU of test_metrics, test_sigma and test_cpu_threefry 85 s -> 50 s. Emitting the
# module in one piece is part of the choice: with the older emitters and the module split for parallel code
# generation (the default) and most passes off, VGG16-BN's float64 input gradient came out 0.21 off (of 0.61)
# from PyTorch's, a wrong result from XLA, not from the port; in one piece it matches to 1e-10.
QUICK_COMPILE_FLAGS = ("--xla_cpu_use_fusion_emitters=false", "--xla_cpu_parallel_codegen_split_count=1")


def _compile_quickly():
  """Adds :data:`QUICK_COMPILE_FLAGS` to ``$XLA_FLAGS`` for this run's processes, where this jaxlib knows them.

  Only with most optimisation passes off (the suite's default), so the
  optimised run (``JAX_DISABLE_MOST_OPTIMIZATIONS=0``) compiles what users
  compile. XLA aborts at start on a flag it does not know, and a later jaxlib
  may drop these: a child process tries them first, and without them the
  suite runs as before, only slower. The controller decides before any
  backend starts; ``-n 2`` workers and CLI child processes inherit the
  environment. Nothing changes where the backend has already started (a
  plugin used it) or ``$XLA_FLAGS`` already names the flags.
  """
  try:  # private: where a later jax moves it, only the controller may miss the flags (workers run the tests)
    from jax._src.xla_bridge import backends_are_initialized  # pylint: disable=import-outside-toplevel
  except ImportError:
    backends_are_initialized = lambda: False  # noqa: E731

  current = os.environ.get("XLA_FLAGS", "")
  missing = [f for f in QUICK_COMPILE_FLAGS if f.split("=")[0] not in current]
  if not missing or backends_are_initialized():
    return
  flags = " ".join([current, *missing]).strip()
  try:
    probe = subprocess.run([sys.executable, "-c", "import jax; jax.jit(lambda x: x + 1)(1.0).block_until_ready()"],
                           env={**os.environ, "XLA_FLAGS": flags}, capture_output=True, check=False, timeout=120)
  except subprocess.TimeoutExpired:
    return
  if probe.returncode == 0:
    os.environ["XLA_FLAGS"] = flags


def pytest_report_header(config):
  del config
  return (f"compiled with {OPTIMISATIONS_ENV}={os.environ.get(OPTIMISATIONS_ENV)},"
          f" XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")

