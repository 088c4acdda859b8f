"""A GPT-2-style decoder (`transformers`' ``GPT2LMHeadModel``) in Flax NNX, runnable from input embeddings.

Architecture: token embeddings ``wte`` plus learned position embeddings
``wpe``, pre-LN blocks (``x + attn(ln_1(x))``, then ``x + mlp(ln_2(x))``) with
causal multi-head self-attention and a GELU MLP (``gelu_new``: the tanh
approximation), a final LayerNorm ``ln_f``, and the LM head tied to ``wte``
(``logits = h @ wte.T``). No dropout: the port computes the model in
evaluation mode, which is what an explanation differentiates.

Explaining tokens. Token ids are discrete, so gradients are taken with respect
to the *input embeddings*: ``model.embed(ids)`` returns the token embeddings
``(B, L, D)`` (the rows of ``wte``, without positions) and
``model.forward_from_embeddings(embeds, attention_mask)`` the logits ``(B, L,
vocab)``; ``model(ids, attention_mask)`` is the composition. Position
embeddings are added inside `forward_from_embeddings`, exactly where
`transformers` adds them to ``inputs_embeds``, so the gradient with respect to
``embeds`` equals `transformers`' gradient with respect to ``inputs_embeds``.
One sequence ``(L,)`` / ``(L, D)`` without a batch axis is accepted too.

Padding. ``attention_mask`` is boolean ``(B, L)``, True at real tokens
(integer 0 / 1 masks are accepted): padded positions are never attended to,
so they cannot change the logits of real tokens and get a zero gradient.
Positions are ``0 .. L-1`` by default, as in `transformers`; that is right for
right-padded batches. For left padding pass ``position_ids=
models.positions_from_mask(attention_mask)`` so that each sequence starts at
position 0 (what `transformers`' ``generate`` does).

Weights. Attribute paths mirror `transformers`' names (``transformer.wte``,
``transformer.h.0.attn.c_attn``, ``transformer.h.0.mlp.c_fc``,
``transformer.ln_f``), so a ``GPT2LMHeadModel`` state dict (or a
``model.safetensors`` file read with `adaptgrad_jax.weights.read_checkpoint`,
no pickle code run) loads through ``gpt2(config, weights=...)``. The mapping
is the short table in `_from_transformers`: `transformers`' ``Conv1D`` layers
store their weight as ``(in, out)`` (the transpose of ``nn.Linear``'s), and
``lm_head.weight`` is the tied ``transformer.wte.weight``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any, Optional

import jax
import jax.numpy as jnp
from flax import nnx
from jax.typing import ArrayLike

from adaptgrad_jax.models import _loading
from adaptgrad_jax.models import _sequence
from adaptgrad_jax.models._loading import build_model

__all__ = ["GPT2_SMALL", "GPT2_TINY", "GPT2Block", "GPT2Config", "GPT2LMHeadModel", "gpt2"]

_INIT = nnx.initializers.normal(0.02)  # transformers' initializer_range


@dataclasses.dataclass(frozen=True)
class GPT2Config:
  """The hyperparameters of a GPT-2-style decoder (`transformers`' ``GPT2Config`` names).

  The defaults are GPT-2 small (124M parameters). ``GPT2_TINY`` is a test-size
  preset.

  Attributes:
    vocab_size: number of tokens.
    n_positions: number of position embeddings (the longest sequence).
    n_embd: width D.
    n_layer: number of blocks.
    n_head: attention heads per block (must divide ``n_embd``).
    n_inner: the MLP's hidden width; None means ``4 * n_embd``.
    layer_norm_epsilon: the LayerNorms' epsilon.
  """

  vocab_size: int = 50257
  n_positions: int = 1024
  n_embd: int = 768
  n_layer: int = 12
  n_head: int = 12
  n_inner: Optional[int] = None
  layer_norm_epsilon: float = 1e-5

  def __post_init__(self):
    for name in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head"):
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"GPT2Config {name}={value!r} must be a positive int")
    if self.n_embd % self.n_head:
      raise ValueError(f"GPT2Config n_embd={self.n_embd} must be divisible by n_head={self.n_head}")
    if self.n_inner is not None and (not isinstance(self.n_inner, int) or self.n_inner < 1):
      raise ValueError(f"GPT2Config n_inner={self.n_inner!r} must be a positive int or None (4 * n_embd)")

  @property
  def inner_size(self) -> int:
    """The MLP's hidden width."""
    return self.n_inner or 4 * self.n_embd

  @classmethod
  def from_transformers(cls, config: Any) -> GPT2Config:
    """The config of a `transformers` ``GPT2Config`` (object) or its ``config.json`` (a dict).

    Raises:
      ValueError: for options the port does not implement (another
        activation, attention scaling by layer index, cross-attention, an
        untied LM head), naming the option.
    """
    values = dict(config if isinstance(config, Mapping) else config.to_dict())
    unsupported = {
      "activation_function": (values.get("activation_function", "gelu_new") in ("gelu_new", "gelu_pytorch_tanh"),
                              "the port uses gelu_new (tanh approximation)"),
      "scale_attn_weights": (values.get("scale_attn_weights", True) is True, "scores are scaled by 1/sqrt(head_dim)"),
      "scale_attn_by_inverse_layer_idx": (not values.get("scale_attn_by_inverse_layer_idx", False),
                                          "not implemented"),
      "add_cross_attention": (not values.get("add_cross_attention", False), "a decoder-only port"),
      "tie_word_embeddings": (values.get("tie_word_embeddings", True) is not False, "the LM head is tied to wte"),
    }
    for name, (ok, why) in unsupported.items():
      if not ok:
        raise ValueError(f"GPT2Config.from_transformers: {name}={values[name]!r} is not supported ({why})")
    fields = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in fields})


