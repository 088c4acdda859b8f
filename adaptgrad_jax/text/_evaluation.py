"""Token-level evaluation: deletion / insertion curves over tokens, and sequences packed for ``metrics.evaluate``.

:func:`adaptgrad_jax.metrics.evaluate` takes one float array per example and
maps of its shape, or of its shape without the trailing channel axis. A padded
sequence is packed as ``(L, 1, D + 2)``: the embeddings, the mask and the ids
(as floats, exact below 2**24) on the channel axis, so a token is a "pixel" and
a token map is ``(L, 1)``. :func:`pack_tokens`, :func:`packed_predict` and
:func:`packed_explainer` make the three pieces ``evaluate`` needs;
:func:`token_deletion_metric`, :func:`token_insertion_metric` and
:func:`token_sparseness_metric` are token-level metrics that never count or
touch padding; :func:`token_randomisation` is the model-parameter
randomisation test ranked over real tokens. ``evaluate``'s own ``"random_logit"`` and ``"sparseness"``
(which counts padded zeros) work on the packed inputs as they are.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats

from adaptgrad_jax.metrics import CurveResult, Metric, randomise_layer, sparseness
from adaptgrad_jax.metrics._randomisation import standard_normal_init
from adaptgrad_jax.text._embedding import EmbeddingSplit, check_mask
from adaptgrad_jax.text._scores import token_scores


def pack_tokens(embeds: jax.Array, mask: jax.Array, ids: jax.Array) -> jax.Array:
  """Packs sequences as ``(..., L, 1, D + 2)`` float32 arrays: embeddings, mask, ids (for ``metrics.evaluate``).

  Example:
    >>> from adaptgrad_jax import text
    >>> x = text.pack_tokens(jnp.ones((2, 3, 4)), jnp.array([[1, 1, 0], [1, 0, 0]], bool), jnp.ones((2, 3), int))
    >>> x.shape, [a.shape for a in text.unpack_tokens(x[0])]
    ((2, 3, 1, 6), [(3, 4), (3,), (3,)])
  """
  embeds, ids = jnp.asarray(embeds), jnp.asarray(ids)
  mask = check_mask(mask, ids.shape)
  if embeds.shape[:-1] != ids.shape:
    raise ValueError(f"embeds has shape {embeds.shape} but ids {ids.shape}; pass the embeddings of those ids.")
  if jnp.size(ids) and int(jnp.max(ids)) >= 2**24:
    raise ValueError("ids above 2**24 cannot be packed exactly as float32; evaluate a smaller vocabulary.")
  packed = jnp.concatenate([embeds.astype(jnp.float32), mask[..., None].astype(jnp.float32),
                            ids[..., None].astype(jnp.float32)], axis=-1)
  return packed[..., None, :]


def unpack_tokens(x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """``(embeds (L, D), mask (L,), ids (L,))`` of one packed sequence ``(L, 1, D + 2)``."""
  x = jnp.asarray(x)
  if x.ndim != 3 or x.shape[1] != 1 or x.shape[2] < 3:
    raise ValueError(f"x has shape {x.shape}; a packed sequence is (L, 1, D + 2) (see text.pack_tokens).")
  return x[:, 0, :-2], x[:, 0, -2] > 0.5, jnp.round(x[:, 0, -1]).astype(jnp.int32)


def packed_predict(split: EmbeddingSplit, *, output: str = "softmax") -> Callable[[jax.Array], jax.Array]:
  """``predict_fn(xs) -> (B, K)`` on packed sequences: the classifier's softmax (or ``"logit"``) per sequence."""
  if output not in ("softmax", "logit"):
    raise ValueError(f"output={output!r} must be 'softmax' or 'logit'.")

  def one(x):
    e, m, _ = unpack_tokens(x)
    logits = split.forward(e, m)
    return jax.nn.softmax(logits) if output == "softmax" else logits

  return lambda xs: jax.vmap(one)(xs)


def packed_explainer(explain: Callable[..., Any], *, reduction: str, stochastic: bool = True
                     ) -> Callable[[jax.Array, jax.Array, Any], jax.Array]:
  """``explain_fn(key, x, target) -> (L, 1)`` token scores of a packed sequence, for ``metrics.evaluate``.

  Args:
    explain: ``explain(key, embeds, ids, mask, target)`` (a smoothing
      transform of ``jax.grad(text.classifier_fn(split))``), or, with
      ``stochastic=False``, ``explain(embeds, ids, mask, target)``.
    reduction: as in :func:`token_scores`.
    stochastic: whether ``explain`` takes a key first.
  """
  def explain_fn(key, x, target):
    e, m, ids = unpack_tokens(x)
    out = explain(key, e, ids, m, target) if stochastic else explain(e, ids, m, target)
    scores = token_scores(out, e if reduction == "grad_x_input" else None, m, reduction=reduction)
    return scores[:, None]

  return explain_fn


