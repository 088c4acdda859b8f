"""Token scores: an attribution over embeddings ``(L, D)`` reduced to one number per token, and batches."""

from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

from adaptgrad_jax._monte_carlo import Estimate
from adaptgrad_jax.text._embedding import check_mask

REDUCTIONS = ("grad_x_input", "l2", "sum")


def token_scores(
    attribution: Any,
    embeddings: Optional[jax.Array] = None,
    mask: Optional[jax.Array] = None,
    *,
    reduction: str = "grad_x_input",
) -> Any:
  r"""Reduces an attribution over the embedding axis to one score per token; padded tokens score exactly 0.

  * ``"grad_x_input"``: ``sum_d g[t, d] * x[t, d]``, the gradient (or a
    smoothed gradient) times the token's embedding (needs ``embeddings``):
    Gradient x Input per token, S-GI / A-GI with a smoothed gradient.
  * ``"l2"``: ``||g[t, :]||_2``, the norm of the gradient (saliency per token;
    non-negative).
  * ``"sum"``: ``sum_d a[t, d]``, for attributions that already include the
    input, such as Integrated Gradients (whose sum over all tokens is then
    ``f(x) - f(baseline)``) or :func:`~adaptgrad_jax.gradient_x_input`.

  The attribution may have leading axes (``(..., L, D)``), e.g. the output
  tokens of a continuation's Jacobian; ``mask`` ``(L,)`` (or shaped like the
  scores) selects the input tokens.

  Standard errors. Given an :class:`~adaptgrad_jax.Estimate` (a transform
  built with ``return_stderr=True``), the result is an Estimate of the token
  scores whose ``stderr`` is a conservative bound that holds whatever the
  correlation between a token's elements (Minkowski's inequality):
  ``sum_d |x_d| se_d`` for ``"grad_x_input"``, ``sum_d se_d`` for ``"sum"``,
  and for ``"l2"`` ``sqrt(sum_d se_d^2)``, which bounds the root mean square
  error of the norm (``| ||G^|| - ||G|| | <= ||G^ - G||``).

  Args:
    attribution: ``(..., L, D)``, or an Estimate of it.
    embeddings: ``(L, D)`` (or ``(..., L, D)``), for ``"grad_x_input"``.
    mask: booleans ``(L,)``, True on real tokens; None: no padding.
    reduction: ``"grad_x_input"``, ``"l2"`` or ``"sum"``.

  Returns:
    Scores ``(..., L)`` (an Estimate of them for an Estimate), exactly 0 on padding.

  Raises:
    ValueError: an unknown reduction, a map that is not ``(..., L, D)``,
      embeddings or a mask of the wrong shape.

  Example:
    >>> from adaptgrad_jax import text
    >>> g = jnp.array([[3.0, 4.0], [1.0, 0.0], [5.0, 5.0]])
    >>> x = jnp.array([[1.0, 1.0], [2.0, 0.0], [1.0, 1.0]])
    >>> text.token_scores(g, x, jnp.array([True, True, False]))
    Array([7., 2., 0.], dtype=float32)
    >>> text.token_scores(g, mask=jnp.array([True, True, False]), reduction="l2")
    Array([5., 1., 0.], dtype=float32)
  """
  if reduction not in REDUCTIONS:
    raise ValueError(f"reduction={reduction!r} is not a token reduction; use 'grad_x_input' (sum of gradient x"
                     " embedding), 'l2' (norm of the gradient) or 'sum' (for IG and other maps that include the"
                     " input).")
  est = isinstance(attribution, Estimate)
  value = attribution.value if est else attribution
  value = jnp.asarray(value)
  if value.ndim < 2:
    raise ValueError(f"attribution has shape {value.shape}; pass a map over the embeddings, (L, D) or (..., L, D).")
  x = None
  if reduction == "grad_x_input":
    if embeddings is None:
      raise ValueError("reduction='grad_x_input' needs embeddings=, the (L, D) embeddings the gradient was taken"
                       " at; or use reduction='l2' for the gradient alone.")
    x = jnp.asarray(embeddings)
    try:
      jnp.broadcast_shapes(x.shape, value.shape)
      ok = x.shape[-2:] == value.shape[-2:]
    except ValueError:
      ok = False
    if not ok:
      raise ValueError(f"embeddings has shape {x.shape} but the attribution has {value.shape}; pass the (L, D)"
                       " embeddings of the explained sequence.")
  score_shape = value.shape[:-1]
  if mask is None:
    keep = jnp.ones(score_shape[-1:], bool)
  else:
    keep = jnp.asarray(mask)
    if keep.shape != score_shape and keep.shape != score_shape[-1:]:
      raise ValueError(f"mask has shape {keep.shape} but the token scores have shape {score_shape}; pass one"
                       f" boolean per token, shape {score_shape[-1:]}.")
    keep = check_mask(keep, keep.shape)
  dtype = jnp.promote_types(value.dtype, jnp.float32)

  def reduce(v):
    v = v.astype(dtype)
    if reduction == "grad_x_input":
      out = jnp.sum(v * x.astype(dtype), axis=-1)
    elif reduction == "l2":
      out = jnp.sqrt(jnp.sum(v * v, axis=-1))
    else:
      out = jnp.sum(v, axis=-1)
    return jnp.where(keep, out, 0.0).astype(value.dtype)

  scores = reduce(value)
  if not est:
    return scores
  se = jnp.asarray(attribution.stderr).astype(dtype)
  if reduction == "grad_x_input":
    bound = jnp.sum(se * jnp.abs(x.astype(dtype)), axis=-1)
  elif reduction == "l2":
    bound = jnp.sqrt(jnp.sum(se * se, axis=-1))
  else:
    bound = jnp.sum(se, axis=-1)
  return Estimate(scores, jnp.where(keep, bound, 0.0).astype(value.dtype), attribution.num_samples)


