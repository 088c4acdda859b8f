"""NoiseGrad and FusionGrad: smoothing by multiplicative noise on the model parameters.

NoiseGrad (Bykov et al., AAAI 2022) perturbs the *model* instead of the
input: every parameter is multiplied by noise drawn from ``N(1, sigma^2)``
and the explanations of the perturbed models are averaged. FusionGrad adds
input noise too (NoiseGrad over SmoothGrad); with AdaptGrad as the input
smoother it is the AdaptGrad paper's A-NG (Zhou et al., Section 5.1.3).

The gradient function takes the parameters as a positional argument, e.g.
``grad_fn = jax.grad(lambda x, params: apply(params, x)[target])`` with
``argnums=1`` (the default) naming ``params``.
"""

from typing import Any, Callable, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from adaptgrad_jax import _sigma
from adaptgrad_jax import _smoothing
from adaptgrad_jax import _strategy
from adaptgrad_jax._attribution import resolve_stochastic, split_key_args
from adaptgrad_jax._attribution import validate_argnums, wrap_like
from adaptgrad_jax._smoothing import map_samples, replace_arg
from adaptgrad_jax._smoothing import validate_aggregate, validate_batch_size
from adaptgrad_jax._smoothing import validate_count, wrap_with_key
from adaptgrad_jax._typing import GradFn, PyTree

Mask = Union[None, PyTree, Callable[[tuple], bool]]


# ----------------------------------------------------------------------------
# Parameter paths and masks.


def plain_path(path: tuple) -> tuple:
  """A JAX key path as plain keys: ``(DictKey('fc'), GetAttrKey('w'))`` -> ``('fc', 'w')``."""
  out = []
  for entry in path:
    for attr in ("key", "name", "idx"):
      if hasattr(entry, attr):
        out.append(getattr(entry, attr))
        break
    else:
      out.append(str(entry))
  return tuple(out)


def _path_str(path: tuple) -> str:
  return "/".join(str(p) for p in path) or "<root>"


def _is_bool(value) -> bool:
  if isinstance(value, (bool, np.bool_)):
    return True
  if isinstance(value, (np.ndarray, jax.Array)) and not isinstance(value, jax.core.Tracer):
    return value.shape == () and value.dtype == np.bool_
  return False


def validate_mask(mask) -> Mask:
  """Checks ``mask`` at build time: None, a predicate, or a pytree of bools."""
  if mask is None or callable(mask):
    return mask
  leaves = jax.tree.leaves(mask)
  bad = [leaf for leaf in leaves if not _is_bool(leaf)]
  if bad or not leaves:
    raise TypeError(
        f"mask={mask!r} must be None (perturb every float parameter), a"
        " pytree of Python bools shaped like the parameters (or a prefix of"
        " them, e.g. {'classifier': False, 'features': True}), or a predicate"
        " on the parameter path, e.g. lambda path: path[0] != 'classifier'."
    )
  return mask


def _is_float(leaf) -> bool:
  return jnp.issubdtype(jnp.asarray(leaf).dtype, jnp.floating)


def select_leaves(params: PyTree, mask: Mask) -> list[bool]:
  """Which leaves of ``params`` (in flatten order) get noise.

  A mask tree matches a parameter leaf if its path is a prefix of the
  leaf's path (compared as plain keys, so a nested dict mask fits an
  ``nnx.State``, whose leaves end in ``'value'``).
  """
  with_paths = jax.tree_util.tree_flatten_with_path(params)[0]
  paths = [plain_path(p) for p, _ in with_paths]
  leaves = [leaf for _, leaf in with_paths]
  if mask is None:
    return [_is_float(leaf) for leaf in leaves]
  if callable(mask):
    selected = []
    for path in paths:
      value = mask(path)
      if not _is_bool(value):
        raise TypeError(
            f"mask({path!r}) returned {value!r}; the predicate must return a"
            " Python bool for each parameter path (a tuple of plain keys)."
        )
      selected.append(bool(value))
  else:
    mask_items = [
        (plain_path(p), bool(v)) for p, v in jax.tree_util.tree_flatten_with_path(mask)[0]
    ]
    selected, unmatched = [], []
    used = set()
    for path in paths:
      hits = [i for i, (mp, _) in enumerate(mask_items) if path[: len(mp)] == mp]
      if not hits:
        unmatched.append(path)
        selected.append(False)
        continue
      best = max(hits, key=lambda i: len(mask_items[i][0]))
      used.add(best)
      selected.append(mask_items[best][1])
    unused = [mp for i, (mp, _) in enumerate(mask_items) if i not in used]
    if unmatched or unused:
      parts = []
      if unmatched:
        parts.append(
            "parameters with no mask entry: "
            + ", ".join(_path_str(p) for p in unmatched[:8])
            + (" ..." if len(unmatched) > 8 else "")
        )
      if unused:
        parts.append(
            "mask entries matching no parameter: "
            + ", ".join(_path_str(p) for p in unused[:8])
            + (" ..." if len(unused) > 8 else "")
        )
      raise ValueError(
          "mask does not match the parameter tree (" + "; ".join(parts) + ")."
          " Build it from the parameters, e.g. jax.tree.map(lambda _: True,"
          " params), then set the leaves to leave alone to False; or pass a"
          " predicate on the path, e.g. mask=lambda path: path[0] !="
          " 'classifier'."
      )
  for path, leaf, chosen in zip(paths, leaves, selected):
    if chosen and not _is_float(leaf):
      raise TypeError(
          f"mask selects parameter {_path_str(path)} of dtype"
          f" {jnp.asarray(leaf).dtype}, which cannot take multiplicative"
          " Gaussian noise; set its mask entry to False."
      )
  return selected


