"""Gradient smoothing as function transforms: AdaptGrad, SmoothGrad, and their common core.

Each transform takes a gradient function (e.g. ``jax.grad(f)``) and returns a
pure function with a leading PRNG key argument, like optax's
``make_perturbed_fun``: ``smoothed(key, *args, **kwargs)``. Inside, the key is
split into one key per noise sample, positional argument ``argnums`` is
perturbed with Gaussian noise, the gradient function is evaluated on the noisy
copies with :func:`jax.vmap`, and the results are aggregated.
"""

import functools
import inspect
from typing import Any, Callable, Literal, Optional, Union

import jax
import jax.numpy as jnp

from adaptgrad_jax import _sigma
from adaptgrad_jax import _strategy
from adaptgrad_jax._bounds import validate_bounds
from adaptgrad_jax._typing import Bounds, GradFn, KeyArray, PyTree

Aggregate = Literal["mean", "mean_sq", "var"]
BatchSize = Union[None, int, str, "_strategy.AutoBatchSize"]
AGGREGATES = ("mean", "mean_sq", "var")


# ----------------------------------------------------------------------------
# Validation at build time.


def validate_grad_fn(grad_fn, argnums: int, name: str = "grad_fn") -> None:
  """Checks that ``grad_fn`` is callable and has a positional ``argnums``."""
  if not callable(grad_fn):
    raise TypeError(
        f"{name}={grad_fn!r} is not callable; pass a gradient function such as"
        " jax.grad(f)."
    )
  if isinstance(argnums, bool) or not isinstance(argnums, int) or argnums < 0:
    raise ValueError(
        f"argnums={argnums!r} must be a non-negative int: the index of the"
        f" positional argument of {name} to perturb (0 for the input)."
    )
  try:
    params = inspect.signature(grad_fn).parameters.values()
  except (TypeError, ValueError):  # builtins, some C callables
    return
  kinds = [p.kind for p in params]
  if inspect.Parameter.VAR_POSITIONAL in kinds:
    return
  positional = sum(
      k in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
      for k in kinds
  )
  if argnums >= positional:
    raise ValueError(
        f"argnums={argnums} is out of range: {name} takes {positional}"
        f" positional argument(s), so argnums must be < {positional}."
    )


def validate_count(value, name: str, hint: str) -> int:
  """Checks a sample or step count (an int >= 1)."""
  if isinstance(value, bool) or not isinstance(value, int):
    try:
      as_int = int(value)
    except (TypeError, ValueError):
      as_int = None
    if as_int is None or as_int != value:
      raise TypeError(f"{name}={value!r} must be an int >= 1; {hint}")
    value = as_int
  if value < 1:
    raise ValueError(f"{name}={value!r} must be >= 1; {hint}")
  return value


def validate_batch_size(batch_size):
  """Checks ``batch_size``: None, an int >= 1, ``"auto"`` or an `AutoBatchSize`."""
  if batch_size is None or isinstance(batch_size, _strategy.AutoBatchSize):
    return batch_size
  if isinstance(batch_size, str):
    if batch_size == "auto":
      return batch_size
    raise ValueError(
        f"batch_size={batch_size!r} is not supported; pass an int >= 1, None"
        " (all samples in one vmap) or 'auto' (the largest chunk that fits the"
        f" memory budget, ${_strategy.MEMORY_BUDGET_ENV} or a share of the"
        " device's memory)."
    )
  return validate_count(
      batch_size,
      "batch_size",
      "it is the number of noise samples evaluated at once (None for all of"
      " them in one vmap, 'auto' to fit a memory budget).",
  )


def validate_aggregate(aggregate) -> str:
  if aggregate not in AGGREGATES:
    raise ValueError(
        f"aggregate={aggregate!r} is not supported; use 'mean' (SmoothGrad),"
        " 'mean_sq' (SmoothGrad-squared) or 'var' (VarGrad)."
    )
  return aggregate


# ----------------------------------------------------------------------------
# Noise.


def _broadcast_to_tree(x: PyTree, value: PyTree) -> PyTree:
  structure = jax.tree.structure(x)
  if jax.tree.structure(value) == structure:
    return value
  return jax.tree.unflatten(structure, [value] * structure.num_leaves)


