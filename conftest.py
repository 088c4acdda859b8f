"""Doctests of the package (``pytest --doctest-modules adaptgrad_jax``) see ``jax`` and ``jnp``, as in optax's docs."""

import jax
import jax.numpy as jnp
import pytest


@pytest.fixture(autouse=True)
def _doctest_namespace(doctest_namespace):
  doctest_namespace["jax"] = jax
  doctest_namespace["jnp"] = jnp
