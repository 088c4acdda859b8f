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

  Quantus' ``Consistency`` is a different metric with the same name
  (Dasgupta et al. 2022: the probability that inputs whose discretised
  explanations agree also get the same predicted label); it has no
  counterpart here, and this function does not compute it.

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


# ------------------------------------------------------------ random logit
SIMILARITIES = ("ssim", "spearman", "pearson")


def ssim_1d(a: jax.Array, b: jax.Array, *, win_size: int = 7) -> jax.Array:
  """Structural similarity of two flattened maps, as scikit-image on 1-D arrays.

  ``skimage.metrics.structural_similarity(a, b, data_range=R)`` with its
  defaults (uniform window of 7, K1 = 0.01, K2 = 0.03, sample covariance,
  the mean over positions at least ``(win_size - 1) / 2`` from the ends),
  where ``R = max(a, b) - min(a, b)`` as Quantus' ``ssim``. Two equal
  constant maps (R = 0) have similarity 1.
  """
  a = a.reshape(-1)
  b = b.reshape(-1)
  dt = jnp.promote_types(a.dtype, jnp.float32)
  a, b = a.astype(dt), b.astype(dt)
  r = jnp.maximum(jnp.max(a), jnp.max(b)) - jnp.minimum(jnp.min(a), jnp.min(b))
  m = a.shape[0] - win_size + 1

  def box(v):  # window means at the kept positions: sums of shifted slices
    return sum(v[o:o + m] for o in range(win_size)) / win_size

  cov_norm = win_size / (win_size - 1.0)
  ux, uy = box(a), box(b)
  vx = cov_norm * (box(a * a) - ux * ux)
  vy = cov_norm * (box(b * b) - uy * uy)
  vxy = cov_norm * (box(a * b) - ux * uy)
  c1, c2 = (0.01 * r) ** 2, (0.03 * r) ** 2
  s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / (
      (ux * ux + uy * uy + c1) * (vx + vy + c2))
  return jnp.where(r > 0, jnp.mean(jnp.where(r > 0, s, 1.0)), 1.0)


def _similarity(a, b, how):
  if how == "ssim":
    return ssim_1d(a, b)
  if how == "pearson":
    return _correlation._pearson(a.reshape(-1), b.reshape(-1))  # pylint: disable=protected-access
  return _correlation._pearson(  # pylint: disable=protected-access
      _correlation.average_ranks(a), _correlation.average_ranks(b))


def _max_normalised(a):
  m = jnp.max(jnp.abs(a))
  return a / jnp.where(m == 0, jnp.ones_like(m), m)


@functools.partial(jax.jit, static_argnames=(
    "explain_fn", "num_classes", "similarity", "normalise", "absolute"))
def _random_logit(key, x, target, *, explain_fn, num_classes, similarity,
                  normalise, absolute):
  k_class, k_a, k_b = jax.random.split(key, 3)
  off = jax.random.randint(k_class, (), 0, num_classes - 1)
  off = off + (off >= target)  # uniform over the other classes
  a = explain_fn(k_a, x, target)
  b = explain_fn(k_b, x, off)
  finite = jnp.all(jnp.isfinite(a)) & jnp.all(jnp.isfinite(b))
  if normalise:
    a, b = _max_normalised(a), _max_normalised(b)
  if absolute:
    a, b = jnp.abs(a), jnp.abs(b)
  return _similarity(a, b, similarity), finite