def sample_noise(key: KeyArray, x: PyTree, sigma: PyTree) -> PyTree:
  """Draws ``eps ~ N(0, diag(sigma^2))`` with ``x``'s structure and shapes.

  A single-array ``x`` uses ``key`` directly; a pytree splits it over leaves.
  The noise is in at least float32 (half precision inputs are perturbed in
  float32 and rounded once).
  """
  leaves, structure = jax.tree.flatten(x)
  sigmas = jax.tree.leaves(_broadcast_to_tree(x, sigma))
  keys = [key] if len(leaves) == 1 else list(jax.random.split(key, len(leaves)))
  eps = []
  for k, leaf, s in zip(keys, leaves, sigmas):
    leaf = jnp.asarray(leaf)
    dtype = _sigma.compute_dtype(leaf.dtype)
    eps.append(jnp.asarray(s, dtype) * jax.random.normal(k, leaf.shape, dtype))
  return jax.tree.unflatten(structure, eps)


def add_noise(x: PyTree, eps: PyTree) -> PyTree:
  """``x + eps`` in the noise's precision, rounded back to ``x``'s dtypes."""
  return jax.tree.map(
      lambda leaf, e: (jnp.asarray(leaf).astype(e.dtype) + e).astype(
          jnp.asarray(leaf).dtype
      ),
      x, eps,
  )


# ----------------------------------------------------------------------------
# Evaluation and aggregation over samples.


def _moments(outputs: PyTree, aggregate: str) -> tuple[PyTree, PyTree]:
  """Sums (and sums of squares) over the leading sample axis."""
  acc = jax.tree.map(lambda g: _sigma.compute_dtype(g.dtype), outputs)
  first = jax.tree.map(lambda g, d: jnp.sum(g.astype(d), axis=0), outputs, acc)
  if aggregate == "mean":
    return first, None
  second = jax.tree.map(
      lambda g, d: jnp.sum(jnp.square(g.astype(d)), axis=0), outputs, acc
  )
  return first, second


def _tree_add(a, b):
  if a is None:
    return None
  return jax.tree.map(jnp.add, a, b)


def map_samples(
    fn: Callable[[KeyArray], Any],
    keys: KeyArray,
    batch_size: Any,
    reduce: Callable[[Any], Any],
) -> tuple[Any, Any]:
  """Evaluates ``fn`` on every key, ``batch_size`` keys at a time, and reduces.

  ``fn(key) -> (value, extra)``. ``reduce`` turns values stacked along a
  leading axis into partial sums (a pytree that adds up); ``extra`` is
  stacked over all keys in order. The execution strategy comes from
  :func:`adaptgrad_jax._strategy.plan`: ``batch_size=None`` (or >= the number
  of keys) is one :func:`jax.vmap`; otherwise a :func:`jax.lax.scan` over
  chunks of ``batch_size`` keys carries the running sums. On CPU, either
  way evaluates ``fn`` through :func:`adaptgrad_jax._strategy.rewrite_for_cpu`
  (convolutions in the forms XLA:CPU runs fastest, Threefry bits unrolled;
  the keys come from :func:`adaptgrad_jax._strategy.split_keys`). Memory then
  grows with ``batch_size``, not with the number of keys, and each key sees
  the same computation whatever the chunking. ``"auto"`` or an
  ``AutoBatchSize`` is first turned into the largest chunk that fits the
  memory budget.
  """
  n = keys.shape[0]
  batch_size = _strategy.resolve_batch_size(fn, keys, batch_size)
  plan = _strategy.plan(n, batch_size)

  def chunk_sums(chunk_keys):
    values, extra = jax.vmap(fn)(chunk_keys)
    return reduce(values), extra

  # Outside the scan XLA lays out the kernels itself; inside it needs them canonical.
  entry, in_scan = chunk_sums, chunk_sums
  if plan.rewrite_for_cpu:
    entry = _strategy.rewrite_for_cpu(chunk_sums, canonical_kernels=False)
    in_scan = _strategy.rewrite_for_cpu(chunk_sums)
  if plan.strategy == "vmap":
    return entry(keys)
  batch_size = plan.batch_size
  full, rest = divmod(n, batch_size)
  chunks = keys[: full * batch_size].reshape((full, batch_size) + keys.shape[1:])
  first_sums, first_extra = entry(chunks[0])

  def body(carry, chunk_keys):
    sums, extra = in_scan(chunk_keys)
    return jax.tree.map(jnp.add, carry, sums), extra

  sums, extras = jax.lax.scan(body, first_sums, chunks[1:])
  extras = jax.tree.map(
      lambda head, tail: jnp.concatenate(
          [head, tail.reshape((-1,) + tail.shape[2:])]
      ),
      first_extra, extras,
  )
  if rest:
    rest_sums, rest_extra = entry(keys[full * batch_size :])
    sums = jax.tree.map(jnp.add, sums, rest_sums)
    extras = jax.tree.map(
        lambda a, b: jnp.concatenate([a, b]), extras, rest_extra
    )
  return sums, extras


