"""A tiny Transformer encoder classifier in Flax NNX (the text demo's model)."""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx


@dataclasses.dataclass(frozen=True)
class TinyEncoderConfig:
  """The encoder's sizes: ``vocab_size`` tokens, ``max_length`` positions, ``num_classes`` outputs."""

  vocab_size: int = 48
  max_length: int = 32
  num_classes: int = 4
  dim: int = 32
  num_heads: int = 2
  num_layers: int = 2
  mlp_dim: int = 64


class _Block(nnx.Module):
  """Pre-norm self-attention and MLP, with a boolean key mask."""

  def __init__(self, cfg: TinyEncoderConfig, *, rngs: nnx.Rngs):
    self.num_heads = cfg.num_heads
    self.ln1 = nnx.LayerNorm(cfg.dim, rngs=rngs)
    self.qkv = nnx.Linear(cfg.dim, 3 * cfg.dim, rngs=rngs)
    self.out = nnx.Linear(cfg.dim, cfg.dim, rngs=rngs)
    self.ln2 = nnx.LayerNorm(cfg.dim, rngs=rngs)
    self.fc1 = nnx.Linear(cfg.dim, cfg.mlp_dim, rngs=rngs)
    self.fc2 = nnx.Linear(cfg.mlp_dim, cfg.dim, rngs=rngs)

  def __call__(self, h: jax.Array, mask: jax.Array) -> jax.Array:
    b, length, dim = h.shape
    heads = self.num_heads
    q, k, v = jnp.split(self.qkv(self.ln1(h)), 3, axis=-1)
    shape = (b, length, heads, dim // heads)
    q, k, v = (t.reshape(shape) for t in (q, k, v))
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(dim // heads).astype(h.dtype)
    logits = jnp.where(mask[:, None, None, :], logits, jnp.finfo(logits.dtype).min)
    att = jax.nn.softmax(logits, axis=-1)
    h = h + self.out(jnp.einsum("bhqk,bkhd->bqhd", att, v).reshape(b, length, dim))
    return h + self.fc2(jax.nn.gelu(self.fc1(self.ln2(h))))


class TinyEncoder(nnx.Module):
  """A small Transformer encoder for sequence classification: embeddings, blocks, masked mean pooling, logits.

  It exposes the split the text tools use: ``embed(ids)`` (the lookup,
  ``(B, L) -> (B, L, D)``) and ``forward_from_embeddings(embeds,
  attention_mask=None)`` (learned positions, pre-norm blocks with a key mask,
  a final layer norm, the mean over the real tokens and a linear head,
  ``-> (B, num_classes)``).

  Example:
    >>> from adaptgrad_jax import text
    >>> from flax import nnx
    >>> model = text.TinyEncoder(text.TinyEncoderConfig(vocab_size=10, max_length=8, num_layers=1), rngs=nnx.Rngs(0))
    >>> jax.eval_shape(lambda i, m: model(i, attention_mask=m), jnp.ones((1, 4), int), jnp.ones((1, 4), bool)).shape
    (1, 4)
  """

  def __init__(self, config: TinyEncoderConfig, *, rngs: nnx.Rngs):
    self.config = config
    self.token_embed = nnx.Embed(config.vocab_size, config.dim, rngs=rngs)
    self.position = nnx.Param(0.02 * jax.random.normal(rngs.params(), (config.max_length, config.dim)))
    self.blocks = nnx.List([_Block(config, rngs=rngs) for _ in range(config.num_layers)])
    self.ln = nnx.LayerNorm(config.dim, rngs=rngs)
    self.head = nnx.Linear(config.dim, config.num_classes, rngs=rngs)

  def embed(self, ids: jax.Array) -> jax.Array:
    return self.token_embed(ids)

  def forward_from_embeddings(self, embeds: jax.Array, attention_mask: Optional[jax.Array] = None) -> jax.Array:
    b, length, _ = embeds.shape
    mask = jnp.ones((b, length), bool) if attention_mask is None else attention_mask.astype(bool)
    h = embeds + self.position[...][:length]
    for block in self.blocks:
      h = block(h, mask)
    h = self.ln(h)
    weights = mask.astype(h.dtype)[..., None]
    pooled = jnp.sum(h * weights, axis=1) / jnp.maximum(jnp.sum(weights, axis=1), 1.0)
    return self.head(pooled)

  def __call__(self, ids: jax.Array, attention_mask: Optional[jax.Array] = None) -> jax.Array:
    return self.forward_from_embeddings(self.embed(ids), attention_mask)