def random_logit(
    key: jax.Array,
    explain_fn: Callable[..., jax.Array],
    x: ArrayLike,
    target: int,
    *,
    num_classes: int,
    similarity: str = "ssim",
    normalise: bool = True,
    abs: bool = False,  # pylint: disable=redefined-builtin
) -> jax.Array:
  """Random Logit test: similarity of the explanation of a random other class.

  The explanation of ``target`` is compared with that of a class drawn
  uniformly from the other ``num_classes - 1``; a class-sensitive
  explainer gives dissimilar maps, so LOWER is better. Defaults are Quantus'
  ``RandomLogit``: maps normalised by their maximum magnitude, then SSIM of
  the flattened maps (see :func:`ssim_1d`). Quantus normalises a whole batch
  by one maximum; here each map is divided by its own (equal on a batch of
  one). Quantus draws the class with NumPy's seeded global generator; here
  it is drawn from ``key``.

  Args:
    key: PRNG key: split into three, for the other class and the two
      explanations.
    explain_fn: ``explain_fn(key, x, target) -> map`` (close over the
      parameters: ``lambda k, x, t: sg(k, x, params, t)``).
    x: one input.
    target: the explained class, in [0, num_classes).
    num_classes: the number of classes (Quantus' default is 1000: pass it).
    similarity: ``"ssim"`` (Quantus), ``"spearman"`` or ``"pearson"``.
    normalise: divide each map by its maximum magnitude first.
    abs: compare magnitudes.

  Returns:
    A scalar similarity (SSIM in [-1, 1]; two equal constant maps give 1).

  Raises:
    TypeError: ``explain_fn`` cannot be called as ``explain_fn(key, x, t)``.
    ValueError: a ``target`` outside [0, num_classes) (never clamped),
      ``num_classes < 2``, a map of the wrong shape or non-finite.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from adaptgrad_jax.metrics import random_logit
    >>> w = jax.random.normal(jax.random.key(1), (16, 3))
    >>> g = lambda key, x, t: w[:, t] * x  # Gradient x Input of a linear model
    >>> s = random_logit(jax.random.key(0), g, jnp.ones(16), 0, num_classes=3)
    >>> bool(-1.0 <= s < 1.0)
    True

  References:
    Sixt, Granz and Landgraf, "When explanations lie: why many modified BP
    attributions fail", ICML 2020, Sec. 4. Quantus ``RandomLogit``.
  """
  _common.check_choice(similarity, "similarity", SIMILARITIES)
  if isinstance(num_classes, bool) or int(num_classes) != num_classes or num_classes < 2:
    raise ValueError(f"num_classes={num_classes!r} must be an integer >= 2.")
  _common.check_target(target, int(num_classes))
  x = _common.as_float_array(x, "x")
  _common.check_finite(x, "x")
  t = jnp.asarray(target, jnp.int32)
  out = _common.check_explain_fn(explain_fn, x, (t,))
  _common.check_map_shape(out, x.shape, "explain_fn")
  if similarity == "ssim" and out.size < 7:
    raise ValueError(
        f"similarity='ssim' needs maps of at least 7 elements (its window); "
        f"got {out.size}: use similarity='spearman'.")
  score, finite = _random_logit(
      key, x, t, explain_fn=explain_fn, num_classes=int(num_classes),
      similarity=similarity, normalise=bool(normalise), absolute=bool(abs))
  _common.check_result_finite(finite, "explain_fn")
  return score


# ------------------------------------------------------- smooth / efficient MPRT
def _randomised_params(key, params, layers, init):
  """Yields (name, params) with ``layers`` randomised cascadingly (None: all at once)."""
  if layers is None:
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(key, len(leaves))
    yield "all", jax.tree_util.tree_unflatten(
        treedef, [init(k, leaf) for k, leaf in zip(keys, leaves)])
    return
  current = params
  for layer, k in zip(layers, jax.random.split(key, len(layers))):
    current = randomise_layer(k, current, layer, init=init)
    yield layer, current


def _check_layers(params, layers):
  if layers is None:
    return
  if isinstance(layers, str) or not layers:
    raise ValueError(
        f"layers={layers!r} must be a non-empty sequence of layer path "
        f"prefixes in randomisation order (e.g. ['linear1', 'linear2'] for "
        f"Quantus' 'bottom_up'), or None for every parameter at once.")
  for layer in layers:
    _layer_leaf_mask(params, layer)


def _explain_batch(explain_fn, key, xs, params, targets):
  """Maps of a batch, one key per example (``targets`` None: no target argument)."""
  keys = jax.random.split(key, xs.shape[0])
  if targets is None:
    return jax.vmap(lambda k, x: explain_fn(k, x, params))(keys, xs)
  return jax.vmap(lambda k, x, t: explain_fn(k, x, params, t))(keys, xs, targets)


def _check_batch_explainer(explain_fn, xs, params, targets):
  xs = _common.as_float_array(xs, "xs")
  _common.check_finite(xs, "xs")
  if xs.ndim < 2:
    raise ValueError(f"xs has shape {xs.shape}; pass a batch (B, ...) of inputs.")
  if targets is not None and jnp.shape(targets) != (xs.shape[0],):
    raise ValueError(f"targets has shape {jnp.shape(targets)}; pass one class "
                     f"per input, shape ({xs.shape[0]},).")
  args = (params,) if targets is None else (params, jnp.asarray(targets)[0])
  out = _common.check_explain_fn(explain_fn, xs[0], args)
  _common.check_map_shape(out, xs.shape[1:], "explain_fn")
  return xs, None if targets is None else jnp.asarray(targets)