def _finish(first, second, count, aggregate, like):
  """Turns sums into the requested statistic, in the dtypes of ``like``."""
  mean = jax.tree.map(lambda s: s / count, first)
  if aggregate == "mean":
    out = mean
  elif aggregate == "mean_sq":
    out = jax.tree.map(lambda s: s / count, second)
  else:  # var: E[g^2] - E[g]^2, clamped at 0 against rounding.
    out = jax.tree.map(
        lambda s2, m: jnp.maximum(s2 / count - jnp.square(m), 0), second, mean
    )
  return jax.tree.map(lambda o, g: o.astype(g.dtype), out, like)


def _signature_with_key(fn: Callable[..., Any]) -> Optional[inspect.Signature]:
  key = inspect.Parameter("key", inspect.Parameter.POSITIONAL_ONLY)
  try:
    params = list(inspect.signature(fn).parameters.values())
  except (TypeError, ValueError):
    params = [
        inspect.Parameter("args", inspect.Parameter.VAR_POSITIONAL),
        inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD),
    ]
  params = [
      p.replace(kind=inspect.Parameter.POSITIONAL_ONLY)
      if p.kind == inspect.Parameter.POSITIONAL_ONLY else p
      for p in params
  ]
  return inspect.Signature([key] + params)


def wrap_with_key(wrapper: Callable[..., Any], wrapped: Callable[..., Any], name: str):
  """Copies ``wrapped``'s metadata onto ``wrapper`` with a leading ``key``.

  ``functools.wraps`` alone would set ``__wrapped__``, and ``jax.jit`` would
  then read ``wrapped``'s signature (without the key).
  """
  functools.update_wrapper(wrapper, wrapped)
  del wrapper.__wrapped__
  wrapper.__signature__ = _signature_with_key(wrapped)
  wrapped_name = getattr(wrapped, "__name__", type(wrapped).__name__)
  wrapper.__name__ = f"{name}({wrapped_name})"
  wrapper.__qualname__ = wrapper.__name__
  return wrapper


def replace_arg(args: tuple, argnums: int, value: Any) -> tuple:
  return args[:argnums] + (value,) + args[argnums + 1 :]


def check_call_args(args: tuple, argnums: int, name: str) -> None:
  if len(args) <= argnums:
    raise TypeError(
        f"{name} perturbs positional argument argnums={argnums}, but was"
        f" called with {len(args)} positional argument(s) after the key; pass"
        " the input positionally: smoothed(key, x, ...)."
    )


def gaussian_smooth(
    grad_fn: GradFn,
    sigma_fn: Callable[[PyTree], PyTree],
    n: int = 50,
    *,
    batch_size: BatchSize = None,
    argnums: int = 0,
    has_aux: bool = False,
    aggregate: Aggregate = "mean",
    include_clean: bool = False,
    name: str = "gaussian_smooth",
) -> Callable[..., Any]:
  """Monte Carlo Gaussian convolution of a gradient function (Eqs. 2-5, 11).

  The building block of :func:`adapt_smooth` and :func:`smooth_grad`: the
  noise scale comes from ``sigma_fn(x)``, any rule you like (a scalar, a
  per-channel array or a per-element array with ``x``'s shape).

  Args:
    grad_fn: the function to smooth, e.g. ``jax.grad(f)``.
    sigma_fn: maps the argument being perturbed to its noise scale.
    n: the number of noise samples N.
    batch_size: evaluate the samples this many at a time (bounded memory);
      None evaluates all n in one vmap, ``"auto"`` fits a memory budget. The
      result does not depend on it.
    argnums: which positional argument of ``grad_fn`` to perturb.
    has_aux: ``grad_fn`` returns ``(gradient, aux)``; the smoothed function
      then returns ``(smoothed_gradient, aux)`` with aux stacked over the
      samples along a new leading axis (n, or n + 1 with the clean sample
      last when ``include_clean``).
    aggregate: ``"mean"`` (SmoothGrad), ``"mean_sq"`` (the mean of squared
      gradients, SmoothGrad-squared) or ``"var"`` (their variance, VarGrad).
    include_clean: also evaluate ``grad_fn`` on the unperturbed input and
      count it as one more sample (the released AdaptGrad code does this).
    name: used in the returned function's ``__name__``.

  Returns:
    ``smoothed(key, *args, **kwargs)``: ``grad_fn``'s arguments with a
    leading PRNG key.
  """
  validate_grad_fn(grad_fn, argnums)
  n = validate_count(n, "n", "it is the number of noise samples; the paper uses 50.")
  batch_size = validate_batch_size(batch_size)
  aggregate = validate_aggregate(aggregate)
  if not callable(sigma_fn):
    raise TypeError(f"sigma_fn={sigma_fn!r} must map the input to its noise scale.")

  def split_aux(out):
    return out if has_aux else (out, None)

  def smoothed(key, *args, **kwargs):
    check_call_args(args, argnums, name)
    x = args[argnums]
    sigma = sigma_fn(x)

    def at_sample(sample_key):
      noisy = add_noise(x, sample_noise(sample_key, x, sigma))
      return split_aux(grad_fn(*replace_arg(args, argnums, noisy), **kwargs))

    keys = _strategy.split_keys(key, n)
    (first, second), aux = map_samples(
        at_sample, keys, batch_size, lambda g: _moments(g, aggregate)
    )
    count = n
    like = jax.eval_shape(lambda k: at_sample(k)[0], keys[0])
    if include_clean:
      clean, clean_aux = split_aux(grad_fn(*args, **kwargs))
      c_first, c_second = _moments(jax.tree.map(lambda g: g[None], clean), aggregate)
      first, second = _tree_add(first, c_first), _tree_add(second, c_second)
      count += 1
      if has_aux:
        aux = jax.tree.map(lambda a, b: jnp.concatenate([a, b[None]]), aux, clean_aux)
    result = _finish(first, second, count, aggregate, like)
    return (result, aux) if has_aux else result

  return wrap_with_key(smoothed, grad_fn, name)


