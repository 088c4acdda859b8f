"""Token models as functions of their input embeddings: the split, the inputs and the targets.

Tokens are discrete, so gradients and noise live in embedding space: a model
``logits = model(ids)`` is cut at its embedding lookup into
``forward(embed(ids), mask)`` (:class:`EmbeddingSplit`), and the targets below
are scalar functions of the embeddings ``f(embeds, ids, mask, ...)`` that every
transform of :mod:`adaptgrad_jax` differentiates (``argnums=0``).

Padding. Every target replaces the rows of ``embeds`` where ``mask`` is False
by the clean embeddings of ``ids`` (``jnp.where(mask, embeds, embed(ids))``,
the clean rows a constant): whatever noise or path a transform puts on a padded
row is discarded before the model sees it, and the gradient there is exactly 0,
so padded positions score exactly 0 under every method.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

OUTPUTS = ("logit", "log_softmax", "softmax")


def _is_concrete(x) -> bool:
  return not isinstance(x, jax.core.Tracer)


def check_token_ids(ids: Any, vocab_size: int, name: str = "ids") -> None:
  """Raises unless ``ids`` are integer token ids in ``[0, vocab_size)`` of a non-empty sequence; eager.

  Inside ``jax.jit`` an embedding lookup clamps an out-of-range id silently,
  so call this on concrete ids before explaining them (:meth:`EmbeddingSplit.embeddings`
  does). Traced ids are not checked.

  Args:
    ids: token ids, shape (L,) or (B, L).
    vocab_size: the number of rows of the embedding table.
    name: the argument's name in the message.

  Raises:
    TypeError: ids that are not integers.
    ValueError: an empty sequence, or an id outside ``[0, vocab_size)``.

  Example:
    >>> from adaptgrad_jax import text
    >>> text.check_token_ids(jnp.array([1, 5, 2]), vocab_size=6)
  """
  if not _is_concrete(ids):
    return
  arr = np.asarray(ids)
  if arr.dtype.kind not in "iu":
    raise TypeError(f"{name} has dtype {arr.dtype}; token ids must be integers (e.g. jnp.int32).")
  if arr.ndim not in (1, 2):
    raise ValueError(f"{name} has shape {arr.shape}; pass one sequence (L,) or a padded batch (B, L).")
  if arr.shape[-1] == 0 or arr.size == 0:
    raise ValueError(f"{name} has shape {arr.shape}: an empty sequence has no token to explain; pass at least one"
                     " token (pad a batch to its longest sequence with text.pad_batch).")
  bad = (arr < 0) | (arr >= vocab_size)
  if bad.any():
    first = tuple(int(i) for i in np.argwhere(bad)[0])
    raise ValueError(f"{name}{list(first)} = {int(arr[first])} is not a token id of this model: ids must lie in"
                     f" [0, vocab_size={vocab_size}); check the tokenizer matches the model's vocabulary.")


def check_mask(mask: Any, shape: tuple[int, ...], name: str = "mask") -> jax.Array:
  """``mask`` as a boolean array of ``shape`` (None: all True); raises for a wrong shape or dtype."""
  if mask is None:
    return jnp.ones(shape, bool)
  m = jnp.asarray(mask)
  if m.shape != tuple(shape):
    raise ValueError(f"{name} has shape {m.shape} but the tokens have shape {tuple(shape)}; pass one boolean per"
                     " token (True for a real token, False for padding), e.g. ids != pad_id.")
  if m.dtype != jnp.bool_:
    if not (jnp.issubdtype(m.dtype, jnp.integer) or jnp.issubdtype(m.dtype, jnp.floating)):
      raise TypeError(f"{name} has dtype {m.dtype}; pass booleans (True for a real token).")
    if _is_concrete(m) and not bool(jnp.all((m == 0) | (m == 1))):
      raise ValueError(f"{name} holds values other than 0 and 1; pass booleans (True for a real token).")
    m = m != 0
  return m


@dataclasses.dataclass(frozen=True)
class EmbeddingSplit:
  """A token model cut at its embedding lookup: the model is ``forward(embed(ids), mask)``.

  Both functions work on ONE sequence (no batch axis); ``jax.vmap`` them for
  a batch. Build one with :func:`split_model` (any two functions),
  :func:`nnx_split` (a Flax NNX model) or :func:`eqx_split` (an Equinox model).

  Attributes:
    embed: ``embed(ids) -> embeds``: ids ``(L,)`` to embeddings ``(L, D)``
      (the lookup only; positions and layer norms belong to ``forward``).
    forward: ``forward(embeds, mask) -> output``: embeddings ``(L, D)`` and a
      boolean mask ``(L,)`` (True for real tokens) to the model's output for
      the sequence: logits ``(K,)`` for a classifier, ``(L, V)`` for a decoder.
    vocab_size: the number of token ids, for :func:`check_token_ids`.
    max_length: the longest sequence the model takes (its positions), or None.
  """

  embed: Callable[[jax.Array], jax.Array]
  forward: Callable[[jax.Array, jax.Array], jax.Array]
  vocab_size: int
  max_length: Optional[int] = None

  def embeddings(self, ids: Any) -> jax.Array:
    """The clean embeddings of ``ids`` ``(L,)`` or ``(B, L)``, after :func:`check_token_ids` (eager ids)."""
    check_token_ids(ids, self.vocab_size)
    ids = jnp.asarray(ids)
    if self.max_length is not None and ids.shape[-1] > self.max_length:
      raise ValueError(f"ids have length {ids.shape[-1]} but the model takes at most max_length={self.max_length}"
                       " tokens; shorten the sequence.")
    return jax.vmap(self.embed)(ids) if ids.ndim == 2 else self.embed(ids)

  def __call__(self, ids: Any, mask: Any = None) -> jax.Array:
    """The model on ids: ``forward(embed(ids), mask)`` for one sequence."""
    ids = jnp.asarray(ids)
    return self.forward(self.embed(ids), check_mask(mask, ids.shape))


def _validate_size(value, name, hint, optional=False):
  if value is None and optional:
    return None
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f"{name}={value!r} must be a positive int: {hint}")
  return int(value)


def split_model(
    embed: Callable[[jax.Array], jax.Array],
    forward: Callable[..., jax.Array],
    *,
    vocab_size: int,
    max_length: Optional[int] = None,
    batched: bool = False,
) -> EmbeddingSplit:
  """An :class:`EmbeddingSplit` from any two functions: the embedding lookup and the rest of the model.

  Args:
    embed: ``embed(ids)``: token ids to their embeddings (the lookup only).
    forward: ``forward(embeds, mask)``: embeddings and the boolean attention
      mask to the model's output (``forward(embeds, attention_mask=mask)``
      is called when ``batched``, the convention of the library's text
      models and Hugging Face's ``inputs_embeds``).
    vocab_size: the number of rows of the embedding table.
    max_length: the model's longest sequence (positions), or None.
    batched: the functions take a batch axis (``(B, L)`` ids, ``(B, L, D)``
      embeddings); the split adds and removes a batch of one.

  Returns:
    An :class:`EmbeddingSplit` working on one sequence.

  Example:
    >>> from adaptgrad_jax import text
    >>> table = jnp.arange(12.0).reshape(6, 2)
    >>> split = text.split_model(lambda ids: table[ids], lambda e, m: jnp.sum(e * m[:, None], 0), vocab_size=6)
    >>> split(jnp.array([1, 2, 0]), jnp.array([True, True, False]))
    Array([6., 8.], dtype=float32)
  """
  if not callable(embed) or not callable(forward):
    raise TypeError("embed and forward must be callables: embed(ids) -> embeddings, forward(embeds, mask) -> output.")
  vocab_size = _validate_size(vocab_size, "vocab_size", "the number of rows of the embedding table.")
  max_length = _validate_size(max_length, "max_length", "the model's longest sequence, or None.", optional=True)
  if batched:
    batched_embed, batched_forward = embed, forward

    def embed(ids):  # noqa: F811  pylint: disable=function-redefined
      return batched_embed(ids[None])[0]

    def forward(embeds, mask):  # noqa: F811  pylint: disable=function-redefined
      return batched_forward(embeds[None], attention_mask=mask[None])[0]

  return EmbeddingSplit(embed, forward, vocab_size, max_length)


def nnx_split(
    model: Any,
    *,
    vocab_size: int,
    max_length: Optional[int] = None,
    embed: str = "embed",
    forward: str = "forward_from_embeddings",
) -> EmbeddingSplit:
  """An :class:`EmbeddingSplit` of a Flax NNX model with an embedding method and a forward-from-embeddings method.

  The model is split once with ``nnx.split`` (in evaluation mode:
  :func:`adaptgrad_jax.flax_adapters.eval_view`) and merged inside pure
  functions, so the split jits and vmaps. Its methods take a batch:
  ``model.embed(ids)`` with ids ``(B, L)`` and
  ``model.forward_from_embeddings(embeds, attention_mask=mask)``, the
  convention of the library's text models. The model's state is captured
  when the split is built: rebuild it after training.

  Args:
    model: an ``nnx.Module``.
    vocab_size: the number of rows of its embedding table.
    max_length: its longest sequence, or None.
    embed: the name of the embedding method.
    forward: the name of the method taking embeddings and ``attention_mask``.

  Returns:
    An :class:`EmbeddingSplit`.

  Example:
    >>> from adaptgrad_jax import text
    >>> from flax import nnx
    >>> model = text.TinyEncoder(text.TinyEncoderConfig(vocab_size=10, max_length=8, num_layers=1), rngs=nnx.Rngs(0))
    >>> split = text.nnx_split(model, vocab_size=10)
    >>> jax.eval_shape(split, jnp.array([3, 4, 5])).shape  # logits of one sequence
    (4,)
  """
  from flax import nnx  # pylint: disable=import-outside-toplevel
  from adaptgrad_jax.flax_adapters import eval_view  # pylint: disable=import-outside-toplevel

  for name, value in (("embed", embed), ("forward", forward)):
    if not (isinstance(value, str) and callable(getattr(model, value, None))):
      raise TypeError(f"{name}={value!r} is not a method of {type(model).__name__}; pass the names of its"
                      " embedding lookup and of its forward pass from embeddings.")
  graphdef, state = nnx.split(eval_view(model))

  def embed_fn(ids):
    return getattr(nnx.merge(graphdef, state), embed)(ids)

  def forward_fn(embeds, attention_mask):
    return getattr(nnx.merge(graphdef, state), forward)(embeds, attention_mask=attention_mask)

  return split_model(embed_fn, forward_fn, vocab_size=vocab_size, max_length=max_length, batched=True)


def eqx_split(
    model: Any,
    *,
    embed: Callable[[Any, jax.Array], jax.Array],
    forward: Callable[[Any, jax.Array, jax.Array], jax.Array],
    vocab_size: int,
    max_length: Optional[int] = None,
) -> EmbeddingSplit:
  """An :class:`EmbeddingSplit` of an Equinox model, given its embedding function and forward pass.

  Args:
    model: an ``eqx.Module``, used in inference mode
      (:func:`adaptgrad_jax.equinox_adapters.inference_model`).
    embed: ``embed(model, ids) -> embeds`` for one sequence, e.g.
      ``lambda m, ids: jax.vmap(m.embedding)(ids)``.
    forward: ``forward(model, embeds, mask) -> output`` for one sequence.
    vocab_size: the number of rows of the embedding table.
    max_length: the longest sequence, or None.

  Returns:
    An :class:`EmbeddingSplit`.

  Example:
    >>> import equinox as eqx
    >>> from adaptgrad_jax import text
    >>> emb = eqx.nn.Embedding(10, 4, key=jax.random.key(0))
    >>> split = text.eqx_split(emb, embed=lambda m, ids: jax.vmap(m)(ids),
    ...                        forward=lambda m, e, mask: jnp.sum(e * mask[:, None]), vocab_size=10)
    >>> split.embeddings(jnp.array([1, 2])).shape
    (2, 4)
  """
  from adaptgrad_jax.equinox_adapters import inference_model  # pylint: disable=import-outside-toplevel

  if not callable(embed) or not callable(forward):
    raise TypeError("embed and forward must be callables embed(model, ids) and forward(model, embeds, mask).")
  model = inference_model(model)
  return split_model(lambda ids: embed(model, ids), lambda e, m: forward(model, e, m),
                     vocab_size=vocab_size, max_length=max_length)


# ----------------------------------------------------------------------------
# Inputs.


class TeacherForcing(NamedTuple):
  """A prompt and its continuation as one sequence for teacher forcing.

  Attributes:
    ids: ``(L,)`` the prompt, then the continuation, then padding.
    mask: ``(L,)`` True on the prompt and the continuation.
    start: the index of the first continuation token (the prompt's length).
  """

  ids: jax.Array
  mask: jax.Array
  start: jax.Array


def _as_ids(seq, name):
  arr = np.asarray(seq)
  if arr.dtype.kind not in "iu" and not (arr.size == 0):
    raise TypeError(f"{name} has dtype {arr.dtype}; token ids must be integers.")
  if arr.ndim != 1:
    raise ValueError(f"{name} has shape {arr.shape}; pass one sequence of token ids (L,).")
  if arr.size == 0:
    raise ValueError(f"{name} is empty: an empty sequence has no token to explain; pass at least one token.")
  return arr.astype(np.int32)


def teacher_forcing(
    prompt: Sequence[int],
    continuation: Sequence[int],
    *,
    split: EmbeddingSplit,
    length: Optional[int] = None,
    pad_id: int = 0,
) -> TeacherForcing:
  """Puts a prompt and a given continuation into one (padded) sequence for :func:`continuation_fn`.

  Args:
    prompt: the context's token ids (at least one).
    continuation: the token ids whose log-probability is explained (at least one).
    split: the decoder's :class:`EmbeddingSplit` (for the vocabulary and its
      ``max_length``, the context).
    length: pad to this length (e.g. the longest in a batch); default no padding.
    pad_id: the id of the padding token.

  Returns:
    A :class:`TeacherForcing` ``(ids, mask, start)``.

  Raises:
    ValueError: an empty prompt or continuation, ids outside the vocabulary, a
      prompt plus continuation longer than the context (``max_length``) or
      than ``length``.

  Example:
    >>> from adaptgrad_jax import text
    >>> split = text.split_model(lambda i: jnp.zeros((i.shape[0], 2)), lambda e, m: e, vocab_size=9, max_length=8)
    >>> tf = text.teacher_forcing([5, 6], [7], split=split, length=4)
    >>> tf.ids.tolist(), tf.mask.tolist(), int(tf.start)
    ([5, 6, 7, 0], [True, True, True, False], 2)
  """
  p, c = _as_ids(prompt, "prompt"), _as_ids(continuation, "continuation")
  check_token_ids(p, split.vocab_size, "prompt")
  check_token_ids(c, split.vocab_size, "continuation")
  total = len(p) + len(c)
  if split.max_length is not None and total > split.max_length:
    raise ValueError(f"the prompt ({len(p)} tokens) and continuation ({len(c)} tokens) need {total} positions but the"
                     f" model's context is max_length={split.max_length}; shorten the prompt or the continuation.")
  if length is None:
    length = total
  length = _validate_size(length, "length", "the padded sequence length.")
  if total > length:
    raise ValueError(f"length={length} is shorter than the prompt plus continuation ({total} tokens); pass"
                     f" length >= {total}.")
  check_token_ids(np.array([pad_id]), split.vocab_size, "pad_id")
  ids = np.full(length, pad_id, np.int32)
  ids[:total] = np.concatenate([p, c])
  return TeacherForcing(jnp.asarray(ids), jnp.asarray(np.arange(length) < total), jnp.int32(len(p)))


def pad_batch(
    sequences: Sequence[Sequence[int]],
    *,
    pad_id: int = 0,
    length: Optional[int] = None,
    vocab_size: Optional[int] = None,
) -> tuple[jax.Array, jax.Array]:
  """Pads sequences of different lengths on the right into ``(ids, mask)`` of shape ``(B, L)``.

  Args:
    sequences: lists (or 1-D arrays) of token ids, each non-empty.
    pad_id: the padding token's id.
    length: the padded length; default the longest sequence's.
    vocab_size: if given, every id is checked to lie in ``[0, vocab_size)``.

  Returns:
    ``(ids, mask)``: int32 ids and a boolean mask, True on real tokens.

  Raises:
    ValueError: no sequence, an empty sequence, a sequence longer than ``length``,
      ids outside the vocabulary.

  Example:
    >>> from adaptgrad_jax import text
    >>> ids, mask = text.pad_batch([[4, 5, 6], [7]], pad_id=0)
    >>> ids.tolist(), mask.tolist()
    ([[4, 5, 6], [7, 0, 0]], [[True, True, True], [True, False, False]])
  """
  seqs = [_as_ids(s, f"sequences[{i}]") for i, s in enumerate(sequences)]
  if not seqs:
    raise ValueError("sequences is empty; pass at least one sequence of token ids.")
  longest = max(len(s) for s in seqs)
  length = longest if length is None else _validate_size(length, "length", "the padded length.")
  if longest > length:
    i = max(range(len(seqs)), key=lambda j: len(seqs[j]))
    raise ValueError(f"sequences[{i}] has {len(seqs[i])} tokens, more than length={length}; pass a larger length.")
  ids = np.full((len(seqs), length), pad_id, np.int32)
  for i, s in enumerate(seqs):
    ids[i, :len(s)] = s
  if vocab_size is not None:
    check_token_ids(ids, vocab_size, "sequences")
  mask = np.arange(length)[None, :] < np.array([len(s) for s in seqs])[:, None]
  return jnp.asarray(ids), jnp.asarray(mask)


# ----------------------------------------------------------------------------
# Targets: scalar functions of the embeddings.


def _masked_embeddings(split: EmbeddingSplit, embeds, ids, mask):
  """``embeds`` with its padded rows replaced by the clean embeddings of ``ids`` (a constant)."""
  embeds = jnp.asarray(embeds)
  ids = jnp.asarray(ids)
  if embeds.ndim != 2:
    raise ValueError(f"embeds has shape {embeds.shape}; pass the embeddings of ONE sequence, (L, D) (jax.vmap the"
                     " explainer over a batch).")
  if ids.shape != embeds.shape[:1]:
    raise ValueError(f"ids has shape {ids.shape} but embeds has shape {embeds.shape}; pass the ids (L,) the"
                     " embeddings came from.")
  if embeds.shape[0] == 0:
    raise ValueError("embeds is an empty sequence (L = 0): there is no token to explain; pass at least one token.")
  mask = check_mask(mask, ids.shape)
  clean = jax.lax.stop_gradient(split.embed(ids)).astype(embeds.dtype)
  return jnp.where(mask[:, None], embeds, clean), mask


def _validate_output(output):
  if output not in OUTPUTS:
    raise ValueError(f"output={output!r} must be one of {OUTPUTS}.")
  return output


def classifier_fn(split: EmbeddingSplit, *, output: str = "logit") -> Callable[..., jax.Array]:
  """A sequence classifier's score of a target class as a function of the input embeddings.

  ``f(embeds, ids, mask, target) = output(forward(embeds', mask))[target]``,
  where ``embeds'`` has the padded rows of ``embeds`` replaced by the clean
  embeddings of ``ids`` (so padding gets no noise and a gradient of exactly 0).

  Args:
    split: the model's :class:`EmbeddingSplit`; ``forward`` returns logits ``(K,)``.
    output: ``"logit"`` (default), ``"log_softmax"`` or ``"softmax"``.

  Returns:
    ``f(embeds, ids, mask, target)`` for one sequence: embeddings ``(L, D)``,
    ids ``(L,)``, mask ``(L,)`` (None: no padding) and an int class; a scalar.
    Explain it with any transform, e.g. ``ag.adapt_smooth(jax.grad(f), 0.95,
    n, bounds=text.embedding_bounds(table))(key, embeds, ids, mask, target)``.

  Example:
    >>> from adaptgrad_jax import text
    >>> table = jnp.eye(4)
    >>> split = text.split_model(lambda i: table[i], lambda e, m: e.sum(0) * 2.0, vocab_size=4)
    >>> f = text.classifier_fn(split)
    >>> ids = jnp.array([1, 2, 0])
    >>> jax.grad(f)(table[ids], ids, jnp.array([True, True, False]), 1)[:, 1]  # the padded row scores 0
    Array([2., 2., 0.], dtype=float32)
  """
  output = _validate_output(output)

  def f(embeds, ids, mask, target):
    e, m = _masked_embeddings(split, embeds, ids, mask)
    logits = jnp.asarray(split.forward(e, m))
    if logits.ndim != 1:
      raise ValueError(f"the classifier's forward returned shape {logits.shape} for one sequence; it must return"
                       " logits (K,) (use continuation_fn for a decoder's (L, V) logits).")
    if isinstance(target, (int, np.integer)) and not 0 <= int(target) < logits.shape[0]:
      raise ValueError(f"target={target} is out of range for {logits.shape[0]} classes.")
    if output == "log_softmax":
      logits = jax.nn.log_softmax(logits)
    elif output == "softmax":
      logits = jax.nn.softmax(logits)
    return logits[target]

  return f


def continuation_fn(split: EmbeddingSplit, *, per_token: bool = False) -> Callable[..., jax.Array]:
  """A decoder's log-probability of a given continuation under teacher forcing, as a function of the embeddings.

  For a causal language model whose ``forward`` returns next-token logits
  ``(L, V)`` (row ``t`` predicts token ``t + 1``):
  ``log p(continuation | prompt) = sum_{t >= start, mask[t]} log_softmax(logits[t - 1])[ids[t]]``.
  The sequence comes from :func:`teacher_forcing`. Padded rows are replaced by
  their clean embeddings, as in :func:`classifier_fn`.

  Per generated token: with ``per_token=True`` the function returns the vector
  ``(L,)`` of each position's log-probability (0 outside the continuation), and
  ``jax.jacrev`` of it is the matrix of output tokens x input tokens x
  embedding; :func:`token_scores` reduces it to ``(L, L)``, rows the output
  positions (``start`` on), columns the input tokens. A smoothing transform
  applies to ``jax.jacrev(f)`` as to ``jax.grad(f)``.

  Args:
    split: the decoder's :class:`EmbeddingSplit`.
    per_token: return the per-position log-probabilities ``(L,)`` instead of their sum.

  Returns:
    ``f(embeds, ids, mask, start)``: a scalar (or ``(L,)`` with ``per_token``).

  Example:
    >>> from adaptgrad_jax import text
    >>> table = jax.random.normal(jax.random.key(0), (9, 3))
    >>> w = jax.random.normal(jax.random.key(1), (3, 9))
    >>> causal = lambda e, m: jnp.cumsum(e * m[:, None], axis=0) @ w  # row t sees tokens <= t
    >>> split = text.split_model(lambda i: table[i], causal, vocab_size=9, max_length=8)
    >>> tf = text.teacher_forcing([1, 2], [3, 4], split=split, length=5)
    >>> x = split.embeddings(tf.ids)
    >>> jac = jax.jit(jax.jacrev(text.continuation_fn(split, per_token=True)))(x, tf.ids, tf.mask, tf.start)
    >>> m = text.token_scores(jac, x, tf.mask, reduction="grad_x_input")
    >>> m.shape, bool(jnp.all(m[3, 3:] == 0))  # token 3 depends on tokens 0..2 only
    ((5, 5), True)
  """
  per_token = bool(per_token)

  def f(embeds, ids, mask, start):
    e, m = _masked_embeddings(split, embeds, ids, mask)
    logits = jnp.asarray(split.forward(e, m))
    length = e.shape[0]
    if logits.ndim != 2 or logits.shape[0] != length:
      raise ValueError(f"the decoder's forward returned shape {logits.shape} for a sequence of {length} tokens; it"
                       " must return next-token logits (L, vocab_size).")
    if isinstance(start, (int, np.integer)) and not 1 <= int(start) < length:
      raise ValueError(f"start={start} must lie in [1, {length}): the continuation needs a prompt of at least one"
                       " token before it and at least one token itself.")
    logp = jax.nn.log_softmax(logits[:-1].astype(jnp.promote_types(logits.dtype, jnp.float32)), axis=-1)
    picked = jnp.take_along_axis(logp, ids[1:, None], axis=-1)[:, 0]
    t = jnp.arange(1, length)
    valid = (t >= start) & m[1:]
    per = jnp.concatenate([jnp.zeros((1,), picked.dtype), jnp.where(valid, picked, 0.0)])
    return per if per_token else jnp.sum(per)

  return f