def _token_curve(predict_fn, x, scores, target, baseline, num_steps, insertion):
  e, m, _ = unpack_tokens(x)
  s = jnp.asarray(scores).reshape(e.shape[0])
  n_real = jnp.sum(m)
  order = jnp.argsort(jnp.where(m, -s, jnp.inf), stable=True)  # real tokens by descending score, padding last
  rank = jnp.zeros(e.shape[0], jnp.int32).at[order].set(jnp.arange(e.shape[0], dtype=jnp.int32))
  fractions = jnp.linspace(0.0, 1.0, num_steps + 1)
  counts = jnp.round(fractions * n_real).astype(jnp.int32)
  base = jnp.broadcast_to(jnp.asarray(baseline, e.dtype), e.shape)

  def at(k):
    chosen = (rank < k) & m
    new = jnp.where(chosen[:, None], e, base) if insertion else jnp.where(chosen[:, None], base, e)
    new = jnp.where(m[:, None], new, e)  # padding untouched
    return x.at[:, 0, :-2].set(new)

  batch = jax.vmap(at)(counts)
  values = jnp.asarray(predict_fn(batch))[:, target]
  return CurveResult(jnp.trapezoid(values, fractions), fractions, values)


def token_deletion(predict_fn, x, scores, target, *, baseline, num_steps: int = 10) -> CurveResult:
  """Deletion over tokens: replace the top-scoring real tokens' embeddings by ``baseline``, most important first.

  After deleting the top ``round(k / num_steps * n_real)`` real tokens (ties
  in position order; padding never deleted nor counted), the target class's
  score (``predict_fn``'s column ``target``) is recorded; LOWER area under the
  curve is better (a faithful explanation makes the score drop fast). The
  token is replaced in embedding space, e.g. by the [MASK] embedding
  (:func:`baseline_embedding`), and stays attended to.

  Args:
    predict_fn: packed batch ``(S, L, 1, D + 2)`` -> scores ``(S, K)`` (:func:`packed_predict`).
    x: one packed sequence (:func:`pack_tokens`).
    scores: its token scores, ``(L,)`` or ``(L, 1)``.
    target: the class whose score is tracked.
    baseline: the replacing embedding, ``(D,)`` (or ``(L, D)``).
    num_steps: steps from no token to all real tokens.

  Returns:
    ``metrics.CurveResult(auc, fractions, scores)``.

  Example:
    >>> from adaptgrad_jax import text
    >>> e = jnp.array([[3.0], [1.0], [2.0], [9.0]]); m = jnp.array([True, True, True, False])
    >>> x = text.pack_tokens(e, m, jnp.zeros(4, int))
    >>> predict = lambda xs: jnp.sum(xs[:, :, 0, :1] * xs[:, :, 0, 1:2], axis=1)  # sum of the real tokens
    >>> text.token_deletion(predict, x, jnp.array([3.0, 1.0, 2.0, 0.0]), 0, baseline=jnp.zeros(1), num_steps=3).scores
    Array([6., 3., 1., 0.], dtype=float32)
  """
  return _token_curve(predict_fn, jnp.asarray(x), scores, target, baseline, _steps(num_steps), insertion=False)


def token_insertion(predict_fn, x, scores, target, *, baseline, num_steps: int = 10) -> CurveResult:
  """Insertion over tokens: start from every real token replaced by ``baseline``, reveal the top-scoring first.

  As :func:`token_deletion`, in reverse; HIGHER area is better.
  """
  return _token_curve(predict_fn, jnp.asarray(x), scores, target, baseline, _steps(num_steps), insertion=True)


def _steps(num_steps) -> int:
  if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
    raise ValueError(f"num_steps={num_steps!r} must be a positive int.")
  return num_steps


def token_deletion_metric(baseline: jax.Array, *, num_steps: int = 10) -> Metric:
  """:func:`token_deletion`'s AUC as a ``metrics.Metric`` for ``metrics.evaluate`` (lower is better)."""
  num_steps = _steps(num_steps)
  return Metric(lambda k, p, x, a, t: token_deletion(p, x, a, t, baseline=baseline, num_steps=num_steps).auc,
                "model", False, True)


def token_insertion_metric(baseline: jax.Array, *, num_steps: int = 10) -> Metric:
  """:func:`token_insertion`'s AUC as a ``metrics.Metric`` for ``metrics.evaluate`` (higher is better)."""
  num_steps = _steps(num_steps)
  return Metric(lambda k, p, x, a, t: token_insertion(p, x, a, t, baseline=baseline, num_steps=num_steps).auc,
                "model", True, True)