def adapt_smooth(
    grad_fn: GradFn,
    c: float = 0.95,
    n: int = 50,
    *,
    bounds: Bounds = (0.0, 1.0),
    sigma_rule: _sigma.SigmaRule = "two_sided",
    batch_size: BatchSize = None,
    argnums: int = 0,
    has_aux: bool = False,
    aggregate: Aggregate = "mean",
    include_clean: bool = False,
) -> Callable[..., Any]:
  r"""AdaptGrad: smooths a gradient function with per-element adaptive noise.

  Returns a function with ``grad_fn``'s arguments and a leading PRNG key that
  computes Eq. 11,

  ``G_ag(x) = 1/N sum_j grad_fn(x + eps_j)``, ``eps_j ~ N(0, diag(sigma^2))``,

  where ``sigma_i`` is :func:`adaptive_sigma` of ``x_i``: proportional to the
  distance from ``x_i`` to the nearer bound, so that noisy samples leave the
  data domain with probability at most ``1 - c`` (SmoothGrad's fixed sigma
  sends 12.6% of ImageNet pixel samples out of range, Section 3.2). Elements
  on a bound get no noise.

  It composes like any JAX function: ``jax.jit`` it, ``jax.vmap`` it over a
  batch of ``(keys, xs)``, take ``jax.grad`` through it (the noise is
  reparameterised, ``x + sigma(x) * z``, so second-order uses such as attacks
  on explanations see the dependence of sigma on x), pass pytree arguments,
  or nest it inside other transforms.

  Args:
    grad_fn: the gradient function to smooth, e.g. ``jax.grad(f)`` for a
      scalar ``f`` (one example, no batch dimension).
    c: the confidence level in (0, 1); the paper recommends 0.95.
    n: the number of noise samples N; the paper uses 50.
    bounds: ``(x_min, x_max)`` of the data the model sees, *after*
      normalisation; each a scalar, an array broadcastable to the argument
      (e.g. per channel, shape ``(3,)`` for NHWC) or a pytree like it.
    sigma_rule: ``"two_sided"`` (default, the released code's rule),
      ``"eq13"`` (Eq. 13 as printed) or ``"exact"`` (solves Eq. 14); see
      :func:`adaptive_sigma`.
    batch_size: evaluate this many noise samples at a time to bound memory;
      None (default) evaluates all n in one vmap; ``"auto"`` (or
      :func:`auto_batch_size` with an explicit budget) picks the largest chunk
      that fits the memory budget. The result does not depend on it (sample j
      always gets the same noise, with the default threefry keys).
    argnums: which positional argument of ``grad_fn`` to perturb.
    has_aux: ``grad_fn`` returns ``(gradient, aux)`` (as ``jax.grad(f,
      has_aux=True)``); aux comes back stacked over the samples.
    aggregate: ``"mean"``, ``"mean_sq"`` (SmoothGrad-squared) or ``"var"``
      (VarGrad), as Captum's NoiseTunnel.
    include_clean: count the clean gradient as one more sample (parity with
      the released code, which starts its sum from it).

  Returns:
    ``smoothed(key, *args, **kwargs)``, the smoothed gradient in the dtype
    ``grad_fn`` returns (the input's dtype for ``jax.grad``).

  Raises:
    ValueError, TypeError: at build time, for c outside (0, 1), n < 1,
      batch_size < 1, lower >= upper, argnums out of range, an unknown rule
      or aggregate, or a non-callable grad_fn.

  Example:
    >>> import adaptgrad_jax as ag
    >>> f = lambda x: jnp.sum(jnp.sin(x))
    >>> smoothed = jax.jit(ag.adapt_smooth(jax.grad(f), 0.95, 50))
    >>> smoothed(jax.random.key(0), jnp.full((3,), 0.5)).shape
    (3,)

  References:
    Zhou et al., "Rethinking the Principle of Gradient Smooth Methods in Model
    Explanation" (AdaptGrad), NeurIPS 2025, Eqs. 11-14.
  """
  c = _sigma.validate_confidence(c)
  sigma_rule = _sigma.validate_rule(sigma_rule)
  bounds = validate_bounds(bounds)
  sigma_fn = functools.partial(
      _sigma.adaptive_sigma, c=c, bounds=bounds, rule=sigma_rule
  )
  return gaussian_smooth(
      grad_fn, sigma_fn, n,
      batch_size=batch_size, argnums=argnums, has_aux=has_aux,
      aggregate=aggregate, include_clean=include_clean, name="adapt_smooth",
  )


