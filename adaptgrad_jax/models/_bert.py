"""A BERT-style encoder classifier (`transformers`' ``BertForSequenceClassification``) in Flax NNX.

Architecture: word, position and token-type embeddings summed and normalised
(``embeddings.LayerNorm``), post-LN encoder blocks (``LN(x + attn(x))``, then
``LN(x + output(gelu(intermediate(x))))``, with the exact, erf GELU),
bidirectional self-attention, a pooler (``tanh(dense(h[:, 0]))``, the first
token's final state) and a linear ``classifier`` on the pooled vector. No
dropout: the port computes the model in evaluation mode.

Explaining tokens. ``model.embed(ids)`` returns the *word* embeddings ``(B,
L, D)`` (rows of ``word_embeddings``); ``model.forward_from_embeddings(embeds,
attention_mask)`` adds the position and token-type embeddings, normalises,
and returns the logits ``(B, num_labels)``, exactly as `transformers` treats
``inputs_embeds``, so gradients with respect to ``embeds`` equal its gradients
with respect to ``inputs_embeds``. ``model(ids, attention_mask)`` is the
composition. One sequence ``(L,)`` / ``(L, D)`` without a batch axis is
accepted too (logits ``(num_labels,)``).

Padding. ``attention_mask`` is boolean ``(B, L)``, True at real tokens
(integer 0 / 1 masks are accepted); padded tokens are never attended to, so
they cannot change the logits and get a zero gradient. The pooler reads the
first token, so pad on the right, as BERT's tokenizers do (left padding would
pool a padding token). Positions are ``0 .. L-1`` by default, as in
`transformers`; ``token_type_ids`` default to 0 (a single segment).

Weights. Attribute paths mirror `transformers`' names (``bert.embeddings.
word_embeddings``, ``bert.encoder.layer.0.attention.self.query``, ``...
attention.output.LayerNorm``, ``... intermediate.dense``, ``bert.pooler.dense``,
``classifier``), all ``nn.Linear`` / ``nn.Embedding`` / ``nn.LayerNorm``, so a
state dict loads with no renaming but the dropped ``position_ids`` /
``token_type_ids`` buffers of older checkpoints (`_from_transformers`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Optional

import jax
import jax.numpy as jnp
from flax import nnx
from jax.typing import ArrayLike

from adaptgrad_jax.models import _loading
from adaptgrad_jax.models import _sequence
from adaptgrad_jax.models._loading import build_model

__all__ = ["BERT_BASE", "BERT_TINY", "BertConfig", "BertForSequenceClassification", "BertLayer", "bert"]

_INIT = nnx.initializers.normal(0.02)  # transformers' initializer_range


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """The hyperparameters of a BERT-style classifier (`transformers`' ``BertConfig`` names).

  The defaults are BERT-base (uncased vocabulary) with two labels.
  ``BERT_TINY`` is a test-size preset.

  Attributes:
    vocab_size: number of tokens.
    hidden_size: width D.
    num_hidden_layers: number of encoder blocks.
    num_attention_heads: heads per block (must divide ``hidden_size``).
    intermediate_size: the MLP's hidden width.
    max_position_embeddings: number of position embeddings (the longest sequence).
    type_vocab_size: number of token types (segments).
    layer_norm_eps: the LayerNorms' epsilon.
    num_labels: number of logits of the classifier.
  """

  vocab_size: int = 30522
  hidden_size: int = 768
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  intermediate_size: int = 3072
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  num_labels: int = 2

  def __post_init__(self):
    for f in dataclasses.fields(self):
      value = getattr(self, f.name)
      if f.name != "layer_norm_eps" and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise ValueError(f"BertConfig {f.name}={value!r} must be a positive int")
    if self.hidden_size % self.num_attention_heads:
      raise ValueError(f"BertConfig hidden_size={self.hidden_size} must be divisible by "
                       f"num_attention_heads={self.num_attention_heads}")

  @classmethod
  def from_transformers(cls, config: Any) -> BertConfig:
    """The config of a `transformers` ``BertConfig`` (object) or its ``config.json`` (a dict).

    ``num_labels`` comes from ``id2label`` when the dict has no ``num_labels``
    (as in a saved ``config.json``).

    Raises:
      ValueError: for options the port does not implement (another
        activation, relative position embeddings, a decoder), naming the option.
    """
    values = dict(config if isinstance(config, Mapping) else config.to_dict())
    if "num_labels" not in values and "id2label" in values:
      values["num_labels"] = len(values["id2label"])
    unsupported = {
      "hidden_act": (values.get("hidden_act", "gelu") == "gelu", "the port uses the exact (erf) GELU"),
      "position_embedding_type": (values.get("position_embedding_type", "absolute") == "absolute",
                                  "only absolute position embeddings"),
      "is_decoder": (not values.get("is_decoder", False), "an encoder port"),
      "problem_type": (values.get("problem_type") in (None, "single_label_classification",
                                                      "multi_label_classification"),
                       "a classifier port (regression heads are not implemented)"),
    }
    for name, (ok, why) in unsupported.items():
      if not ok:
        raise ValueError(f"BertConfig.from_transformers: {name}={values[name]!r} is not supported ({why})")
    fields = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in fields})


BERT_BASE = BertConfig()
BERT_TINY = BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=32, max_position_embeddings=32, num_labels=3)


def _linear(din: int, dout: int, param_dtype: Any, rngs: nnx.Rngs) -> nnx.Linear:
  return nnx.Linear(din, dout, kernel_init=_INIT, param_dtype=param_dtype, rngs=rngs)


def _layer_norm(config: BertConfig, param_dtype: Any, rngs: nnx.Rngs) -> nnx.LayerNorm:
  # Two-pass variance, as torch's.
  return nnx.LayerNorm(config.hidden_size, epsilon=config.layer_norm_eps, use_fast_variance=False,
                       param_dtype=param_dtype, rngs=rngs)


def _embed(num: int, config: BertConfig, param_dtype: Any, rngs: nnx.Rngs) -> nnx.Embed:
  return nnx.Embed(num, config.hidden_size, embedding_init=_INIT, param_dtype=param_dtype, rngs=rngs)


class _Embeddings(nnx.Module):
  """``bert.embeddings``: word, position and token-type tables and their ``LayerNorm``."""

  def __init__(self, config: BertConfig, *, param_dtype: Any, rngs: nnx.Rngs):
    self.word_embeddings = _embed(config.vocab_size, config, param_dtype, rngs)
    self.position_embeddings = _embed(config.max_position_embeddings, config, param_dtype, rngs)
    self.token_type_embeddings = _embed(config.type_vocab_size, config, param_dtype, rngs)
    self.LayerNorm = _layer_norm(config, param_dtype, rngs)  # pylint: disable=invalid-name

  def __call__(self, embeds: jax.Array, positions: jax.Array, token_types: jax.Array) -> jax.Array:
    return self.LayerNorm(embeds + self.token_type_embeddings(token_types) + self.position_embeddings(positions))


class _SelfAttention(nnx.Module):
  """``attention.self``: the ``query``, ``key`` and ``value`` projections."""

  def __init__(self, config: BertConfig, *, param_dtype: Any, rngs: nnx.Rngs):
    d = config.hidden_size
    self.num_heads = config.num_attention_heads
    self.query = _linear(d, d, param_dtype, rngs)
    self.key = _linear(d, d, param_dtype, rngs)
    self.value = _linear(d, d, param_dtype, rngs)

  def __call__(self, x: jax.Array, allowed: Optional[jax.Array]) -> jax.Array:
    q, k, v = (_sequence.split_heads(layer(x), self.num_heads) for layer in (self.query, self.key, self.value))
    return _sequence.merge_heads(_sequence.dot_product_attention(q, k, v, allowed))


class _DenseLayerNorm(nnx.Module):
  """``attention.output`` and ``output``: ``LayerNorm(dense(x) + residual)``."""

  def __init__(self, din: int, config: BertConfig, *, param_dtype: Any, rngs: nnx.Rngs):
    self.dense = _linear(din, config.hidden_size, param_dtype, rngs)
    self.LayerNorm = _layer_norm(config, param_dtype, rngs)  # pylint: disable=invalid-name

  def __call__(self, x: jax.Array, residual: jax.Array) -> jax.Array:
    return self.LayerNorm(self.dense(x) + residual)


class _Attention(nnx.Module):
  """``attention``: ``self`` then ``output``."""

  def __init__(self, config: BertConfig, *, param_dtype: Any, rngs: nnx.Rngs):
    self.self = _SelfAttention(config, param_dtype=param_dtype, rngs=rngs)
    self.output = _DenseLayerNorm(config.hidden_size, config, param_dtype=param_dtype, rngs=rngs)

  def __call__(self, x: jax.Array, allowed: Optional[jax.Array]) -> jax.Array:
    return self.output(self.self(x, allowed), x)


class _Dense(nnx.Module):
  """A module holding one Linear named ``dense`` (``intermediate``, ``pooler``)."""

  def __init__(self, din: int, dout: int, *, param_dtype: Any, rngs: nnx.Rngs):
    self.dense = _linear(din, dout, param_dtype, rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.dense(x)


class BertLayer(nnx.Module):
  """A post-LN encoder block: ``a = attention(x)`` (with its residual LayerNorm), then
  ``output(gelu(intermediate(a)), a)``."""

  def __init__(self, config: BertConfig, *, param_dtype: Any = jnp.float32, rngs: nnx.Rngs):
    self.attention = _Attention(config, param_dtype=param_dtype, rngs=rngs)
    self.intermediate = _Dense(config.hidden_size, config.intermediate_size, param_dtype=param_dtype, rngs=rngs)
    self.output = _DenseLayerNorm(config.intermediate_size, config, param_dtype=param_dtype, rngs=rngs)

  def __call__(self, x: jax.Array, allowed: Optional[jax.Array]) -> jax.Array:
    a = self.attention(x, allowed)
    return self.output(jax.nn.gelu(self.intermediate(a), approximate=False), a)


class _Encoder(nnx.Module):
  def __init__(self, config: BertConfig, *, param_dtype: Any, rngs: nnx.Rngs):
    self.layer = nnx.List([BertLayer(config, param_dtype=param_dtype, rngs=rngs)
                           for _ in range(config.num_hidden_layers)])


class _Bert(nnx.Module):
  """`transformers`' ``BertModel``: ``embeddings``, ``encoder.layer`` and ``pooler``."""

  def __init__(self, config: BertConfig, *, param_dtype: Any, rngs: nnx.Rngs):
    self.embeddings = _Embeddings(config, param_dtype=param_dtype, rngs=rngs)
    self.encoder = _Encoder(config, param_dtype=param_dtype, rngs=rngs)
    self.pooler = _Dense(config.hidden_size, config.hidden_size, param_dtype=param_dtype, rngs=rngs)


class BertForSequenceClassification(nnx.Module):
  """A BERT-style sequence classifier, split at the word-embedding lookup.

  Build it with `bert` (random initialisation or `transformers` weights).
  ``model(ids, attention_mask)`` is ``model.forward_from_embeddings(
  model.embed(ids), attention_mask)``.

  Args:
    config: a `BertConfig`.
    param_dtype: the parameters' dtype (float64 needs ``jax.enable_x64``).
    rngs: the random streams for initialisation.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from flax import nnx
    >>> from adaptgrad_jax import models
    >>> model = models.bert(models.BERT_TINY, rngs=nnx.Rngs(0))
    >>> ids = jnp.array([[2, 7, 9, 3, 0], [2, 4, 3, 0, 0]])
    >>> mask = ids != 0                                          # right padding with id 0
    >>> jax.jit(model.forward_from_embeddings)(model.embed(ids), mask).shape   # == model(ids, mask)
    (2, 3)
    >>> f = lambda e: model.forward_from_embeddings(e, mask[1])[0]   # class 0's logit, one sequence (L, D)
    >>> (jnp.abs(jax.jit(jax.grad(f))(model.embed(ids[1]))).sum(-1) > 0).tolist()  # padding gets no gradient
    [True, True, True, False, False]
  """

  def __init__(self, config: BertConfig, *, param_dtype: Any = jnp.float32, rngs: nnx.Rngs):
    if not isinstance(config, BertConfig):
      raise TypeError(f"config must be a BertConfig, got {type(config).__name__}; for a transformers config use "
                      "BertConfig.from_transformers(config)")
    self.config = config
    self.bert = _Bert(config, param_dtype=param_dtype, rngs=rngs)
    self.classifier = _linear(config.hidden_size, config.num_labels, param_dtype, rngs)

  @property
  def embedding_table(self) -> jax.Array:
    """The word embeddings ``(vocab_size, hidden_size)``: the rows `embed` looks up."""
    return self.bert.embeddings.word_embeddings.embedding[...]

  def embed(self, ids: ArrayLike) -> jax.Array:
    """Word embeddings ``(B, L, D)`` (or ``(L, D)``) of integer ids; positions and token types are added later.

    Raises:
      ValueError: for ids outside ``[0, vocab_size)`` (when their values are
        known, i.e. outside `jax.jit`), an empty sequence or a bad shape.
    """
    return self.bert.embeddings.word_embeddings(_sequence.check_ids(ids, self.config.vocab_size))

  def hidden_states(self, embeds: ArrayLike, attention_mask: Optional[ArrayLike] = None, *,
                    token_type_ids: Optional[ArrayLike] = None,
                    position_ids: Optional[ArrayLike] = None) -> jax.Array:
    """The last encoder block's states ``(B, L, D)`` from word embeddings.

    Args:
      embeds: word embeddings ``(B, L, D)`` or ``(L, D)``, e.g. ``model.embed(ids)``.
      attention_mask: boolean ``(B, L)`` (or ``(L,)``), True at real tokens; None: no padding.
      token_type_ids: integer segment ids ``(B, L)``; None: all 0.
      position_ids: integer ``(B, L)`` positions; None: ``0 .. L-1`` (see `positions_from_mask`).
    """
    c = self.config
    x, batched = _sequence.check_embeddings(embeds, c.hidden_size, c.max_position_embeddings)
    shape = x.shape[:2]
    mask = _sequence.check_mask(attention_mask, shape, batched)
    positions = _sequence.check_positions(position_ids, shape, batched, c.max_position_embeddings)
    if token_type_ids is None:
      token_types = jnp.zeros(shape, jnp.int32)
    else:
      token_types = _sequence.check_positions(token_type_ids, shape, batched, c.type_vocab_size, "token_type_ids")
    allowed = _sequence.attention_mask_4d(mask, shape[1], shape[0], causal=False)
    x = self.bert.embeddings(x, positions, token_types)
    for layer in self.bert.encoder.layer:
      x = layer(x, allowed)
    return x if batched else x[0]

  def pooled(self, hidden: jax.Array) -> jax.Array:
    """The pooler: ``tanh(dense(hidden[..., 0, :]))``, the first token's state."""
    return jnp.tanh(self.bert.pooler(hidden[..., 0, :]))

  def forward_from_embeddings(self, embeds: ArrayLike, attention_mask: Optional[ArrayLike] = None, *,
                              token_type_ids: Optional[ArrayLike] = None,
                              position_ids: Optional[ArrayLike] = None) -> jax.Array:
    """Class logits ``(B, num_labels)`` (or ``(num_labels,)``) from word embeddings; arguments as in `hidden_states`."""
    hidden = self.hidden_states(embeds, attention_mask, token_type_ids=token_type_ids, position_ids=position_ids)
    return self.classifier(self.pooled(hidden))

  def __call__(self, ids: ArrayLike, attention_mask: Optional[ArrayLike] = None, *,
               token_type_ids: Optional[ArrayLike] = None, position_ids: Optional[ArrayLike] = None) -> jax.Array:
    """Class logits of token ids: ``forward_from_embeddings(embed(ids), ...)``."""
    return self.forward_from_embeddings(self.embed(ids), attention_mask, token_type_ids=token_type_ids,
                                        position_ids=position_ids)


# transformers name -> ours: the same name (paths mirror BertForSequenceClassification); these buffers are dropped.
_BUFFERS = ("bert.embeddings.position_ids", "bert.embeddings.token_type_ids")


def _from_transformers(weights: Any) -> Optional[dict[str, Any]]:
  if weights is None:
    return None
  state_dict = _loading._as_state_dict(weights)  # pylint: disable=protected-access
  return {k: v for k, v in state_dict.items() if k not in _BUFFERS}


def bert(config: BertConfig = BERT_BASE, *, weights: Any = None, param_dtype: Any = jnp.float32,
         rngs: nnx.Rngs) -> BertForSequenceClassification:
  """A BERT-style sequence classifier, randomly initialised or with `transformers` weights.

  Args:
    config: the architecture; `BERT_BASE` (the default), `BERT_TINY`, or
      ``BertConfig.from_transformers(hf_config)``.
    weights: None (random initialisation: normal(0.02) weights, zero biases,
      unit LayerNorms), a ``BertForSequenceClassification`` state dict
      (NumPy arrays or torch tensors) or a checkpoint path (``.safetensors``,
      ``.bin`` / ``.pt``, ``.npz``; read without running pickle code).
      Loading is strict.
    param_dtype: the parameters' dtype.
    rngs: the random streams for initialisation.

  Returns:
    A `BertForSequenceClassification`.

  Raises:
    ValueError: if the weights do not fit the config (all missing, unexpected
      and mis-shaped names in one message).

  Example:
    >>> from flax import nnx
    >>> from adaptgrad_jax import models
    >>> abstract = nnx.eval_shape(lambda: models.bert(rngs=nnx.Rngs(0)))   # BERT-base, shapes only
    >>> sum(v.size for v in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
    109483778
  """
  return build_model(lambda r: BertForSequenceClassification(config, param_dtype=param_dtype, rngs=r),
                     _from_transformers(weights), rngs)