def token_sparseness_metric() -> Metric:
  """The Gini index (:func:`adaptgrad_jax.metrics.sparseness`) of the REAL tokens' scores, padding left out."""
  def score(key, predict_fn, x, a, t):
    del key, predict_fn, t
    _, m, _ = unpack_tokens(np.asarray(x))
    return sparseness(np.asarray(a).reshape(-1)[np.asarray(m)])

  return Metric(score, "model", True, False)


def evaluation_data(split: EmbeddingSplit, ids: Any, mask: Any, targets: Any,
                    ) -> tuple[jax.Array, jax.Array]:
  """``(xs, targets)`` for ``metrics.evaluate``: the packed sequences (:func:`pack_tokens`) and int targets."""
  embeds = split.embeddings(ids)
  return pack_tokens(embeds, mask, ids), jnp.asarray(targets, jnp.int32)



def token_randomisation(
    key: jax.Array,
    scores_fn: Callable[[Any], jax.Array],
    params: Any,
    layers: Sequence[str],
    mask: Any,
    *,
    mode: str = "cascading",
    init: Callable[[jax.Array, jax.Array], jax.Array] = standard_normal_init,
    absolute: bool = False,
) -> dict[str, float]:
  """Model-parameter randomisation test (MPRT) on token scores, ranked over the real tokens only.

  :func:`adaptgrad_jax.metrics.model_parameter_randomisation` ranks whole maps,
  so on padded sequences the padded positions (score exactly 0 in both maps)
  would tie and inflate the agreement. Here each sequence's Spearman
  correlation between the trained and the randomised model's scores counts its
  real tokens alone. Layers are redrawn by
  :func:`adaptgrad_jax.metrics.randomise_layer`, in the given order
  (``"cascading"``: they stay random, top-down as Adebayo et al.) or one at a
  time (``"independent"``). Scores that stay similar after randomisation fail
  the sanity check: lower is better.

  Args:
    key: PRNG key for the re-initialisation.
    scores_fn: ``scores_fn(params) -> (B, L)`` token scores of a fixed batch
      (close over the sequences, the targets and a key if the explainer is
      stochastic, so that only the weights change).
    params: the trained parameters, e.g. ``nnx.split(model)[1]``.
    layers: path prefixes of the layers, in randomisation order.
    mask: ``(B, L)`` booleans, True at real tokens.
    mode: ``"cascading"`` (default) or ``"independent"``.
    init: ``init(key, leaf) -> new leaf`` (default N(0, 1)).
    absolute: rank ``|score|`` instead of the signed scores.

  Returns:
    ``{layer: mean |Spearman|}`` over the sequences, in order. A sequence
    whose scores are constant over its real tokens (fewer than two tokens, or
    a map of zeros) has no rank correlation and is left out; a layer where all
    are left out gives NaN.

  Raises:
    ValueError: an unknown mode, empty ``layers``, a layer that matches no
      parameter, a mask whose shape is not the scores', or non-finite scores.

  References:
    Adebayo et al., "Sanity checks for saliency maps", NeurIPS 2018, Sec. 3.1.
  """
  if mode not in ("cascading", "independent"):
    raise ValueError(f"mode={mode!r} must be 'cascading' or 'independent'.")
  if isinstance(layers, str) or not layers:
    raise ValueError(f"layers={layers!r} must be a non-empty sequence of layer path prefixes, e.g. ['head'].")
  for layer in layers:  # fail early: randomise_layer names the parameter groups there are
    randomise_layer(key, params, layer, init=lambda k, x: x)
  mask = np.asarray(mask, bool)

  def scores_of(p, name):
    s = np.asarray(scores_fn(p), np.float64)
    if s.shape != mask.shape:
      raise ValueError(f"scores_fn returned shape {s.shape} but mask has shape {mask.shape}; return one score per"
                       " token of the batch, (B, L), e.g. text.token_scores of each sequence's map.")
    if not np.all(np.isfinite(s)):
      raise ValueError(f"scores_fn returned non-finite scores ({name}); check the explainer on these weights.")
    return np.abs(s) if absolute else s

  reference = scores_of(params, "trained model")
  results, current = {}, params
  for layer, k in zip(layers, jax.random.split(key, len(layers))):
    current = randomise_layer(k, current if mode == "cascading" else params, layer, init=init)
    randomised = scores_of(current, f"after randomising {layer!r}")
    corrs = [_spearman_real(a[m], b[m]) for a, b, m in zip(reference, randomised, mask)]
    corrs = [abs(r) for r in corrs if r is not None]
    results[layer] = float(np.mean(corrs)) if corrs else float("nan")
  return results


def _spearman_real(a: np.ndarray, b: np.ndarray):
  """Spearman's rho of two score vectors (average ranks for ties), or None where either is constant."""
  if a.size < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
    return None
  ra, rb = scipy.stats.rankdata(a), scipy.stats.rankdata(b)
  return float(np.corrcoef(ra, rb)[0, 1])
