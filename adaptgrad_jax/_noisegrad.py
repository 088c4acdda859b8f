"""NoiseGrad: smoothing by multiplicative noise on the model parameters.

NoiseGrad (Bykov et al., AAAI 2022) perturbs the *model* instead of the
input: every parameter is multiplied by noise drawn from ``N(1, sigma^2)``
and the explanations of the perturbed models are averaged. FusionGrad adds
input noise too: it is ``noise_grad`` of ``smooth_grad`` (S-NG), and of
``adapt_smooth`` the AdaptGrad paper's A-NG (Zhou et al., Section 5.1.3).

The gradient function takes the parameters as a positional argument, e.g.
``grad_fn = jax.grad(lambda x, params: apply(params, x)[target])`` with
``argnums=1`` (the default) naming ``params``.
"""

from typing import Any, Callable, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from adaptgrad_jax import _memory
from adaptgrad_jax import _monte_carlo
from adaptgrad_jax import cpu
from adaptgrad_jax._pytree import check_scale_in_dtype, compute_dtype, replace_arg, short_repr
from adaptgrad_jax._typing import GradFn, PyTree
from adaptgrad_jax._wrapping import resolve_stochastic, split_key_args, validate_argnums
from adaptgrad_jax._wrapping import validate_choice, validate_count, validate_number, validate_stderr_option, wrap

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
  return jax.tree_util.keystr(path, simple=True, separator="/") or "<root>"


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
  key_paths = [p for p, _ in with_paths]
  paths = [plain_path(p) for p in key_paths]
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
            + ", ".join("/".join(map(str, p)) for p in unmatched[:8])
            + (" ..." if len(unmatched) > 8 else "")
        )
      if unused:
        parts.append(
            "mask entries matching no parameter: "
            + ", ".join("/".join(map(str, p)) or "<root>" for p in unused[:8])
            + (" ..." if len(unused) > 8 else "")
        )
      raise ValueError(
          "mask does not match the parameter tree (" + "; ".join(parts) + ")."
          " Build it from the parameters, e.g. jax.tree.map(lambda _: True,"
          " params), then set the leaves to leave alone to False; or pass a"
          " predicate on the path, e.g. mask=lambda path: path[0] !="
          " 'classifier'."
      )
  for path, leaf, chosen in zip(key_paths, leaves, selected):
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
  dtype = jnp.result_type(*[compute_dtype(leaf.dtype) for leaf in chosen])
  check_scale_in_dtype(sigma, "sigma", dtype, hint="NoiseGrad's default is 0.2; 0 gives the plain gradient.")
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
  value = validate_number(sigma, "sigma", "the standard deviation of the multiplicative noise"
                          " N(1, sigma^2) on the parameters (0.2 by default).")
  if isinstance(value, float) and not (np.isfinite(value) and value >= 0):
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
    batch_size: Any = None,
    aggregate: str = "mean",
    stochastic: Optional[bool] = None,
    return_stderr: Optional[bool] = None,
    cpu_rewrite: Optional[bool] = None,
) -> Callable[..., Any]:
  """NoiseGrad: averages explanations over models with noisy parameters.

  ``NG(x) = 1/n sum_j grad_fn(x, theta * eta_j)``, ``eta_j ~ N(1, sigma^2)``
  elementwise, where ``theta`` is the parameter pytree, the positional
  argument ``argnums`` of ``grad_fn``. The returned function takes a PRNG
  key first; sample ``j`` uses ``jax.random.split(key, n)[j]``.

  If ``grad_fn`` is itself stochastic (``grad_fn(key, *args)``, e.g.
  ``adapt_smooth(jax.grad(f), bounds=b)``), each parameter sample gets a
  fresh key for it, split off sample ``j``'s key: FusionGrad (Bykov et al.),
  the paper's S-NG, is ``noise_grad(smooth_grad(g, 0.2, n_inner, bounds=b),
  n)`` and A-NG is ``noise_grad(adapt_smooth(g, 0.95, n_inner, bounds=b),
  n)``, ``n * n_inner`` gradient evaluations.

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
    stochastic: whether ``grad_fn`` takes a leading key; None uses its mark
      (see :func:`is_stochastic`).
    return_stderr: True returns an :class:`Estimate` ``(value, stderr,
      num_samples)``, the standard error from the spread of the n parameter
      samples (each with its own inner noise when ``grad_fn`` is stochastic,
      so for A-NG it covers both sources of noise). None (default): an
      Estimate if and only if ``grad_fn`` returns one (only its value is
      used, and ``num_samples`` then counts the inner gradient evaluations).
      False: the map alone.
    cpu_rewrite: the CPU switch (:mod:`adaptgrad_jax.cpu`).

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
  n = validate_count(n, "n", "it is the number of parameter samples (25 by default).",
                     maximum=_monte_carlo.MAX_SAMPLES)
  sigma = _validate_sigma(sigma)
  mask = validate_mask(mask)
  batch_size = _memory.validate_batch_size(batch_size)
  aggregate = validate_choice(aggregate, "aggregate", _monte_carlo.AGGREGATES)
  cpu_rewrite = cpu.validate_switch(cpu_rewrite)
  return_stderr = validate_stderr_option(return_stderr)
  name = "noise_grad"

  def ng(key, *args, **kwargs):
    _, args = split_key_args((key,) + args, True, argnums, name)
    params = args[argnums]
    selected = select_leaves(params, mask)
    if not any(selected):
      raise ValueError(
          f"{name}: no parameter gets noise: the parameters (positional argument"
          f" argnums={argnums}) are {short_repr(params) if not jax.tree.leaves(params) else 'a pytree'}"
          f" with {len(selected)} leaves, none of them a floating-point array"
          f"{' selected by mask' if mask is not None else ''}, so NoiseGrad would"
          " return the plain gradient; pass the model's parameters (argnums names"
          " them) or a mask that selects some."
      )

    inner_used = []

    def at_sample(sample_key):
      if stochastic:
        param_key, inner_key = jax.random.split(sample_key)
      else:
        param_key = sample_key
      noisy = perturb_params(param_key, params, sigma, selected)
      new_args = replace_arg(args, argnums, noisy)
      out = grad_fn(inner_key, *new_args, **kwargs) if stochastic else grad_fn(*new_args, **kwargs)
      grad, _, used = _monte_carlo.split_estimate(out)
      inner_used.append(used)
      return jax.tree.map(lambda g: jnp.asarray(g)[None], grad), None if used is None else used[None]

    keys = _monte_carlo.sample_keys(key, n, cpu_rewrite)
    def wanted():  # known once at_sample has been traced: does grad_fn return an Estimate?
      return _monte_carlo.stderr_wanted(return_stderr, inner_used[0] is not None, name, own_samples=True)

    sums = _monte_carlo.sample_sums(at_sample, keys, batch_size=batch_size,
                                    names=lambda: _monte_carlo.needed_sums(aggregate, wanted()),
                                    cpu_rewrite=cpu_rewrite)
    result = _monte_carlo.finish(sums, aggregate, stderr=wanted())
    if wanted() and sums.extras is not None and inner_used[-1] is not None:
      result = result._replace(num_samples=jnp.sum(sums.extras).astype(jnp.int32))
    return result

  return wrap(ng, grad_fn, name, is_stochastic_result=True, adds_key=not stochastic)