GPT2_SMALL = GPT2Config()
GPT2_TINY = GPT2Config(vocab_size=64, n_positions=32, n_embd=16, n_layer=2, n_head=2)


def _linear(din: int, dout: int, param_dtype: Any, rngs: nnx.Rngs) -> nnx.Linear:
  return nnx.Linear(din, dout, kernel_init=_INIT, param_dtype=param_dtype, rngs=rngs)


def _layer_norm(features: int, epsilon: float, param_dtype: Any, rngs: nnx.Rngs) -> nnx.LayerNorm:
  # Two-pass variance, as torch's (Flax's fast E[x^2] - E[x]^2 loses digits in float32).
  return nnx.LayerNorm(features, epsilon=epsilon, use_fast_variance=False, param_dtype=param_dtype, rngs=rngs)


class _Attention(nnx.Module):
  """``attn``: ``c_attn`` projects to queries, keys and values (in that order), ``c_proj`` back."""

  def __init__(self, config: GPT2Config, *, param_dtype: Any, rngs: nnx.Rngs):
    self.num_heads = config.n_head
    self.c_attn = _linear(config.n_embd, 3 * config.n_embd, param_dtype, rngs)
    self.c_proj = _linear(config.n_embd, config.n_embd, param_dtype, rngs)

  def __call__(self, x: jax.Array, allowed: Optional[jax.Array], keep: Optional[int] = None) -> jax.Array:
    """``(B, L, D) -> (B, L, D)``; with ``keep``, only the last ``keep`` queries: ``(B, keep, D)``."""
    if keep is None:
      q, k, v = jnp.split(self.c_attn(x), 3, axis=-1)
    else:  # keys and values of every position, queries of the kept ones only
      kernel, bias, d = self.c_attn.kernel[...], self.c_attn.bias[...], x.shape[-1]
      q = x[:, -keep:] @ kernel[:, :d] + bias[:d]
      k, v = jnp.split(x @ kernel[:, d:] + bias[d:], 2, axis=-1)
      allowed = None if allowed is None else allowed[:, :, -keep:]
    q, k, v = (_sequence.split_heads(t, self.num_heads) for t in (q, k, v))
    return self.c_proj(_sequence.merge_heads(_sequence.dot_product_attention(q, k, v, allowed)))


