"""What the token-sequence ports (`_gpt2.py`, `_bert.py`) share: input checks, masks, attention.

Conventions. Token ids are integer arrays ``(B, L)`` (or ``(L,)`` for one
sequence); input embeddings ``(B, L, D)`` (or ``(L, D)``). An attention mask is
a boolean array of the ids' shape, True at real tokens and False at padding
(integer 0 / 1 masks, as `transformers` tokenizers return them, are accepted
and compared with 0; float masks are refused). Padded positions are keys that
no query attends to; their own outputs are computed but meaningless.
"""

from __future__ import annotations

import math
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

__all__ = ["positions_from_mask"]


def check_ids(ids: ArrayLike, vocab_size: int) -> jax.Array:
  """Integer ids ``(B, L)`` or ``(L,)``; out-of-vocabulary ids refused when the values are concrete.

  Under `jax.jit` the values are unknown: an id outside ``[0, vocab_size)``
  then gives Flax's out-of-range embedding (NaN, or a wrapped row for a
  negative id), so check the ids before tracing.
  """
  concrete = not isinstance(ids, jax.core.Tracer)  # checked before jnp.asarray, which traces constants under jit
  ids = jnp.asarray(ids)
  if not jnp.issubdtype(ids.dtype, jnp.integer):
    raise TypeError(f"ids must be integer token ids, got dtype {ids.dtype}; pass the tokenizer's input_ids")
  if ids.ndim not in (1, 2):
    raise ValueError(f"ids must have shape (batch, length) or (length,), got shape {tuple(ids.shape)}")
  if ids.shape[-1] == 0:
    raise ValueError("ids is an empty sequence (length 0); give at least one token")
  if concrete:
    values = np.asarray(ids)
    bad = (values < 0) | (values >= vocab_size)
    if bad.any():
      raise ValueError(
        f"ids holds {int(bad.sum())} token id(s) outside the vocabulary [0, {vocab_size}), e.g. "
        f"{int(values[bad][0])}; map them to a valid id (e.g. the tokenizer's unk or pad token) or build the "
        "model with a larger vocab_size"
      )
  return ids


def check_embeddings(embeds: ArrayLike, hidden_size: int, max_positions: int) -> tuple[jax.Array, bool]:
  """Returns ``(embeds as (B, L, D), whether a batch axis was given)``."""
  embeds = jnp.asarray(embeds)
  if embeds.ndim not in (2, 3) or embeds.shape[-1] != hidden_size:
    raise ValueError(
      f"embeds must have shape (batch, length, {hidden_size}) or (length, {hidden_size}), got shape "
      f"{tuple(embeds.shape)}; make them with model.embed(ids)"
    )
  if not jnp.issubdtype(embeds.dtype, jnp.floating):
    raise TypeError(f"embeds must be floating point, got dtype {embeds.dtype}; make them with model.embed(ids)")
  length = embeds.shape[-2]
  if length == 0:
    raise ValueError("embeds is an empty sequence (length 0); give at least one token")
  if length > max_positions:
    raise ValueError(
      f"the sequence has {length} tokens but the model has {max_positions} position embeddings; truncate it to "
      f"{max_positions} tokens (or split it into windows)"
    )
  batched = embeds.ndim == 3
  return (embeds if batched else embeds[None]), batched


def check_mask(mask: Optional[ArrayLike], shape: tuple[int, int], batched: bool,
               name: str = "attention_mask") -> Optional[jax.Array]:
  """A boolean ``(B, L)`` mask (None stays None); ``shape`` is ``(B, L)`` of the batched input."""
  if mask is None:
    return None
  mask = jnp.asarray(mask)
  want = shape if batched else shape[1:]
  if tuple(mask.shape) != tuple(want):
    raise ValueError(
      f"{name} has shape {tuple(mask.shape)} but the tokens have shape {tuple(want)}; give one entry per token "
      "(True at real tokens, False at padding)"
    )
  if mask.dtype != jnp.bool_:
    if not jnp.issubdtype(mask.dtype, jnp.integer):
      raise TypeError(f"{name} must be boolean (True at real tokens) or 0 / 1 integers, got dtype {mask.dtype}")
    mask = mask != 0
  return mask if batched else mask[None]


