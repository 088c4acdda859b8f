"""Randomisation sanity checks: data (label) and model-parameter randomisation."""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from adaptgrad_jax.metrics import _common
from adaptgrad_jax.metrics import _correlation

PyTree = Any
REDUCTIONS = ("mean_abs", "mean", None)


def reduce_correlations(corrs: jax.Array, reduce: str | None) -> jax.Array:
  """Aggregates per-example correlations; NaN (constant maps) are dropped."""
  _common.check_choice(reduce, "reduce", REDUCTIONS)
  if reduce is None:
    return corrs
  return _nanmean(corrs, reduce == "mean_abs")


@functools.partial(jax.jit, static_argnums=1)
def _nanmean(corrs, absolute):
  return jnp.nanmean(jnp.abs(corrs) if absolute else corrs)


def consistency(
    maps: ArrayLike,
    random_label_maps: ArrayLike,
    *,
    scaling: str | None = "no_abs",
    clip_percentile: float = 99.0,
    reduce_channels: str | None = None,
    reduce: str | None = "mean_abs",
) -> jax.Array:
  """Data randomisation test: similarity to a model trained on permuted labels.

  Adebayo et al. (2018) train the same architecture twice, once on the true
  labels and once on randomly permuted labels, and compare the explanations
  of the two models on the same inputs. A method that reflects what the model
  learnt gives dissimilar maps, so LOWER is better. Following the AdaptGrad
  code (``experiments/get_correlation.py``), the similarity is the Spearman
  rank correlation of the scaled maps (see :func:`rank_correlation`), and the
  score is the mean absolute correlation over examples, ignoring NaN (maps
  that are constant). The paper's Table 1 reports 0.0209 for the plain
  gradient of its MNIST MLP.

  Each model explains its own predicted class in the paper's code; compute
  the two batches of maps accordingly.

  Args:
    maps: explanations of the model trained on true labels, shape (B, ...).
    random_label_maps: explanations of the same inputs by the model trained
      on permuted labels, same shape.
    scaling: the paper code's map scaling before ranking: ``"no_abs"``
      (default, the code's default), ``"abs"`` or None.
    clip_percentile: percentile used by the scaling (99).
    reduce_channels: optional channel reduction of (H, W, C) maps.
    reduce: ``"mean_abs"`` (default: mean |rho|, the paper's code), ``"mean"``
      (signed mean) or None for the per-example correlations (with NaN).

  Returns:
    A scalar in [0, 1] (``"mean_abs"``), or the (B,) correlations.

  Raises:
    ValueError: maps of different shapes, NaN in a map, unknown options.

  Example:
    >>> import jax
    >>> from adaptgrad_jax.metrics import consistency
    >>> k1, k2 = jax.random.split(jax.random.key(0))
    >>> m1 = jax.random.normal(k1, (8, 784))
    >>> m2 = jax.random.normal(k2, (8, 784))  # unrelated maps
    >>> bool(consistency(m1, m2) < 0.1)
    True

  References:
    Adebayo et al., "Sanity checks for saliency maps", NeurIPS 2018, Sec. 3.2.
    Zhou et al., "AdaptGrad", NeurIPS 2025, Table 1.
  """
  corrs = _correlation.paired_rank_correlations(
      maps, random_label_maps, scaling=scaling, clip_percentile=clip_percentile,
      reduce_channels=reduce_channels, names=("maps", "random_label_maps"))
  return reduce_correlations(corrs, reduce)


def standard_normal_init(key: jax.Array, leaf: jax.Array) -> jax.Array:
  """N(0, 1) re-initialisation, as ``torch.nn.init.normal_`` in the paper code."""
  return jax.random.normal(key, jnp.shape(leaf), jnp.result_type(leaf))


def _layer_leaf_mask(params: PyTree, layer: str) -> PyTree:
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  found = [p for p, _ in leaves if _common.path_matches(_common.path_str(p), layer)]
  if not found:
    available = sorted({_common.path_str(p).rsplit("/", 1)[0] for p, _ in leaves})
    raise ValueError(
        f"layers entry {layer!r} matches no parameter; parameter groups in "
        f"params are {available}. Give the path prefix of a layer, e.g. "
        f"{available[0]!r}.")
  return jax.tree_util.tree_map_with_path(
      lambda p, _: _common.path_matches(_common.path_str(p), layer), params)