def perturb_params(key, params: PyTree, sigma, selected: list[bool]) -> PyTree:
  """``params * (1 + eps)``, ``eps ~ N(0, sigma^2)`` on the selected leaves.

  The noise for all selected leaves is ONE draw of their total size, cut into
  pieces: one random-number kernel instead of one per leaf, which keeps the
  compile time of models with many parameter arrays low. The draw is in the
  widest compute dtype of the leaves (at least float32).
  """
  leaves, structure = jax.tree.flatten(params)
  chosen = [jnp.asarray(leaf) for leaf, s in zip(leaves, selected) if s]
  if not chosen:
    return params
  dtype = jnp.result_type(*[_sigma.compute_dtype(leaf.dtype) for leaf in chosen])
  sizes = [leaf.size for leaf in chosen]
  z = jax.random.normal(key, (sum(sizes),), dtype)
  offsets = np.cumsum([0] + sizes)
  eps = iter([
      jnp.asarray(sigma, dtype) * z[start:stop].reshape(leaf.shape)
      for start, stop, leaf in zip(offsets[:-1], offsets[1:], chosen)
  ])
  out = []
  for leaf, s in zip(leaves, selected):
    if s:
      leaf = jnp.asarray(leaf)
      e = next(eps)
      leaf = (leaf.astype(e.dtype) * (1 + e)).astype(leaf.dtype)
    out.append(leaf)
  return jax.tree.unflatten(structure, out)


def _validate_sigma(sigma) -> Any:
  if isinstance(sigma, jax.core.Tracer):
    return sigma
  try:
    value = float(sigma)
  except (TypeError, ValueError):
    raise TypeError(
        f"sigma={sigma!r} must be a number >= 0: the standard deviation of the"
        " multiplicative noise N(1, sigma^2) on the parameters (0.2 by default)."
    ) from None
  if not (np.isfinite(value) and value >= 0):
    raise ValueError(
        f"sigma={sigma!r} must be a finite number >= 0: the standard deviation"
        " of the multiplicative noise N(1, sigma^2) on the parameters; 0 gives"
        " the plain gradient, 0.2 is the default."
    )
  return value


# ----------------------------------------------------------------------------
# The transforms.