class _MLP(nnx.Module):
  """``mlp``: ``c_proj(gelu_new(c_fc(x)))``."""

  def __init__(self, config: GPT2Config, *, param_dtype: Any, rngs: nnx.Rngs):
    self.c_fc = _linear(config.n_embd, config.inner_size, param_dtype, rngs)
    self.c_proj = _linear(config.inner_size, config.n_embd, param_dtype, rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.c_proj(jax.nn.gelu(self.c_fc(x), approximate=True))


class GPT2Block(nnx.Module):
  """A pre-LN decoder block: ``x + attn(ln_1(x))``, then ``+ mlp(ln_2(.))``."""

  def __init__(self, config: GPT2Config, *, param_dtype: Any = jnp.float32, rngs: nnx.Rngs):
    eps, d = config.layer_norm_epsilon, config.n_embd
    self.ln_1 = _layer_norm(d, eps, param_dtype, rngs)
    self.attn = _Attention(config, param_dtype=param_dtype, rngs=rngs)
    self.ln_2 = _layer_norm(d, eps, param_dtype, rngs)
    self.mlp = _MLP(config, param_dtype=param_dtype, rngs=rngs)

  def __call__(self, x: jax.Array, allowed: Optional[jax.Array], keep: Optional[int] = None) -> jax.Array:
    """``(B, L, D) -> (B, L, D)``, or the last ``keep`` positions' outputs ``(B, keep, D)``."""
    attended = self.attn(self.ln_1(x), allowed, keep)
    x = (x if keep is None else x[:, -keep:]) + attended
    return x + self.mlp(self.ln_2(x))


class _Transformer(nnx.Module):
  """`transformers`' ``GPT2Model``: ``wte``, ``wpe``, the blocks ``h`` and ``ln_f``."""

  def __init__(self, config: GPT2Config, *, param_dtype: Any, rngs: nnx.Rngs):
    self.wte = nnx.Embed(config.vocab_size, config.n_embd, embedding_init=_INIT, param_dtype=param_dtype, rngs=rngs)
    self.wpe = nnx.Embed(config.n_positions, config.n_embd, embedding_init=_INIT, param_dtype=param_dtype,
                         rngs=rngs)
    self.h = nnx.List([GPT2Block(config, param_dtype=param_dtype, rngs=rngs) for _ in range(config.n_layer)])
    self.ln_f = _layer_norm(config.n_embd, config.layer_norm_epsilon, param_dtype, rngs)


class GPT2LMHeadModel(nnx.Module):
  """A GPT-2-style causal language model with a tied LM head, split at the embedding lookup.

  Build it with `gpt2` (random initialisation or `transformers` weights).
  ``model(ids, attention_mask)`` is ``model.forward_from_embeddings(
  model.embed(ids), attention_mask)``; explain tokens by differentiating
  `forward_from_embeddings` with respect to the embeddings.

  Args:
    config: a `GPT2Config`.
    param_dtype: the parameters' dtype (float64 needs ``jax.enable_x64``).
    rngs: the random streams for initialisation.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from flax import nnx
    >>> from adaptgrad_jax import models
    >>> model = models.gpt2(models.GPT2_TINY, rngs=nnx.Rngs(0))
    >>> ids = jnp.array([[5, 7, 9, 11], [0, 0, 3, 4]])
    >>> mask = jnp.array([[1, 1, 1, 1], [0, 0, 1, 1]], bool)    # the second sequence is left-padded
    >>> positions = models.positions_from_mask(mask)             # so its first real token gets position 0
    >>> embeds = model.embed(ids)                                 # (2, 4, 16): token embeddings only
    >>> logits = jax.jit(model.forward_from_embeddings)(embeds, mask, position_ids=positions)
    >>> logits.shape                                              # == model(ids, mask, position_ids=positions)
    (2, 4, 64)
    >>> def log_prob(e):  # log p(token 11 | 3, 4), from one sequence's embeddings (L, D)
    ...   logits = model.forward_from_embeddings(e, mask[1], position_ids=positions[1])
    ...   return jax.nn.log_softmax(logits[3])[11]
    >>> (jnp.abs(jax.jit(jax.grad(log_prob))(embeds[1])).sum(-1) > 0).tolist()   # padding gets no gradient
    [False, False, True, True]
  """

  def __init__(self, config: GPT2Config, *, param_dtype: Any = jnp.float32, rngs: nnx.Rngs):
    if not isinstance(config, GPT2Config):
      raise TypeError(f"config must be a GPT2Config, got {type(config).__name__}; for a transformers config use "
                      "GPT2Config.from_transformers(config)")
    self.config = config
    self.transformer = _Transformer(config, param_dtype=param_dtype, rngs=rngs)

  @property
  def embedding_table(self) -> jax.Array:
    """The token embeddings ``(vocab_size, n_embd)``: the rows `embed` looks up (the data domain of ``embeds``)."""
    return self.transformer.wte.embedding[...]

  def embed(self, ids: ArrayLike) -> jax.Array:
    """Token embeddings ``(B, L, D)`` (or ``(L, D)``) of integer ids; positions are added later.

    Raises:
      ValueError: for ids outside ``[0, vocab_size)`` (when their values are
        known, i.e. outside `jax.jit`), an empty sequence or a bad shape.
    """
    return self.transformer.wte(_sequence.check_ids(ids, self.config.vocab_size))

  def hidden_states(self, embeds: ArrayLike, attention_mask: Optional[ArrayLike] = None, *,
                    position_ids: Optional[ArrayLike] = None, keep_last: Optional[int] = None) -> jax.Array:
    """The final, normalised hidden states ``(B, L, D)`` (after ``ln_f``) from input embeddings.

    Args:
      embeds: input embeddings ``(B, L, D)`` or ``(L, D)``, e.g. ``model.embed(ids)``.
      attention_mask: boolean ``(B, L)`` (or ``(L,)``), True at real tokens; None: no padding.
      position_ids: integer ``(B, L)`` positions; None: ``0 .. L-1``. See
        `positions_from_mask` for left padding.
      keep_last: None or 0 for every position; k > 0 for the last k
        positions only, ``(B, k, D)``: the same values, and the last block
        computes its queries, attention outputs and MLP for those k
        positions only (keys and values for all), which a target at the
        last position does not need (1.2x faster gradients for 4 blocks).
    """
    c = self.config
    x, batched = _sequence.check_embeddings(embeds, c.n_embd, c.n_positions)
    shape = x.shape[:2]
    keep = _check_keep(keep_last, shape[1], "keep_last")
    mask = _sequence.check_mask(attention_mask, shape, batched)
    positions = _sequence.check_positions(position_ids, shape, batched, c.n_positions)
    allowed = _sequence.attention_mask_4d(mask, shape[1], shape[0], causal=True)
    t = self.transformer
    x = x + t.wpe(positions)
    for i, block in enumerate(t.h):
      x = block(x, allowed, keep if i == len(t.h) - 1 else None)
    x = t.ln_f(x)
    return x if batched else x[0]

  def lm_head(self, hidden: jax.Array) -> jax.Array:
    """Logits ``hidden @ wte.T``: the head tied to the token embeddings."""
    table = self.transformer.wte.embedding[...]
    # One dot_general contracting the feature axes (not nnx.Embed.attend's ``hidden @ table.T``): the gradient
    # with respect to ``hidden`` then reads the table in place; with the explicit transpose XLA:CPU copied the
    # whole (vocab, D) table on every call of the gradient (16% of a GPT-2 input gradient's time).
    return jnp.einsum("...d,vd->...v", hidden, table.astype(jnp.result_type(hidden, table)))

  def forward_from_embeddings(self, embeds: ArrayLike, attention_mask: Optional[ArrayLike] = None, *,
                              position_ids: Optional[ArrayLike] = None,
                              logits_to_keep: Optional[int] = None) -> jax.Array:
    """Next-token logits ``(B, L, vocab_size)`` (or ``(L, vocab_size)``) from input embeddings.

    Logit ``[b, t]`` scores token ``t + 1`` given tokens ``0 .. t``. ``logits_to_keep=k``
    returns the last k positions' logits ``(B, k, vocab_size)``, as in
    `transformers`, computing less (see ``keep_last`` in `hidden_states`);
    other arguments as there.
    """
    keep = _check_keep(logits_to_keep, jnp.shape(embeds)[-2], "logits_to_keep")
    return self.lm_head(self.hidden_states(embeds, attention_mask, position_ids=position_ids, keep_last=keep))

  def __call__(self, ids: ArrayLike, attention_mask: Optional[ArrayLike] = None, *,
               position_ids: Optional[ArrayLike] = None, logits_to_keep: Optional[int] = None) -> jax.Array:
    """Logits ``(B, L, vocab_size)`` of token ids ``(B, L)``: ``forward_from_embeddings(embed(ids), ...)``."""
    return self.forward_from_embeddings(self.embed(ids), attention_mask, position_ids=position_ids,
                                        logits_to_keep=logits_to_keep)


def _check_keep(keep: Optional[int], length: int, name: str) -> Optional[int]:
  if keep is None or (isinstance(keep, int) and not isinstance(keep, bool) and keep == 0):
    return None
  if not isinstance(keep, int) or isinstance(keep, bool) or not 0 < keep <= length:
    raise ValueError(f"{name}={keep!r} must be None or 0 (every position) or an int in [1, {length}] (the last "
                     "positions of the sequence)")
  return keep


# transformers name -> ours: the same name (paths mirror GPT2LMHeadModel), except
_CONV1D_WEIGHT = re.compile(r"^transformer\.h\.\d+\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.weight$")
# ... Conv1D weights (in, out) are transposed to nn.Linear's (out, in), which `load_state_dict` reads;
_TIED = ("lm_head.weight", "transformer.wte.weight")  # ... the LM head is the token embedding (checked, dropped);
_BUFFERS = re.compile(r"^transformer\.h\.\d+\.attn\.(bias|masked_bias)$")  # ... causal-mask buffers are dropped;
_BASE_PREFIX = "transformer."  # ... and a GPT2Model checkpoint (names without this prefix) gets it.


def _from_transformers(weights: Any) -> Optional[dict[str, Any]]:
  """A `transformers` GPT-2 state dict (or checkpoint path) renamed and laid out for `load_state_dict`."""
  if weights is None:
    return None
  state_dict = _loading._as_state_dict(weights)  # pylint: disable=protected-access
  if "wte.weight" in state_dict and not any(k.startswith(_BASE_PREFIX) for k in state_dict):
    state_dict = {_BASE_PREFIX + k: v for k, v in state_dict.items()}
  out = {}
  for key, value in state_dict.items():
    if _BUFFERS.match(key):
      continue
    if _CONV1D_WEIGHT.match(key):
      value = _loading._as_numpy(value).T  # pylint: disable=protected-access
    out[key] = value
  head, table = _TIED
  if head in out:
    tied = out.pop(head)
    if table in out and not (_loading._as_numpy(tied) == _loading._as_numpy(out[table])).all():  # pylint: disable=protected-access
      raise ValueError(f"weights: {head} differs from {table}; this port ties the LM head to the token embeddings "
                       "(tie_word_embeddings=True), so it cannot load an untied checkpoint")
  return out


def gpt2(config: GPT2Config = GPT2_SMALL, *, weights: Any = None, param_dtype: Any = jnp.float32,
         rngs: nnx.Rngs) -> GPT2LMHeadModel:
  """A GPT-2-style decoder, randomly initialised or with `transformers` weights.

  Args:
    config: the architecture; `GPT2_SMALL` (the default, GPT-2's 124M
      parameters), `GPT2_TINY`, or ``GPT2Config.from_transformers(hf_config)``.
    weights: None (random initialisation: normal(0.02) weights, zero biases,
      unit LayerNorms), a ``GPT2LMHeadModel`` / ``GPT2Model`` state dict
      (NumPy arrays or torch tensors) or a checkpoint path (``.safetensors``,
      ``.bin`` / ``.pt``, ``.npz``; read without running pickle code).
      Loading is strict: every parameter must be there.
    param_dtype: the parameters' dtype.
    rngs: the random streams for initialisation.

  Returns:
    A `GPT2LMHeadModel`.

  Raises:
    ValueError: if the weights do not fit the config (all missing, unexpected
      and mis-shaped names in one message) or the LM head is untied.

  Example:
    >>> from flax import nnx
    >>> from adaptgrad_jax import models
    >>> abstract = nnx.eval_shape(lambda: models.gpt2(rngs=nnx.Rngs(0)))   # GPT-2 small, shapes only
    >>> sum(v.size for v in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
    124439808
  """
  return build_model(lambda r: GPT2LMHeadModel(config, param_dtype=param_dtype, rngs=r),
                     _from_transformers(weights), rngs)
