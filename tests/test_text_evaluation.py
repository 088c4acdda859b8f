"""Token-level evaluation: deletion / insertion over tokens and metrics.evaluate on packed sequences."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adaptgrad_jax as ag
from adaptgrad_jax import metrics
from adaptgrad_jax import text


V, D, K = 9, 3, 2
TABLE = jax.random.normal(jax.random.key(0), (V, D))
W = jax.random.normal(jax.random.key(1), (D, K))
# An additive model: logit_k = sum over real tokens of e_t . W[:, k]; a token's contribution is exact.
SPLIT = text.split_model(lambda ids: TABLE[ids], lambda e, m: jnp.sum((e @ W) * m[:, None], 0), vocab_size=V)
IDS, MASK = text.pad_batch([[1, 2, 3, 4, 5], [6, 7, 8], [2, 4]], pad_id=0, vocab_size=V)
TARGETS = jnp.array([0, 1, 0])


def test_pack_round_trip():
  xs, ts = text.evaluation_data(SPLIT, IDS, MASK, TARGETS)
  assert xs.shape == (3, 5, 1, D + 2)
  e, m, ids = text.unpack_tokens(xs[1])
  np.testing.assert_array_equal(ids, IDS[1])
  np.testing.assert_array_equal(m, MASK[1])
  np.testing.assert_array_equal(e, TABLE[IDS[1]])
  np.testing.assert_array_equal(ts, TARGETS)


def test_deletion_and_insertion_against_the_additive_closed_form():
  xs, _ = text.evaluation_data(SPLIT, IDS, MASK, TARGETS)
  predict = text.packed_predict(SPLIT, output="logit")
  base = text.baseline_embedding(TABLE, "pad", token_id=0)
  contrib = np.asarray(TABLE[IDS[0]] @ W[:, 0])  # exact token contributions of sequence 0
  bcontrib = float(base @ W[:, 0])
  scores = jnp.asarray(contrib)  # the perfect explanation
  dele = text.token_deletion(predict, xs[0], scores, 0, baseline=base, num_steps=5)
  order = np.argsort(-contrib, kind="stable")
  expected = [contrib.sum() - contrib[order[:k]].sum() + k * bcontrib for k in range(6)]
  np.testing.assert_allclose(dele.scores, expected, rtol=1e-5, atol=1e-5)
  ins = text.token_insertion(predict, xs[0], scores, 0, baseline=base, num_steps=5)
  expected_ins = [contrib[order[:k]].sum() + (5 - k) * bcontrib for k in range(6)]
  np.testing.assert_allclose(ins.scores, expected_ins, rtol=1e-5, atol=1e-5)
  # Sequence 2 has 2 real tokens of 5: padding is never deleted, and fractions count real tokens only.
  short = text.token_deletion(predict, xs[2], jnp.arange(5.0)[::-1], 0, baseline=base, num_steps=2)
  c2 = np.asarray(TABLE[IDS[2][:2]] @ W[:, 0])
  np.testing.assert_allclose(short.scores, [c2.sum(), c2[1] + bcontrib, 2 * bcontrib], rtol=1e-5, atol=1e-5)
  reverse = text.token_deletion(predict, xs[0], -scores, 0, baseline=base, num_steps=5)
  assert float(dele.auc) < float(reverse.auc)  # the right ranking deletes faster


def test_evaluate_on_token_maps():
  xs, ts = text.evaluation_data(SPLIT, IDS, MASK, TARGETS)
  g = jax.grad(text.classifier_fn(SPLIT))
  bounds = text.embedding_bounds(TABLE)
  explainers = {
      "GI": text.packed_explainer(g, reduction="grad_x_input", stochastic=False),
      "A-GI": text.packed_explainer(ag.adapt_smooth(g, 0.95, 4, bounds=bounds), reduction="grad_x_input"),
  }
  base = text.baseline_embedding(TABLE, "mask", token_id=8)
  result = metrics.evaluate(
      explainers,
      {"deletion": text.token_deletion_metric(base, num_steps=4),
       "insertion": text.token_insertion_metric(base, num_steps=4),
       "sparseness": text.token_sparseness_metric(), "random_logit": "random_logit"},
      (xs, ts), jax.random.key(0), predict_fn=text.packed_predict(SPLIT), num_resamples=100,
      metric_options={"random_logit": {"similarity": "spearman"}})
  rows = {(r.explainer, r.metric): r for r in result.summary()}
  assert all(r.n == 3 for r in rows.values())
  maps = np.asarray(result.maps["GI"])
  assert maps.shape == (3, 5, 1) and np.all(maps[~np.asarray(MASK)] == 0.0)
  # GI of an additive model is its exact token contribution: its deletion AUC is the lowest possible ordering's.
  assert rows[("GI", "deletion")].mean <= rows[("A-GI", "deletion")].mean + 1e-6


def _mprt_scores(ids, mask, targets):
  """``scores_fn(params)``: grad x input token scores of a two-layer model whose weights are ``params``."""
  def logit(e, m, p, t):
    return (jnp.sum(jnp.tanh(e @ p["proj"]["w"]) * m[:, None], 0) @ p["head"]["w"])[t]

  def scores_fn(p):
    e = TABLE[ids]
    grads = jax.vmap(jax.grad(logit), (0, 0, None, 0))(e, mask, p, targets)
    return text.token_scores(grads, e, mask, reduction="grad_x_input")

  return scores_fn


def test_token_randomisation_ranks_real_tokens_only():
  scipy_stats = pytest.importorskip("scipy.stats")
  params = {"proj": {"w": jax.random.normal(jax.random.key(5), (D, 4))},
            "head": {"w": jax.random.normal(jax.random.key(6), (4, K))}}
  ids, mask = text.pad_batch([[1, 2, 3, 4, 5, 6], [6, 7, 8, 1], [2, 4, 5]], pad_id=0, vocab_size=V)
  targets = jnp.array([0, 1, 0])
  key = jax.random.key(7)
  got = text.token_randomisation(key, _mprt_scores(ids, mask, targets), params, ["head", "proj"], mask)
  # The reference: the same randomised weights (metrics.randomise_layer, cascading), scipy's Spearman per
  # sequence over its real tokens, mean |rho|.
  ref_scores = np.asarray(_mprt_scores(ids, mask, targets)(params))
  current, expected = params, {}
  for layer, k in zip(["head", "proj"], jax.random.split(key, 2)):
    current = metrics.randomise_layer(k, current, layer)
    rand = np.asarray(_mprt_scores(ids, mask, targets)(current))
    m = np.asarray(mask)
    expected[layer] = np.mean([abs(scipy_stats.spearmanr(a[r], b[r])[0]) for a, b, r in zip(ref_scores, rand, m)])
  assert list(got) == ["head", "proj"]
  np.testing.assert_allclose([got["head"], got["proj"]], [expected["head"], expected["proj"]], rtol=1e-9)
  # Padding does not count: the same sequences padded to twice the length give the same scores.
  ids2, mask2 = text.pad_batch([list(map(int, s[m])) + [0] * 6 for s, m in zip(np.asarray(ids), np.asarray(mask))],
                               pad_id=0, vocab_size=V)
  mask2 = mask2 & (ids2 != 0)
  padded = text.token_randomisation(key, _mprt_scores(ids2, mask2, targets), params, ["head", "proj"], mask2)
  np.testing.assert_allclose([padded["head"], padded["proj"]], [got["head"], got["proj"]], rtol=1e-9)
  # Weights left as they are ("randomised" to themselves) keep every ranking: 1 for each layer.
  same = text.token_randomisation(key, _mprt_scores(ids, mask, targets), params, ["head"], mask,
                                  init=lambda k, x: x)
  assert same == {"head": 1.0}


def test_token_randomisation_errors():
  params = {"proj": {"w": jnp.ones((D, 4))}, "head": {"w": jnp.ones((4, K))}}
  scores_fn = _mprt_scores(IDS, MASK, TARGETS)
  with pytest.raises(ValueError, match="matches no parameter"):
    text.token_randomisation(jax.random.key(0), scores_fn, params, ["decoder"], MASK)
  with pytest.raises(ValueError, match=r"mask has shape \(3, 4\)"):
    text.token_randomisation(jax.random.key(0), scores_fn, params, ["head"], MASK[:, :4])
  with pytest.raises(ValueError, match="mode='top-down'"):
    text.token_randomisation(jax.random.key(0), scores_fn, params, ["head"], MASK, mode="top-down")