def noise_grad(
    grad_fn: GradFn,
    n: int = 25,
    *,
    sigma: float = 0.2,
    argnums: int = 1,
    mask: Mask = None,
    batch_size: Optional[int] = None,
    aggregate: _smoothing.Aggregate = "mean",
    stochastic: Optional[bool] = None,
) -> Callable[..., Any]:
  """NoiseGrad: averages explanations over models with noisy parameters.

  ``NG(x) = 1/n sum_j grad_fn(x, theta * eta_j)``, ``eta_j ~ N(1, sigma^2)``
  elementwise, where ``theta`` is the parameter pytree, the positional
  argument ``argnums`` of ``grad_fn``. The returned function takes a PRNG
  key first; sample ``j`` uses ``jax.random.split(key, n)[j]``.

  If ``grad_fn`` is itself stochastic (``grad_fn(key, *args)``, e.g.
  ``adapt_smooth(jax.grad(f))``), each parameter sample gets a fresh key for
  it, split off sample ``j``'s key: ``noise_grad(adapt_smooth(g))`` is the
  paper's A-NG (FusionGrad with AdaptGrad), ``n * n_inner`` gradient
  evaluations; see :func:`fusion_grad`.

  Args:
    grad_fn: a gradient function taking the parameters as a positional
      argument, e.g. ``jax.grad(lambda x, params: model(params, x))``; or a
      stochastic one ``grad_fn(key, x, params)``.
    n: the number of parameter samples.
    sigma: the standard deviation of the multiplicative noise ``N(1,
      sigma^2)``; 0 reproduces ``grad_fn``.
    argnums: which positional argument (after the key, for a stochastic
      ``grad_fn``) holds the parameters; 1 for ``grad_fn(x, params)``.
    mask: which parameter leaves get noise. None (default): every floating
      point leaf. A pytree of Python bools with the parameters' structure,
      or a prefix of it (``{'features': True, 'classifier': False}``); paths
      are compared as plain keys, so a nested dict fits an ``nnx.State``.
      Or a predicate called with each leaf's path as a tuple of plain keys
      (dict keys, attribute names, sequence indices), e.g. ``('classifier',
      'kernel')``, or ``('classifier', 'kernel', 'value')`` for an
      ``nnx.State``, returning a bool: ``lambda path: path[0] !=
      'classifier'`` leaves the classifier alone, as the NoiseGrad code does.
    batch_size: evaluate this many parameter samples at a time (bounded
      memory); None evaluates all n in one ``jax.vmap``; ``"auto"`` fits a
      memory budget, as in :func:`adapt_smooth`.
    aggregate: ``"mean"``, ``"mean_sq"`` or ``"var"``, as in
      :func:`adapt_smooth`.
    stochastic: whether ``grad_fn`` takes a leading key; None reads it from
      the signature.

  Returns:
    ``ng(key, *args, **kwargs)``: ``grad_fn``'s arguments with a leading
    key (``grad_fn``'s own signature if it already takes one).

  Raises:
    ValueError, TypeError: at build time, for n < 1, sigma < 0, a bad
      argnums, batch_size, aggregate or mask; at trace time, for a mask tree
      that does not match the parameters (naming the differing paths).

  Example:
    >>> import adaptgrad_jax as ag
    >>> f = lambda x, p: jnp.tanh(jnp.dot(p["w"], x) + p["b"])
    >>> params = {"w": jnp.array([1.0, -1.0]), "b": jnp.array(0.1)}
    >>> ng = jax.jit(ag.noise_grad(jax.grad(f), 8, sigma=0.2, mask={"w": True, "b": False}))
    >>> ng(jax.random.key(0), jnp.array([0.5, 0.2]), params).shape
    (2,)

  References:
    Bykov et al., "NoiseGrad: Enhancing Explanations by Introducing
    Stochasticity to Model Weights", AAAI 2022; Zhou et al. (AdaptGrad),
    NeurIPS 2025, Section 5.1.3 (NG, S-NG, A-NG).
  """
  stochastic = resolve_stochastic(grad_fn, stochastic)
  argnums = validate_argnums(grad_fn, argnums, stochastic)
  n = validate_count(n, "n", "it is the number of parameter samples (25 by default).")
  sigma = _validate_sigma(sigma)
  mask = validate_mask(mask)
  batch_size = validate_batch_size(batch_size)
  aggregate = validate_aggregate(aggregate)
  name = "noise_grad"

  def ng(key, *args, **kwargs):
    _, args = split_key_args((key,) + args, True, argnums, name)
    params = args[argnums]
    selected = select_leaves(params, mask)

    def at_sample(sample_key):
      if stochastic:
        param_key, inner_key = jax.random.split(sample_key)
      else:
        param_key = sample_key
      noisy = perturb_params(param_key, params, sigma, selected)
      new_args = replace_arg(args, argnums, noisy)
      if stochastic:
        return grad_fn(inner_key, *new_args, **kwargs), None
      return grad_fn(*new_args, **kwargs), None

    keys = _strategy.split_keys(key, n)
    (first, second), _ = map_samples(
        at_sample, keys, batch_size, lambda g: _smoothing._moments(g, aggregate)
    )
    like = jax.eval_shape(lambda k: at_sample(k)[0], keys[0])
    return _smoothing._finish(first, second, n, aggregate, like)

  if stochastic:
    return wrap_like(ng, grad_fn, name, True)
  return wrap_with_key(ng, grad_fn, name)


_SMOOTHERS = {
    "adapt_smooth": _smoothing.adapt_smooth,
    "smooth_grad": _smoothing.smooth_grad,
}