def smooth_mprt(
    key: jax.Array,
    explain_fn: Callable[..., jax.Array],
    xs: ArrayLike,
    params: PyTree,
    targets: ArrayLike | None = None,
    *,
    layers: Sequence[str],
    num_samples: int = 50,
    noise_magnitude: float = 0.1,
    abs: bool = True,  # pylint: disable=redefined-builtin
    init: Callable[[jax.Array, jax.Array], jax.Array] = standard_normal_init,
) -> dict[str, jax.Array]:
  """Smooth Model Parameter Randomisation Test (sMPRT), per layer and example.

  Adebayo et al.'s MPRT with the explanations denoised first: each map is
  the mean over ``num_samples`` explanations, ``num_samples - 1`` of inputs
  with Gaussian noise of standard deviation ``noise_magnitude * (max(x) -
  min(x))`` and one of the clean input (Quantus' ``explain_smooth_batch``).
  Layers are randomised cascadingly in the given order (Quantus'
  ``bottom_up`` lists them from the input), and the Spearman rank
  correlation of the magnitudes (``abs=True``) of the original and the
  randomised model's denoised maps is returned per layer. LOWER is better.
  Quantus' default ``normalise=True`` (a positive rescaling) does not
  change a rank correlation. Re-initialisation is ``init`` (N(0, 1) by
  default, as the AdaptGrad code; Quantus calls each torch layer's
  ``reset_parameters``).

  Args:
    key: PRNG key for the randomisation, the noise and the explainers.
    explain_fn: ``explain_fn(key, x, params[, target]) -> map`` for one input.
    xs: a batch of inputs (B, ...).
    params: the trained parameters (any pytree).
    targets: optional (B,) classes passed as the explainer's last argument.
    layers: path prefixes of the layers, in randomisation order.
    num_samples: explanations averaged per map (Quantus: 50).
    noise_magnitude: noise scale relative to each input's range (0.1).
    abs: compare magnitudes (Quantus' default).
    init: ``init(key, leaf) -> new leaf``.

  Returns:
    A dict mapping each layer to the (B,) correlations (NaN for a constant
    map, which has no ranking, as in scipy and Quantus).

  Raises:
    ValueError: layers that match no parameter, shapes that do not fit.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from adaptgrad_jax.metrics import smooth_mprt
    >>> params = {"l1": {"w": jnp.ones((4, 3))}, "l2": {"w": jnp.ones((3,))}}
    >>> f = lambda x, p: jnp.tanh(x @ p["l1"]["w"]) @ p["l2"]["w"]
    >>> g = lambda key, x, p: jax.grad(f)(x, p)
    >>> xs = jax.random.uniform(jax.random.key(1), (2, 4))
    >>> r = smooth_mprt(jax.random.key(0), g, xs, params, layers=["l1", "l2"],
    ...                 num_samples=4)
    >>> sorted(r), r["l2"].shape
    (['l1', 'l2'], (2,))

  References:
    Hedström et al., "Sanity checks revisited: an exploration to repair the
    model parameter randomisation test", XAI in Action workshop, NeurIPS
    2023. Quantus ``SmoothMPRT``.
  """
  _check_layers(params, layers)
  if layers is None:
    raise ValueError("layers=None: sMPRT reports each layer; list them.")
  if int(num_samples) < 1:
    raise ValueError(f"num_samples={num_samples!r} must be >= 1.")
  xs, targets = _check_batch_explainer(explain_fn, xs, params, targets)
  k_rand, k_orig, k_layers = jax.random.split(key, 3)
  static = dict(explain_fn=explain_fn, num_samples=int(num_samples),
                noise_magnitude=float(noise_magnitude), absolute=bool(abs))
  reference = _smooth_maps(k_orig, xs, params, targets, **static)
  results = {}
  layer_keys = jax.random.split(k_layers, len(layers))
  for (name, p), k in zip(_randomised_params(k_rand, params, layers, init),
                          layer_keys):
    results[name] = _spearman_rows(
        reference, _smooth_maps(k, xs, p, targets, **static))
  return results


@functools.partial(jax.jit, static_argnames=(
    "explain_fn", "num_samples", "noise_magnitude", "absolute"))
def _smooth_maps(key, xs, params, targets, *, explain_fn, num_samples,
                 noise_magnitude, absolute):
  """Quantus' ``explain_smooth_batch``: the mean of noisy maps and one clean map."""
  dims = tuple(range(1, xs.ndim))
  std = noise_magnitude * (jnp.max(xs, dims, keepdims=True) -
                           jnp.min(xs, dims, keepdims=True))
  k_noise, k_explain = jax.random.split(key)
  nkeys = jax.random.split(k_noise, num_samples)
  ekeys = jax.random.split(k_explain, num_samples)

  def body(i, total):
    eps = jax.random.normal(nkeys[i], xs.shape, xs.dtype) * std
    eps = jnp.where(i == num_samples - 1, jnp.zeros_like(eps), eps)
    return total + _explain_batch(explain_fn, ekeys[i], xs + eps, params,
                                  targets) / num_samples

  shape = jax.eval_shape(lambda: _explain_batch(explain_fn, ekeys[0], xs, params, targets))
  maps = jax.lax.fori_loop(0, num_samples, body, jnp.zeros(shape.shape, shape.dtype))
  return jnp.abs(maps) if absolute else maps


