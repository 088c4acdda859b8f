"""Token attribution in embedding space (adaptgrad_jax.text): splits, targets, padding, bounds, scores, errors."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adaptgrad_jax as ag
from adaptgrad_jax import text


V, D, L, K = 11, 4, 6, 3
TABLE = jax.random.normal(jax.random.key(1), (V, D))
W1 = jax.random.normal(jax.random.key(2), (D, 5))
W2 = jax.random.normal(jax.random.key(3), (5, K))
WV = jax.random.normal(jax.random.key(4), (5, V))


def _classifier_forward(e, m):
  h = jnp.tanh(e @ W1) * m[:, None]
  return h.sum(0) @ W2


def _leaky_forward(e, m):
  """A model that IGNORES its mask: every row, padding included, reaches the output."""
  del m
  return jnp.tanh(e @ W1).sum(0) @ W2


def _causal_forward(e, m):
  h = jnp.cumsum(jnp.tanh(e @ W1) * m[:, None], axis=0)  # row t sees tokens <= t
  return h @ WV


SPLIT = text.split_model(lambda ids: TABLE[ids], _classifier_forward, vocab_size=V, max_length=8)
LEAKY = text.split_model(lambda ids: TABLE[ids], _leaky_forward, vocab_size=V, max_length=8)
DECODER = text.split_model(lambda ids: TABLE[ids], _causal_forward, vocab_size=V, max_length=8)
BOUNDS = text.embedding_bounds(TABLE)
IDS, MASK = text.pad_batch([[3, 4, 5, 6, 7, 8], [2, 9, 1], [5]], pad_id=0, vocab_size=V)
X = SPLIT.embeddings(IDS)
TARGETS = jnp.array([0, 2, 1])


def _methods(split):
  f = text.classifier_fn(split)
  g = jax.grad(f)
  sg = ag.smooth_grad(g, 0.2, 8, bounds=BOUNDS)
  ag_fn = ag.adapt_smooth(g, 0.95, 8, bounds=BOUNDS, return_stderr=True)
  pad = text.baseline_embedding(TABLE, "pad", token_id=0)
  return f, {
      "grad": lambda key, *a: g(*a),
      "sg": sg,
      "ag": lambda key, *a: ag_fn(key, *a).value,
      "ig": lambda key, *a: ag.integrated_gradients(g, 8, baseline=pad)(*a),
      "a_ig": ag.integrated_gradients(ag.adapt_smooth(g, 0.95, 4, bounds=BOUNDS), 4, baseline=pad),
      "ng": ag.noise_grad(jax.grad(lambda x, w, *a: f(x * w[0], *a)), 4, sigma=0.1, argnums=1),
  }


@pytest.fixture(scope="module")
def maps():
  """Every method on the padded batch, through a model that ignores its mask; one jit."""
  _, methods = _methods(LEAKY)
  methods.pop("ng")

  @jax.jit
  def run(key):
    return {name: text.explain_batch(fn, key, X, IDS, MASK, TARGETS) for name, fn in methods.items()}

  return run(jax.random.key(0))


def test_padding_scores_exactly_zero_under_every_method(maps):
  for name, m in maps.items():
    assert np.all(np.asarray(m)[~np.asarray(MASK)] == 0.0), name
    assert np.any(np.asarray(m)[np.asarray(MASK)] != 0.0), name
    for reduction in ("grad_x_input", "l2", "sum"):
      s = text.token_scores(m, X, MASK, reduction=reduction)
      assert np.all(np.asarray(s)[~np.asarray(MASK)] == 0.0), (name, reduction)


def test_model_never_sees_noise_on_padding():
  f = text.classifier_fn(LEAKY)
  noise = jax.random.normal(jax.random.key(5), X[1].shape)
  noisy = X[1] + noise
  clean_pad = jnp.where(MASK[1][:, None], noisy, X[1])  # noise on real tokens only
  assert f(noisy, IDS[1], MASK[1], 0) == f(clean_pad, IDS[1], MASK[1], 0)  # bit-exact
  assert _leaky_forward(noisy, MASK[1])[0] != _leaky_forward(clean_pad, MASK[1])[0]  # the model would see it


def test_smoothgrad_matches_a_truncated_sequence_when_the_model_masks(maps):
  # A model that honours its mask gives the real tokens of a padded sequence the gradient of the unpadded one.
  f = text.classifier_fn(SPLIT)
  g_pad = jax.grad(f)(X[1], IDS[1], MASK[1], 2)
  g_short = jax.grad(f)(X[1][:3], IDS[1][:3], None, 2)
  np.testing.assert_allclose(g_pad[:3], g_short, rtol=1e-6)
  assert np.all(np.asarray(g_pad[3:]) == 0.0)


def test_batch_size_invariance_and_per_sequence_keys(maps):
  _, methods = _methods(LEAKY)
  sg = methods["sg"]
  chunked = jax.jit(lambda key: text.explain_batch(sg, key, X, IDS, MASK, TARGETS, batch_size=2))(jax.random.key(0))
  np.testing.assert_allclose(maps["sg"], chunked, rtol=1e-5, atol=1e-6)
  one = jax.jit(sg)(jax.random.split(jax.random.key(0), 3)[1], X[1], IDS[1], MASK[1], TARGETS[1])
  np.testing.assert_allclose(maps["sg"][1], one, rtol=1e-5, atol=1e-6)


def test_integrated_gradients_completeness_with_token_baselines():
  f = text.classifier_fn(SPLIT)
  for kind, token in (("pad", 0), ("zero", None), ("mask", 10)):
    base = text.baseline_embedding(TABLE, kind, token_id=token)
    ig = jax.jit(ag.integrated_gradients(jax.grad(f), 64, baseline=base, method="gauss_legendre"))
    scores = text.token_scores(ig(X[1], IDS[1], MASK[1], 2), mask=MASK[1], reduction="sum")
    expected = f(X[1], IDS[1], MASK[1], 2) - f(jnp.broadcast_to(base, X[1].shape), IDS[1], MASK[1], 2)
    np.testing.assert_allclose(jnp.sum(scores), expected, rtol=1e-4, atol=1e-5)


def test_noise_grad_composes():
  f, methods = _methods(SPLIT)
  del f
  w = jnp.ones(3)
  out = jax.jit(methods["ng"])(jax.random.key(0), X[1], w, IDS[1], MASK[1], 2)
  assert np.all(np.asarray(out)[~np.asarray(MASK[1])] == 0.0)


# ----------------------------------------------------------------------------
# Token scores.


def test_token_scores_closed_forms_and_stderr_bounds():
  g = jax.random.normal(jax.random.key(8), (L, D))
  se = jnp.abs(jax.random.normal(jax.random.key(9), (L, D)))
  x = X[0]
  m = jnp.array([True] * 4 + [False] * 2)
  est = ag.Estimate(g, se, jnp.int32(8))
  gi = text.token_scores(est, x, m)
  np.testing.assert_allclose(gi.value[:4], np.sum(np.asarray(g) * np.asarray(x), -1)[:4], rtol=1e-6)
  np.testing.assert_allclose(gi.stderr[:4], np.sum(np.asarray(se) * np.abs(np.asarray(x)), -1)[:4], rtol=1e-6)
  l2 = text.token_scores(est, mask=m, reduction="l2")
  np.testing.assert_allclose(l2.value[:4], np.linalg.norm(np.asarray(g), axis=-1)[:4], rtol=1e-6)
  np.testing.assert_allclose(l2.stderr[:4], np.linalg.norm(np.asarray(se), axis=-1)[:4], rtol=1e-6)
  for s in (gi.value, gi.stderr, l2.value, l2.stderr):
    assert np.all(np.asarray(s)[4:] == 0.0)
  # The Minkowski bound holds for perfectly correlated element errors, where it is attained.
  z = jax.random.normal(jax.random.key(10), (4000, 1, 1))
  draws = g + se * jnp.sign(x) * z  # every element's error moves together, in the direction of its x
  spread = np.std(np.sum(np.asarray(draws) * np.asarray(x), -1), axis=0)
  np.testing.assert_allclose(spread[:4], gi.stderr[:4], rtol=0.05)


def test_token_scores_errors():
  with pytest.raises(ValueError, match="reduction="):
    text.token_scores(X[0], X[0], reduction="max")
  with pytest.raises(ValueError, match="needs embeddings="):
    text.token_scores(X[0])
  with pytest.raises(ValueError, match="mask has shape"):
    text.token_scores(X[0], X[0], jnp.ones(5, bool))


# ----------------------------------------------------------------------------
# Bounds.


def test_embedding_bounds_box_and_quantiles():
  lo, hi = BOUNDS
  np.testing.assert_array_equal(lo, np.min(np.asarray(TABLE), 0))
  np.testing.assert_array_equal(hi, np.max(np.asarray(TABLE), 0))
  ag.check_bounds(TABLE, BOUNDS)  # every token lies in the box
  ag.check_bounds(X, BOUNDS)
  qlo, qhi = text.embedding_bounds(TABLE, quantile=0.1)
  np.testing.assert_allclose(qlo, np.quantile(np.asarray(TABLE), 0.1, axis=0), rtol=1e-6)
  np.testing.assert_allclose(qhi, np.quantile(np.asarray(TABLE), 0.9, axis=0), rtol=1e-6)
  with pytest.raises(ValueError, match="outside bounds"):
    ag.check_bounds(TABLE, (qlo, qhi))  # the tokens beyond the quantiles
  # AdaptGrad keeps the noisy elements in the box with probability >= c; SmoothGrad does not.
  key = jax.random.key(11)
  sigma_ag = ag.adaptive_sigma(X[0], 0.95, bounds=BOUNDS)
  rate_ag = ag.out_of_range_rate(key, X[0], sigma_ag, 200, bounds=BOUNDS)
  rate_sg = ag.out_of_range_rate(key, X[0], ag.smoothgrad_sigma(0.3, bounds=BOUNDS), 200, bounds=BOUNDS)
  expected_ag = float(jnp.mean(ag.inherent_noise(X[0], sigma_ag, bounds=BOUNDS)))
  assert expected_ag <= 0.05 + 1e-6
  assert abs(float(rate_ag.per_element) - expected_ag) < 0.02
  assert float(rate_sg.per_element) > float(rate_ag.per_element)


def test_constant_dimension_is_refused_or_widened():
  table = TABLE.at[:, 2].set(0.5)
  with pytest.raises(ValueError, match=r"constant dimension.*dimension 2.*min_width"):
    text.embedding_bounds(table)
  lo, hi = text.embedding_bounds(table, min_width=0.1)
  np.testing.assert_allclose([lo[2], hi[2]], [0.45, 0.55], rtol=1e-6)
  np.testing.assert_allclose(lo[0], jnp.min(TABLE[:, 0]), rtol=1e-6)  # wider dimensions unchanged
  with pytest.raises(ValueError, match="quantile="):
    text.embedding_bounds(TABLE, quantile=0.5)
  with pytest.raises(ValueError, match="table has shape"):
    text.embedding_bounds(TABLE[0])
  with pytest.raises(ValueError, match="needs token_id"):
    text.baseline_embedding(TABLE, "mask")


# ----------------------------------------------------------------------------
# Decoder targets.


def _log_probs_reference(ids, mask, start):
  """log p of each continuation token, by numpy, position by position."""
  ids, mask = np.asarray(ids), np.asarray(mask)
  out = np.zeros(len(ids))
  logits = np.asarray(_causal_forward(TABLE[ids], jnp.asarray(mask)), np.float64)
  for t in range(start, len(ids)):
    if mask[t]:
      row = logits[t - 1]
      out[t] = row[ids[t]] - np.log(np.sum(np.exp(row - row.max()))) - row.max()
  return out


def test_continuation_log_prob_and_per_token_matrix():
  tf = text.teacher_forcing([3, 4], [5, 6, 7], split=DECODER, length=7)
  x = DECODER.embeddings(tf.ids)
  per = text.continuation_fn(DECODER, per_token=True)
  total = text.continuation_fn(DECODER)
  ref = _log_probs_reference(tf.ids, tf.mask, 2)
  np.testing.assert_allclose(per(x, tf.ids, tf.mask, tf.start), ref, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(total(x, tf.ids, tf.mask, tf.start), ref.sum(), rtol=1e-5)
  jac = jax.jit(jax.jacrev(per))(x, tf.ids, tf.mask, tf.start)  # (L_out, L_in, D)
  matrix = text.token_scores(jac, x, tf.mask)
  assert matrix.shape == (7, 7)
  m = np.asarray(matrix)
  assert np.all(m[:2] == 0) and np.all(m[5:] == 0)  # prompt and padding rows: no generated token
  assert np.all(m[:, 5:] == 0)  # padded input tokens
  for t in range(2, 5):
    assert np.all(m[t, t:] == 0) and np.any(m[t, :t] != 0)  # causal: token t depends on tokens < t
  grad_total = jax.grad(total)(x, tf.ids, tf.mask, tf.start)
  np.testing.assert_allclose(jnp.sum(jac, 0), grad_total, rtol=1e-5, atol=1e-6)
  # Smoothing the Jacobian: every transform applies to jax.jacrev(f) as to jax.grad(f).
  smoothed = jax.jit(ag.adapt_smooth(jax.jacrev(per), 0.95, 4, bounds=BOUNDS))(
      jax.random.key(0), x, tf.ids, tf.mask, tf.start)
  assert smoothed.shape == jac.shape and np.all(np.asarray(smoothed)[:, 5:] == 0)
  # Padding ids do not matter (the attention mask is respected).
  other = tf.ids.at[5:].set(9)
  np.testing.assert_allclose(total(DECODER.embeddings(other), other, tf.mask, tf.start),
                             total(x, tf.ids, tf.mask, tf.start), rtol=1e-6)


# ----------------------------------------------------------------------------
# NNX and Equinox.


def test_nnx_split_equals_the_model():
  from flax import nnx
  model = text.TinyEncoder(text.TinyEncoderConfig(vocab_size=V, max_length=8, dim=8, num_layers=1),
                           rngs=nnx.Rngs(0))
  split = text.nnx_split(model, vocab_size=V, max_length=8)
  ids, mask = IDS[1], MASK[1]
  f = text.classifier_fn(split)

  @jax.jit
  def both(ids, mask):
    return split(ids, mask), model(ids[None], attention_mask=mask[None])[0], jax.grad(f)(
        split.embed(ids), ids, mask, 1)

  mine, theirs, g = both(ids, mask)
  np.testing.assert_allclose(mine, theirs, rtol=1e-6)
  assert np.all(np.asarray(g)[~np.asarray(mask)] == 0.0)
  with pytest.raises(TypeError, match="not a method"):
    text.nnx_split(model, vocab_size=V, embed="lookup")


def test_eqx_split():
  import equinox as eqx
  emb = eqx.nn.Embedding(V, D, key=jax.random.key(0))
  split = text.eqx_split(emb, embed=lambda m, ids: jax.vmap(m)(ids), forward=lambda m, e, mask: _classifier_forward(
      e, mask), vocab_size=V)
  np.testing.assert_allclose(split.embeddings(IDS[0]), emb.weight[IDS[0]])


# ----------------------------------------------------------------------------
# Bad input.


def test_bad_input_errors_name_the_argument_and_the_fix():
  with pytest.raises(ValueError, match=r"ids\[0, 2\] = 11 is not a token id.*vocab_size=11"):
    SPLIT.embeddings(jnp.array([[1, 2, 11]]))
  with pytest.raises(TypeError, match="must be integers"):
    SPLIT.embeddings(jnp.array([1.0, 2.0]))
  with pytest.raises(ValueError, match="empty sequence"):
    SPLIT.embeddings(jnp.zeros((0,), jnp.int32))
  with pytest.raises(ValueError, match="sequences\\[1\\] is empty"):
    text.pad_batch([[1, 2], []])
  f = text.classifier_fn(SPLIT)
  with pytest.raises(ValueError, match=r"mask has shape \(5,\) but the tokens have shape \(6,\)"):
    f(X[0], IDS[0], jnp.ones(5, bool), 0)
  with pytest.raises(ValueError, match="empty sequence"):
    f(jnp.zeros((0, D)), jnp.zeros((0,), jnp.int32), None, 0)
  with pytest.raises(ValueError, match="continuation is empty"):
    text.teacher_forcing([1, 2], [], split=DECODER)
  with pytest.raises(ValueError, match="prompt is empty"):
    text.teacher_forcing([], [1], split=DECODER)
  with pytest.raises(ValueError, match=r"need 9 positions but the model's context is max_length=8"):
    text.teacher_forcing([1, 2, 3, 4], [5, 6, 7, 8, 9], split=DECODER)
  with pytest.raises(ValueError, match="not a token id"):
    text.teacher_forcing([1, 2], [V + 3], split=DECODER)
  with pytest.raises(ValueError, match="max_length=8"):
    SPLIT.embeddings(jnp.ones(9, jnp.int32))
  with pytest.raises(ValueError, match="start=0"):
    text.continuation_fn(DECODER)(X[0], IDS[0], None, 0)


def test_the_library_text_models_split_and_explain():
  from flax import nnx
  from adaptgrad_jax import models
  # One block each (the tiny presets have two): the same code paths at half the compile time. The graphs
  # come from nnx.eval_shape and the weights from NumPy: eager initialisation compiled a program per shape.
  rng = np.random.default_rng(0)

  def build(make):
    graphdef, state = nnx.split(nnx.eval_shape(make))
    return nnx.merge(graphdef, jax.tree.map(lambda a: jnp.asarray(0.3 * rng.standard_normal(a.shape), a.dtype), state))

  bert = build(lambda: models.bert(dataclasses.replace(models.BERT_TINY, num_hidden_layers=1), rngs=nnx.Rngs(0)))
  gpt = build(lambda: models.gpt2(dataclasses.replace(models.GPT2_TINY, n_layer=1), rngs=nnx.Rngs(1)))
  b_split = text.nnx_split(bert, vocab_size=64, max_length=32)
  g_split = text.nnx_split(gpt, vocab_size=64, max_length=32)
  ids, mask = text.pad_batch([[5, 6, 7, 8], [9, 10]], pad_id=0, vocab_size=64)
  tf = text.teacher_forcing([5, 6, 7], [8, 9], split=g_split, length=6)
  b_bounds = text.embedding_bounds(bert.embedding_table)
  g_bounds = text.embedding_bounds(gpt.embedding_table)

  @jax.jit
  def run(key):
    x = b_split.embed(ids[1])
    cls = ag.adapt_smooth(jax.grad(text.classifier_fn(b_split)), 0.95, 4, bounds=b_bounds)(key, x, ids[1], mask[1], 2)
    y = g_split.embed(tf.ids)
    per = text.continuation_fn(g_split, per_token=True)
    jac = jax.jacrev(per)(y, tf.ids, tf.mask, tf.start)
    smooth = ag.smooth_grad(jax.grad(text.continuation_fn(g_split)), 0.2, 4, bounds=g_bounds)(
        key, y, tf.ids, tf.mask, tf.start)
    theirs = gpt(tf.ids[None], attention_mask=tf.mask[None])[0]
    return cls, text.token_scores(jac, y, tf.mask), smooth, g_split(tf.ids, tf.mask), theirs

  cls, matrix, smooth, mine, theirs = run(jax.random.key(0))
  assert np.all(np.asarray(cls)[2:] == 0.0) and np.any(np.asarray(cls)[:2] != 0.0)
  m = np.asarray(matrix)
  for t in (3, 4):
    assert np.all(m[t, t:] == 0) and np.any(m[t, :t] != 0)  # GPT-2 is causal; padding column 5 is 0
  assert np.all(np.asarray(smooth)[5] == 0.0)
  np.testing.assert_allclose(mine, theirs, rtol=1e-5, atol=1e-6)


def test_expected_gradients_and_rtol_compose():
  f = text.classifier_fn(SPLIT)
  g = jax.grad(f)
  random_ids = jax.random.randint(jax.random.key(12), (4, L), 1, V)
  eg = ag.expected_gradients(g, 8, baselines=TABLE[random_ids])           # token sequences as baselines
  sg = ag.smooth_grad(g, 0.2, 64, bounds=BOUNDS, batch_size=8, rtol=0.5)  # stops when precise enough

  @jax.jit
  def run(key):
    return eg(key, X[1], IDS[1], MASK[1], 2), sg(key, X[1], IDS[1], MASK[1], 2)

  eg_map, est = run(jax.random.key(0))
  assert np.all(np.asarray(eg_map)[3:] == 0.0) and np.any(np.asarray(eg_map)[:3] != 0.0)
  scores = text.token_scores(est, X[1], MASK[1])
  assert 16 <= int(scores.num_samples) <= 64
  assert np.all(np.asarray(scores.stderr)[3:] == 0.0) and np.all(np.asarray(scores.stderr)[:3] > 0.0)