def fusion_grad(
    grad_fn: GradFn,
    m: int = 10,
    n: int = 10,
    *,
    input_smoother: Union[str, Callable[..., Any]] = "smooth_grad",
    smoother_kwargs: Optional[dict] = None,
    sigma: float = 0.2,
    param_argnums: int = 1,
    input_argnums: int = 0,
    mask: Mask = None,
    batch_size: Optional[int] = None,
    aggregate: _smoothing.Aggregate = "mean",
) -> Callable[..., Any]:
  """FusionGrad: NoiseGrad over an input smoother, ``m x n`` samples.

  ``noise_grad(input_smoother(grad_fn, n=n, argnums=input_argnums,
  **smoother_kwargs), m, sigma=sigma, argnums=param_argnums, ...)``: for each
  of ``m`` noisy copies of the parameters, ``n`` noisy copies of the input.
  With ``input_smoother="smooth_grad"`` (default) it is Bykov et al.'s
  FusionGrad and the AdaptGrad paper's S-NG; with ``"adapt_smooth"`` it is
  A-NG. The plain composition ``noise_grad(adapt_smooth(g), m)`` is the same
  function; this is the named convenience.

  Args:
    grad_fn: ``grad_fn(x, params)``, e.g. ``jax.grad(lambda x, p: ...)``.
    m: the number of parameter samples.
    n: the number of input samples per parameter sample.
    input_smoother: ``"smooth_grad"``, ``"adapt_smooth"``, those functions
      themselves, or any callable ``smoother(grad_fn, n=..., argnums=...,
      **smoother_kwargs)`` returning ``fn(key, *args)``.
    smoother_kwargs: further options of the input smoother, e.g.
      ``{"c": 0.95, "bounds": (lo, hi)}`` for AdaptGrad or ``{"alpha":
      0.15}`` for SmoothGrad.
    sigma: the parameter noise level, as in :func:`noise_grad`.
    param_argnums: the positional argument of ``grad_fn`` holding the
      parameters.
    input_argnums: the positional argument of ``grad_fn`` holding the input.
    mask, batch_size, aggregate: of the parameter samples, as in
      :func:`noise_grad` (pass the input smoother's own in
      ``smoother_kwargs``).

  Returns:
    ``fg(key, *args, **kwargs)``.

  Raises:
    ValueError, TypeError: an unknown smoother name, ``param_argnums ==
      input_argnums``, or any error of the two transforms it builds.

  Example:
    >>> import adaptgrad_jax as ag
    >>> f = lambda x, p: jnp.sum(jnp.sin(p * x))
    >>> a_ng = jax.jit(ag.fusion_grad(jax.grad(f), 4, 8, input_smoother="adapt_smooth"))
    >>> a_ng(jax.random.key(0), jnp.array([0.2, 0.7]), jnp.ones(2)).shape
    (2,)

  References:
    Bykov et al., "NoiseGrad: Enhancing Explanations by Introducing
    Stochasticity to Model Weights", AAAI 2022 (FusionGrad); Zhou et al.
    (AdaptGrad), NeurIPS 2025, Section 5.1.3 (S-NG, A-NG).
  """
  if isinstance(input_smoother, str):
    if input_smoother not in _SMOOTHERS:
      raise ValueError(
          f"input_smoother={input_smoother!r} is not a known smoother; use"
          f" one of {tuple(_SMOOTHERS)} or a callable smoother(grad_fn, n=...,"
          " argnums=...)."
      )
    input_smoother = _SMOOTHERS[input_smoother]
  if not callable(input_smoother):
    raise TypeError(
        f"input_smoother={input_smoother!r} must be 'smooth_grad',"
        " 'adapt_smooth' or a callable smoother(grad_fn, n=..., argnums=...)."
    )
  if smoother_kwargs is None:
    smoother_kwargs = {}
  if not isinstance(smoother_kwargs, dict):
    raise TypeError(f"smoother_kwargs={smoother_kwargs!r} must be a dict of options.")
  if param_argnums == input_argnums:
    raise ValueError(
        f"param_argnums={param_argnums!r} equals input_argnums: the parameters"
        " and the input must be different positional arguments of grad_fn,"
        " e.g. grad_fn(x, params) with input_argnums=0, param_argnums=1."
    )
  m = validate_count(m, "m", "it is the number of parameter samples.")
  n = validate_count(n, "n", "it is the number of input samples per parameter sample.")
  inner = input_smoother(grad_fn, n=n, argnums=input_argnums, **smoother_kwargs)
  outer = noise_grad(
      inner, m, sigma=sigma, argnums=param_argnums, mask=mask,
      batch_size=batch_size, aggregate=aggregate, stochastic=True,
  )
  name = getattr(grad_fn, "__name__", type(grad_fn).__name__)
  outer.__name__ = outer.__qualname__ = f"fusion_grad({name})"
  return outer