@jax.jit
def _spearman_rows(a, b):
  a = a.reshape(a.shape[0], -1)
  b = b.reshape(b.shape[0], -1)
  return jax.vmap(lambda u, v: _correlation._pearson(  # pylint: disable=protected-access
      _correlation.average_ranks(u), _correlation.average_ranks(v)))(a, b)


@functools.partial(jax.jit, static_argnames=("explain_fn",))
def _maps(key, xs, params, targets, *, explain_fn):
  return _explain_batch(explain_fn, key, xs, params, targets)


@functools.partial(jax.jit, static_argnames=("num_bins",))
def _discrete_entropy(maps, *, num_bins):
  """Quantus' ``discrete_entropy`` per map: entropy of a ``num_bins`` histogram."""
  def one(a):
    counts, _ = jnp.histogram(a.reshape(-1), bins=num_bins)
    p = counts / jnp.sum(counts)
    return -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0))
  return jax.vmap(one)(maps)


def efficient_mprt(
    key: jax.Array,
    explain_fn: Callable[..., jax.Array],
    xs: ArrayLike,
    params: PyTree,
    targets: ArrayLike | None = None,
    *,
    layers: Sequence[str] | None = None,
    num_bins: int = 100,
    abs: bool = False,  # pylint: disable=redefined-builtin
    init: Callable[[jax.Array, jax.Array], jax.Array] = standard_normal_init,
) -> jax.Array:
  """Efficient Model Parameter Randomisation Test (eMPRT), per example.

  The relative rise in explanation complexity from the trained model to the
  fully randomised one: ``(H(e_rand) - H(e)) / H(e)``, where H is the
  discrete entropy of a ``num_bins``-bin histogram of the map (Quantus'
  ``discrete_entropy``). An explainer that depends on the parameters gives
  noisier, more complex maps on a random model: HIGHER is better. As in
  Quantus' defaults (``skip_layers=True``), only the fully randomised model
  is evaluated: with ``layers`` None every parameter is redrawn, otherwise
  the listed layers are (cascading). A map whose entropy is 0 (a constant
  map: one histogram bin) gets ``H(e_rand) - H(e)`` (divided by 1) instead
  of Quantus' division by zero.

  Args:
    key: PRNG key for the randomisation and the explainers.
    explain_fn: ``explain_fn(key, x, params[, target]) -> map`` for one input.
    xs: a batch of inputs (B, ...).
    params: the trained parameters (any pytree).
    targets: optional (B,) classes passed as the explainer's last argument.
    layers: path prefixes randomised (None: all parameters).
    num_bins: histogram bins (Quantus: 100).
    abs: histogram the magnitudes (Quantus' default: signed maps).
    init: ``init(key, leaf) -> new leaf`` (N(0, 1) as the AdaptGrad code;
      Quantus calls each torch layer's ``reset_parameters``).

  Returns:
    The (B,) relative complexity rises.

  Raises:
    ValueError: layers that match no parameter, shapes that do not fit.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from adaptgrad_jax.metrics import efficient_mprt
    >>> params = {"w": jnp.linspace(-1.0, 1.0, 64)}
    >>> g = lambda key, x, p: p["w"] * x  # Gradient x Input of a linear model
    >>> xs = jnp.ones((2, 64))
    >>> efficient_mprt(jax.random.key(0), g, xs, params).shape
    (2,)

  References:
    Hedström et al., "A fresh look at sanity checks for saliency maps",
    xAI 2024 (eMPRT). Quantus ``EfficientMPRT``.
  """
  _check_layers(params, layers)
  if isinstance(num_bins, bool) or int(num_bins) != num_bins or num_bins < 1:
    raise ValueError(f"num_bins={num_bins!r} must be a positive integer; "
                     f"Quantus uses 100.")
  xs, targets = _check_batch_explainer(explain_fn, xs, params, targets)
  k_rand, k_orig, k_new = jax.random.split(key, 3)
  *_, (_, randomised) = _randomised_params(k_rand, params, layers, init)
  before = _maps(k_orig, xs, params, targets, explain_fn=explain_fn)
  after = _maps(k_new, xs, randomised, targets, explain_fn=explain_fn)
  finite = jnp.all(jnp.isfinite(before)) & jnp.all(jnp.isfinite(after))
  _common.check_result_finite(finite, "explain_fn")
  if abs:
    before, after = jnp.abs(before), jnp.abs(after)
  h0 = _discrete_entropy(before, num_bins=int(num_bins))
  h1 = _discrete_entropy(after, num_bins=int(num_bins))
  return (h1 - h0) / jnp.where(h0 > 0, h0, jnp.ones_like(h0))