def randomise_layer(
    key: jax.Array,
    params: PyTree,
    layer: str,
    *,
    init: Callable[[jax.Array, jax.Array], jax.Array] = standard_normal_init,
) -> PyTree:
  """Returns ``params`` with every leaf under the path prefix ``layer`` redrawn.

  Paths join dict keys and attribute names with ``/`` (``"l1/kernel"``); the
  ``.value`` of a Flax NNX ``Variable`` is skipped, so an ``nnx.State`` from
  ``nnx.split(model)`` works directly.
  """
  mask = _layer_leaf_mask(params, layer)
  leaves, treedef = jax.tree_util.tree_flatten(params)
  mask_leaves = treedef.flatten_up_to(mask)
  keys = jax.random.split(key, len(leaves))
  new = [init(k, x) if m else x for k, x, m in zip(keys, leaves, mask_leaves)]
  return jax.tree_util.tree_unflatten(treedef, new)


def model_parameter_randomisation(
    key: jax.Array,
    explain_fn: Callable[[PyTree], jax.Array],
    params: PyTree,
    layers: Sequence[str],
    *,
    mode: str = "cascading",
    init: Callable[[jax.Array, jax.Array], jax.Array] = standard_normal_init,
    scaling: str | None = "no_abs",
    clip_percentile: float = 99.0,
    reduce_channels: str | None = None,
    reduce: str | None = "mean_abs",
) -> dict[str, jax.Array]:
  """Model-parameter randomisation test, cascading or independent, per layer.

  For each layer in ``layers`` the test re-initialises parameters and compares
  the explanations of the randomised model with those of the trained one:

  * ``"cascading"``: layers are randomised in the given order and stay
    randomised, so step k has layers[0..k] random (Adebayo et al. go from the
    output layer towards the input: list the layers top-down).
  * ``"independent"``: only layer k is randomised at step k.

  The default re-initialisation is N(0, 1) for weights and biases, as in the
  AdaptGrad code (``metrics/consistency.py``); pass ``init`` to use e.g. the
  layer's own initialiser. Explanations that stay similar after
  randomisation fail the sanity check: lower is better.

  Args:
    key: PRNG key for the re-initialisation.
    explain_fn: ``explain_fn(params) -> maps`` of shape (B, ...) on a fixed
      batch of inputs (close over the inputs and, if wanted, the targets).
    params: the trained parameters (any pytree, e.g. ``nnx.split(model)[1]``).
    layers: path prefixes of the layers, in randomisation order.
    mode: ``"cascading"`` (default) or ``"independent"``.
    init: ``init(key, leaf) -> new leaf``.
    scaling: map scaling before ranking (see :func:`rank_correlation`).
    clip_percentile: percentile used by the scaling.
    reduce_channels: optional channel reduction of (H, W, C) maps.
    reduce: aggregation over examples, as in :func:`consistency`.

  Returns:
    A dict mapping each layer (in order) to its similarity score.

  Raises:
    ValueError: an unknown mode, an empty ``layers`` or a layer that matches
      no parameter.

  References:
    Adebayo et al., "Sanity checks for saliency maps", NeurIPS 2018, Sec. 3.1.
  """
  _common.check_choice(mode, "mode", ("cascading", "independent"))
  if isinstance(layers, str) or not layers:
    raise ValueError(
        f"layers={layers!r} must be a non-empty sequence of layer path "
        f"prefixes, e.g. ['linear2', 'linear1'].")
  for layer in layers:  # fail early, before any explanation is computed
    _layer_leaf_mask(params, layer)
  reference = explain_fn(params)
  results = {}
  current = params
  for layer, k in zip(layers, jax.random.split(key, len(layers))):
    base = current if mode == "cascading" else params
    current = randomise_layer(k, base, layer, init=init)
    corrs = _correlation.paired_rank_correlations(
        reference, explain_fn(current), scaling=scaling,
        clip_percentile=clip_percentile, reduce_channels=reduce_channels,
        names=("maps", "randomised_maps"))
    results[layer] = reduce_correlations(corrs, reduce)
  return results