def explain_batch(
    explain: Callable[..., Any],
    key: Optional[jax.Array],
    *args: Any,
    batch_size: Optional[int] = None,
) -> Any:
  """Applies a one-sequence explainer to a padded batch, ``batch_size`` sequences at a time.

  ``explain(key_i, *args_i)`` (or ``explain(*args_i)`` when ``key`` is None)
  for every row ``i`` of the batched ``args`` (e.g. embeddings ``(B, L, D)``,
  ids ``(B, L)``, masks ``(B, L)``, targets ``(B,)``), with ``key_i =
  jax.random.split(key, B)[i]``. ``batch_size=None`` vmaps over all B at once;
  an int runs ``jax.lax.map`` over chunks of that many sequences, so memory
  is bounded by ``batch_size`` (times the explainer's own samples, which its
  own ``batch_size`` bounds). The result does not depend on ``batch_size``.

  Args:
    explain: a function of one sequence, e.g. ``ag.adapt_smooth(jax.grad(f), ...)``.
    key: a PRNG key, or None for a deterministic explainer.
    *args: arrays with a leading batch axis (the same B).
    batch_size: sequences per chunk; None for one vmap.

  Returns:
    The stacked results, leading axis B.

  Example:
    >>> from adaptgrad_jax import text
    >>> out = text.explain_batch(lambda k, x: x * 2, jax.random.key(0), jnp.ones((5, 3)), batch_size=2)
    >>> out.shape
    (5, 3)
  """
  sizes = {jnp.shape(a)[0] for a in jax.tree.leaves(args)}
  if len(sizes) != 1:
    raise ValueError(f"the batched arguments have different leading sizes {sorted(sizes)}; pass one row per sequence.")
  (n,) = sizes
  if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
    raise ValueError(f"batch_size={batch_size!r} must be a positive int (sequences at a time) or None.")
  if key is None:
    fn, xs = (lambda a: explain(*a)), args
  else:
    fn, xs = (lambda a: explain(a[0], *a[1:])), (jax.random.split(key, n),) + tuple(args)
  if batch_size is None or batch_size >= n:
    return jax.vmap(fn)(xs)
  return jax.lax.map(fn, xs, batch_size=batch_size)