def check_positions(position_ids: Optional[ArrayLike], shape: tuple[int, int], batched: bool,
                    max_positions: int, name: str = "position_ids") -> jax.Array:
  """``(B, L)`` integer indices (positions, token types); the default ``arange(L)`` as in `transformers`."""
  if position_ids is None:
    return jnp.broadcast_to(jnp.arange(shape[1]), shape)
  concrete = not isinstance(position_ids, jax.core.Tracer)
  positions = jnp.asarray(position_ids)
  want = shape if batched else shape[1:]
  if tuple(positions.shape) != tuple(want) or not jnp.issubdtype(positions.dtype, jnp.integer):
    hint = "; e.g. models.positions_from_mask(attention_mask)" if name == "position_ids" else ""
    raise ValueError(
      f"{name} must be integers of shape {tuple(want)} (one per token), got {positions.dtype} of shape "
      f"{tuple(positions.shape)}{hint}"
    )
  if concrete:
    values = np.asarray(position_ids)
    if values.min() < 0 or values.max() >= max_positions:
      raise ValueError(f"{name} must lie in [0, {max_positions}), got values in [{values.min()}, "
                       f"{values.max()}]")
  return positions if batched else positions[None]


def positions_from_mask(attention_mask: ArrayLike) -> jax.Array:
  """Position ids that count real tokens only: ``max(cumsum(mask) - 1, 0)``.

  `transformers` numbers positions ``0 .. L-1`` whatever the mask, which is
  right for right-padded batches (real tokens come first) and is what the
  ports do by default. For a left-padded batch pass ``position_ids=
  positions_from_mask(attention_mask)``: the first real token then gets
  position 0, as in `transformers`' ``generate``; padded positions get 0
  (they are masked anyway).

  Args:
    attention_mask: ``(B, L)`` or ``(L,)``, True (or 1) at real tokens.

  Returns:
    int32 position ids of the mask's shape.

  Example:
    >>> import jax.numpy as jnp
    >>> from adaptgrad_jax import models
    >>> models.positions_from_mask(jnp.array([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]]))
    Array([[0, 0, 0, 1, 2],
           [0, 1, 2, 3, 4]], dtype=int32)
  """
  mask = jnp.asarray(attention_mask)
  if mask.dtype != jnp.bool_ and not jnp.issubdtype(mask.dtype, jnp.integer):
    raise TypeError(f"attention_mask must be boolean or 0 / 1 integers, got dtype {mask.dtype}")
  return jnp.maximum(jnp.cumsum((mask != 0).astype(jnp.int32), axis=-1) - 1, 0)


def attention_mask_4d(mask: Optional[jax.Array], length: int, batch: int, *, causal: bool) -> Optional[jax.Array]:
  """``(B, 1, L, L)`` boolean: query q may attend to key k (padding of keys, and k <= q if causal)."""
  allowed = None
  if causal:
    allowed = jnp.tril(jnp.ones((length, length), jnp.bool_))[None, None]
  if mask is not None:
    keys = mask[:, None, None, :]
    allowed = keys if allowed is None else allowed & keys
  if allowed is not None:
    allowed = jnp.broadcast_to(allowed, (batch, 1, length, length))
  return allowed


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, allowed: Optional[jax.Array]) -> jax.Array:
  """Softmax attention of ``(B, L, H, d)`` queries, keys and values; returns ``(B, L, H, d)``.

  Masked scores are set to the dtype's lowest finite value, as `transformers`'
  eager attention adds it: a query with no allowed key (a left pad in a causal
  model) attends uniformly instead of giving NaN, and masked keys get weight
  exactly 0 otherwise.
  """
  scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(q.shape[-1])
  if allowed is not None:
    scores = jnp.where(allowed, scores, jnp.finfo(scores.dtype).min)
  weights = jax.nn.softmax(scores, axis=-1)
  return jnp.einsum("bhqk,bkhd->bqhd", weights, v)


def split_heads(x: jax.Array, num_heads: int) -> jax.Array:
  b, length, dim = x.shape
  return x.reshape(b, length, num_heads, dim // num_heads)


def merge_heads(x: jax.Array) -> jax.Array:
  b, length, heads, head_dim = x.shape
  return x.reshape(b, length, heads * head_dim)