def smooth_grad(
    grad_fn: GradFn,
    alpha: float = 0.2,
    n: int = 50,
    *,
    bounds: Bounds = (0.0, 1.0),
    sigma: Optional[PyTree] = None,
    batch_size: BatchSize = None,
    argnums: int = 0,
    has_aux: bool = False,
    aggregate: Aggregate = "mean",
    include_clean: bool = False,
) -> Callable[..., Any]:
  """SmoothGrad: smooths a gradient function with isotropic Gaussian noise.

  ``G_sg(x) = 1/N sum_j grad_fn(x + eps_j)``, ``eps_j ~ N(0, sigma^2 I)``
  (Eq. 2) with ``sigma = alpha * (x_max - x_min)`` (Eq. 6), or an absolute
  ``sigma`` as Captum's ``stdevs`` and PAIR saliency's ``stdev_spread``
  offer. Noisy samples are not clipped to the bounds: that is SmoothGrad.

  Args:
    grad_fn: the gradient function to smooth, e.g. ``jax.grad(f)``.
    alpha: the noise level; 0.2 as recommended by Smilkov et al. Ignored
      when ``sigma`` is given.
    n: the number of noise samples N.
    bounds: ``(x_min, x_max)`` used for ``sigma = alpha (x_max - x_min)``;
      scalars, per-channel arrays or pytrees.
    sigma: an absolute noise scale (scalar, broadcastable array or pytree)
      overriding ``alpha``.
    batch_size, argnums, has_aux, aggregate, include_clean: as in
      :func:`adapt_smooth`.

  Returns:
    ``smoothed(key, *args, **kwargs)``.

  Example:
    >>> import adaptgrad_jax as ag
    >>> f = lambda x: jnp.sum(x ** 2)
    >>> sg = ag.smooth_grad(jax.grad(f), 0.2, 10)
    >>> sg(jax.random.key(0), jnp.ones(4)).shape
    (4,)

  References:
    Smilkov et al., "SmoothGrad: removing noise by adding noise", 2017;
    Zhou et al. (AdaptGrad), NeurIPS 2025, Eqs. 2 and 6.
  """
  if sigma is None:
    fixed = _sigma.smoothgrad_sigma(alpha, bounds=bounds)
  else:
    for leaf in jax.tree.leaves(sigma):
      if not isinstance(leaf, jax.core.Tracer) and not jnp.all(jnp.asarray(leaf) >= 0):
        raise ValueError(
            f"sigma={sigma!r} is a standard deviation and must be >= 0."
        )
    fixed = sigma
  return gaussian_smooth(
      grad_fn, lambda x: fixed, n,
      batch_size=batch_size, argnums=argnums, has_aux=has_aux,
      aggregate=aggregate, include_clean=include_clean, name="smooth_grad",
  )
