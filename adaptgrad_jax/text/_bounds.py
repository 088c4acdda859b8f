"""AdaptGrad's data domain in embedding space, and the baselines of Integrated Gradients for tokens."""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

BASELINES = ("pad", "zero", "mask")


def _table(table: Any) -> np.ndarray:
  arr = np.asarray(table)
  if arr.ndim != 2 or arr.shape[0] < 2 or arr.shape[1] < 1:
    raise ValueError(f"table has shape {arr.shape}; pass the input embedding table (vocab_size, dim) with at least"
                     " two rows (e.g. model.embed.embedding.value).")
  if arr.dtype.kind != "f":
    raise TypeError(f"table has dtype {arr.dtype}; pass the floating-point embedding table.")
  if not np.all(np.isfinite(arr)):
    raise ValueError("table holds NaN or inf; the embedding table must be finite.")
  return arr


def embedding_bounds(
    table: Any,
    *,
    quantile: Optional[float] = None,
    min_width: Optional[float] = None,
) -> tuple[jax.Array, jax.Array]:
  """AdaptGrad's bounds in embedding space: the box spanned by the embedding table, per dimension.

  A token's embedding is one row of the table, so the data domain of the
  model's input embeddings is (at most) the convex hull of the rows; the box
  around it, ``lower_d = min_v table[v, d]`` and ``upper_d = max_v table[v, d]``
  over the whole vocabulary, is the default: every token lies inside it, so
  :func:`adaptgrad_jax.check_bounds` passes on any sequence, and AdaptGrad's
  noise keeps each noisy element inside it with probability at least ``c``.
  The bounds have shape ``(D,)`` and broadcast over a sequence ``(L, D)``:
  pass them to :func:`~adaptgrad_jax.adapt_smooth`,
  :func:`~adaptgrad_jax.smooth_grad` (``sigma = alpha * (upper - lower)`` per
  dimension), :func:`~adaptgrad_jax.out_of_range_rate` and ``check_bounds``.

  ``quantile=q`` takes the ``q`` and ``1 - q`` quantiles of each dimension
  instead (a tighter box that ignores a few outlying tokens). Tokens outside
  that box get NO AdaptGrad noise in the dimensions where they stick out
  (:func:`~adaptgrad_jax.adaptive_sigma` gives 0 outside the bounds) and fail
  ``check_bounds``; the default min / max box has no such tokens.

  A constant dimension (every token has the same value, ``lower == upper``)
  leaves AdaptGrad no room: its sigma would be 0 there, and the transforms
  refuse ``lower == upper``. It is an error, unless ``min_width`` widens
  every dimension narrower than ``min_width`` symmetrically to that width.

  Args:
    table: the input embedding table ``(vocab_size, D)``.
    quantile: None (min / max over the vocabulary, the default) or a level in
      ``[0, 0.5)``: per-dimension quantiles ``(q, 1 - q)``.
    min_width: widen narrower dimensions to this width (centred); None refuses
      constant dimensions.

  Returns:
    ``(lower, upper)``, each ``(D,)`` in the table's dtype.

  Raises:
    ValueError: a table that is not 2-D with two rows or more, non-finite
      values, a quantile outside ``[0, 0.5)``, a constant dimension without
      ``min_width`` (its index is named).

  Example:
    >>> from adaptgrad_jax import text
    >>> table = jnp.array([[0.0, -1.0], [2.0, 1.0], [1.0, 0.5]])
    >>> lo, hi = text.embedding_bounds(table)
    >>> lo.tolist(), hi.tolist()
    ([0.0, -1.0], [2.0, 1.0])
  """
  arr = _table(table)
  if quantile is None:
    lo, hi = arr.min(axis=0), arr.max(axis=0)
  else:
    if isinstance(quantile, bool) or not isinstance(quantile, (int, float, np.floating)) or not 0 <= quantile < 0.5:
      raise ValueError(f"quantile={quantile!r} must lie in [0, 0.5): the box is the (q, 1 - q) quantiles of each"
                       " dimension (e.g. 0.001); None uses the min and max over the vocabulary.")
    lo, hi = np.quantile(arr, [quantile, 1.0 - quantile], axis=0).astype(arr.dtype)
  if min_width is not None:
    if isinstance(min_width, bool) or not isinstance(min_width, (int, float, np.floating)) or not (
        np.isfinite(min_width) and min_width > 0):
      raise ValueError(f"min_width={min_width!r} must be a finite number > 0 (the narrowest box width).")
    centre, half = (lo + hi) / 2, np.maximum((hi - lo) / 2, min_width / 2)
    lo, hi = (centre - half).astype(arr.dtype), (centre + half).astype(arr.dtype)
  constant = np.flatnonzero(~(lo < hi))
  if constant.size:
    shown = ", ".join(str(int(d)) for d in constant[:8]) + (" ..." if constant.size > 8 else "")
    raise ValueError(
        f"table has {constant.size} constant dimension(s) (lower == upper = {float(lo[constant[0]]):.4g} in"
        f" dimension {shown}): AdaptGrad's sigma is 0 there (no room to add noise inside the box) and the"
        " transforms need lower < upper. Drop the dimension, or pass min_width=... to give it a box of that width.")
  return jnp.asarray(lo), jnp.asarray(hi)


def baseline_embedding(table: Any, kind: str, *, token_id: Optional[int] = None) -> jax.Array:
  """A token baseline for Integrated Gradients in embedding space: one vector ``(D,)``.

  It broadcasts over a sequence ``(L, D)``, so it is a valid ``baseline=`` of
  :func:`~adaptgrad_jax.integrated_gradients` (and the other path methods)
  for any sequence length: every token's path starts at the same vector.

  * ``"pad"``: the padding token's embedding (``token_id`` = the pad id).
  * ``"mask"``: the mask token's embedding (``token_id`` = e.g. BERT's ``[MASK]``).
  * ``"zero"``: the zero vector (not a token; it may lie outside the table's box).

  Args:
    table: the embedding table ``(vocab_size, D)``.
    kind: ``"pad"``, ``"mask"`` or ``"zero"``.
    token_id: the token's id, for ``"pad"`` and ``"mask"``.

  Returns:
    The baseline vector ``(D,)``.

  Example:
    >>> from adaptgrad_jax import text
    >>> text.baseline_embedding(jnp.arange(6.0).reshape(3, 2), "mask", token_id=2)
    Array([4., 5.], dtype=float32)
  """
  arr = _table(table)
  if kind not in BASELINES:
    raise ValueError(f"kind={kind!r} is not a token baseline; use one of {BASELINES}.")
  if kind == "zero":
    if token_id is not None:
      raise ValueError("kind='zero' takes no token_id.")
    return jnp.zeros(arr.shape[1], arr.dtype)
  if isinstance(token_id, bool) or not isinstance(token_id, (int, np.integer)) or not 0 <= token_id < arr.shape[0]:
    raise ValueError(f"kind={kind!r} needs token_id, the id of the {kind} token in [0, {arr.shape[0]}); got"
                     f" {token_id!r}.")
  return jnp.asarray(arr[int(token_id)])
