"""The GPT-2 and BERT ports against `transformers`' PyTorch models, in float64.

`transformers` builds ``GPT2LMHeadModel`` and ``BertForSequenceClassification``
from small random configs (no hub access), in evaluation mode with dropout 0
and eager attention; every parameter is perturbed so that LayerNorms and
biases are not at their initial 1 / 0. The state dicts load into the ports by
name; logits and the gradients of a target with respect to the input
embeddings (torch autograd on ``inputs_embeds``) must agree to float64
rounding, with padding attention masks (right and left padding).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from adaptgrad_jax import models

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


TOL = 1e-10  # max abs difference, float64; the values are O(1)

# Two sequences of length 7: the first right-padded (2 pads), the second left-padded (3 pads).
IDS = np.array([[5, 17, 3, 29, 11, 0, 0], [0, 0, 0, 8, 40, 2, 33]])
MASK = np.array([[1, 1, 1, 1, 1, 0, 0], [0, 0, 0, 1, 1, 1, 1]], bool)
# BERT pools the first token, so its batches are right-padded (as its tokenizers do).
BERT_MASK = np.array([[1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1, 0]], bool)


def _perturbed(model, seed):
  torch.manual_seed(seed)
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.1 * torch.randn_like(p))
  return model.double().eval()


@pytest.fixture(scope="module")
def gpt2_pair():
  config = transformers.GPT2Config(vocab_size=48, n_positions=10, n_embd=16, n_layer=2, n_head=4,
                                   resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0,
                                   eos_token_id=0, attn_implementation="eager")
  ref = _perturbed(transformers.GPT2LMHeadModel(config), 0)
  with jax.enable_x64(True):
    model = models.gpt2(models.GPT2Config.from_transformers(config), weights=ref.state_dict(),
                        param_dtype=jnp.float64, rngs=nnx.Rngs(0))
  return ref, model


@pytest.fixture(scope="module")
def bert_pair():
  config = transformers.BertConfig(vocab_size=48, hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
                                   intermediate_size=24, max_position_embeddings=10, num_labels=3,
                                   hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                                   attn_implementation="eager")
  ref = _perturbed(transformers.BertForSequenceClassification(config), 1)
  with jax.enable_x64(True):
    model = models.bert(models.BertConfig.from_transformers(config), weights=ref.state_dict(),
                        param_dtype=jnp.float64, rngs=nnx.Rngs(0))
  return ref, model


def _torch_grad(forward, embeds, objective):
  embeds = torch.tensor(np.asarray(embeds), requires_grad=True)
  out = forward(embeds)
  objective(out).backward()
  return out.detach().numpy(), embeds.grad.numpy()


def test_gpt2_logits_and_embedding_gradients_match_transformers(gpt2_pair):
  ref, model = gpt2_pair
  positions = np.asarray(models.positions_from_mask(MASK))  # left padding: each sequence starts at position 0
  targets = np.array([[4, 7], [6, 21]])  # (position, next token) per sequence: the last real token's prediction
  with jax.enable_x64(True):
    embeds = model.embed(IDS)

    @jax.jit
    def logits_and_grad(e):
      def objective(e):
        logits = model.forward_from_embeddings(e, MASK, position_ids=positions)
        logp = jax.nn.log_softmax(logits, axis=-1)
        return logp[jnp.arange(2), targets[:, 0], targets[:, 1]].sum(), logits

      return jax.grad(objective, has_aux=True)(e)[::-1]

    logits, grad = logits_and_grad(embeds)
  assert embeds.dtype == logits.dtype == grad.dtype == jnp.float64
  np.testing.assert_array_equal(embeds, ref.transformer.wte.weight.detach().numpy()[IDS])

  def forward(e):
    return ref(inputs_embeds=e, attention_mask=torch.from_numpy(MASK.astype(np.int64)),
               position_ids=torch.from_numpy(positions.astype(np.int64))).logits

  def objective(logits):
    logp = torch.log_softmax(logits, -1)
    return logp[torch.arange(2), torch.from_numpy(targets[:, 0]), torch.from_numpy(targets[:, 1])].sum()

  ref_logits, ref_grad = _torch_grad(forward, embeds, objective)
  assert np.max(np.abs(np.asarray(logits) - ref_logits)[MASK]) < TOL  # padded positions' outputs are meaningless
  assert np.max(np.abs(np.asarray(grad) - ref_grad)) < TOL
  assert np.max(np.abs(ref_grad)) > 1e-2  # a gradient worth comparing
  assert np.all(np.asarray(grad)[~MASK] == 0.0)  # padding: exactly no gradient


def test_gpt2_default_positions_and_unbatched_input(gpt2_pair):
  """Without position_ids both sides number 0 .. L-1; one sequence without a batch axis gives its row."""
  ref, model = gpt2_pair
  with jax.enable_x64(True):
    logits = jax.jit(lambda i, m: model(i, m))(IDS, MASK)
    single = jax.jit(lambda i, m: model(i, m))(IDS[0], MASK[0])
  with torch.no_grad():
    ref_logits = ref(input_ids=torch.from_numpy(IDS), attention_mask=torch.from_numpy(MASK.astype(np.int64))).logits
  assert np.max(np.abs(np.asarray(logits) - ref_logits.numpy())[MASK]) < TOL
  np.testing.assert_allclose(single, logits[0], rtol=0, atol=1e-13)
  # logits_to_keep: the last positions only, as in transformers (the last block computes less, same values)
  with jax.enable_x64(True):
    last = jax.jit(lambda i, m: model(i, m, logits_to_keep=3))(IDS, MASK)
    with pytest.raises(ValueError, match=r"logits_to_keep=8 must be None or 0 \(every position\)"):
      model(IDS, MASK, logits_to_keep=8)
  np.testing.assert_allclose(last, logits[:, -3:], rtol=0, atol=1e-13)


def test_bert_logits_and_embedding_gradients_match_transformers(bert_pair):
  ref, model = bert_pair
  token_types = np.array([[0, 0, 0, 1, 1, 0, 0], [0, 0, 0, 0, 1, 1, 1]])
  weights = np.array([[0.3, -1.2, 0.8], [1.0, 0.5, -0.7]])  # a weighted sum of all logits
  with jax.enable_x64(True):
    embeds = model.embed(IDS)

    @jax.jit
    def logits_and_grad(e):
      def objective(e):
        logits = model.forward_from_embeddings(e, BERT_MASK, token_type_ids=token_types)
        return jnp.sum(logits * weights), logits

      return jax.grad(objective, has_aux=True)(e)[::-1]

    logits, grad = logits_and_grad(embeds)
  assert logits.dtype == grad.dtype == jnp.float64

  def forward(e):
    return ref(inputs_embeds=e, attention_mask=torch.from_numpy(BERT_MASK.astype(np.int64)),
               token_type_ids=torch.from_numpy(token_types)).logits

  ref_logits, ref_grad = _torch_grad(forward, embeds, lambda out: (out * torch.from_numpy(weights)).sum())
  assert np.max(np.abs(np.asarray(logits) - ref_logits)) < TOL
  assert np.max(np.abs(np.asarray(grad) - ref_grad)) < TOL
  assert np.max(np.abs(ref_grad)) > 1e-2
  assert np.all(np.asarray(grad)[~BERT_MASK] == 0.0)


def test_state_dict_variants_load():
  """A GPT2Model checkpoint (no ``transformer.`` prefix, old causal-mask buffers) loads; BERT's buffers are dropped."""
  config = transformers.GPT2Config(vocab_size=20, n_positions=8, n_embd=8, n_layer=1, n_head=2, bos_token_id=0,
                                   eos_token_id=0)
  ref = transformers.GPT2LMHeadModel(config)
  base = {k.removeprefix("transformer."): v for k, v in ref.state_dict().items() if k != "lm_head.weight"}
  base["h.0.attn.bias"] = torch.ones(1, 1, 8, 8)
  ours = models.gpt2(models.GPT2Config.from_transformers(config), weights=base, rngs=nnx.Rngs(0))
  np.testing.assert_array_equal(ours.transformer.h[0].attn.c_attn.kernel[...],
                                ref.transformer.h[0].attn.c_attn.weight.detach().numpy())  # Conv1D: (in, out)
  bert_config = transformers.BertConfig(vocab_size=20, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                        intermediate_size=8, max_position_embeddings=8)
  state = dict(transformers.BertForSequenceClassification(bert_config).state_dict())
  state["bert.embeddings.position_ids"] = torch.arange(8)[None]
  models.bert(models.BertConfig.from_transformers(bert_config), weights=state, rngs=nnx.Rngs(0))


def test_unsupported_weights_and_configs_are_refused():
  config = transformers.GPT2Config(vocab_size=20, n_positions=8, n_embd=8, n_layer=1, n_head=2, bos_token_id=0,
                                   eos_token_id=0)
  state = dict(transformers.GPT2LMHeadModel(config).state_dict())
  state["lm_head.weight"] = state["lm_head.weight"] + 1.0
  with pytest.raises(ValueError, match="lm_head.weight differs"):
    models.gpt2(models.GPT2Config.from_transformers(config), weights=state, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="activation_function='relu'"):
    models.GPT2Config.from_transformers({"activation_function": "relu"})
  with pytest.raises(ValueError, match="position_embedding_type='relative_key'"):
    models.BertConfig.from_transformers({"position_embedding_type": "relative_key"})
  with pytest.raises(ValueError, match="missing keys"):  # a BERT checkpoint without the classifier
    models.bert(models.BERT_TINY, weights={"bert.pooler.dense.bias": np.zeros(16)}, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="divisible"):
    models.GPT2Config(n_embd=10, n_head=3)


def test_bad_inputs_get_clear_errors():
  model = nnx.eval_shape(lambda: models.gpt2(models.GPT2_TINY, rngs=nnx.Rngs(0)))
  with pytest.raises(ValueError, match=r"outside the vocabulary \[0, 64\), e.g. 64"):
    model.embed(jnp.array([[1, 64]]))
  with pytest.raises(TypeError, match="integer token ids"):
    model.embed(jnp.ones((1, 3)))
  with pytest.raises(ValueError, match="empty sequence"):
    model.embed(jnp.zeros((1, 0), jnp.int32))
  embeds = jax.ShapeDtypeStruct((1, 3, 16), jnp.float32)
  with pytest.raises(ValueError, match=r"attention_mask has shape \(1, 4\) but the tokens have shape \(1, 3\)"):
    jax.eval_shape(lambda e: model.forward_from_embeddings(e, jnp.ones((1, 4), bool)), embeds)
  with pytest.raises(TypeError, match="attention_mask must be boolean"):
    jax.eval_shape(lambda e: model.forward_from_embeddings(e, jnp.ones((1, 3))), embeds)
  with pytest.raises(ValueError, match="33 tokens but the model has 32 position embeddings; truncate"):
    jax.eval_shape(model.forward_from_embeddings, jax.ShapeDtypeStruct((1, 33, 16), jnp.float32))
  with pytest.raises(ValueError, match=r"embeds must have shape \(batch, length, 16\)"):
    jax.eval_shape(model.forward_from_embeddings, jax.ShapeDtypeStruct((1, 3, 8), jnp.float32))
  with pytest.raises(ValueError, match="token_type_ids must lie in"):
    bert = nnx.eval_shape(lambda: models.bert(models.BERT_TINY, rngs=nnx.Rngs(0)))
    jax.eval_shape(lambda e: bert.forward_from_embeddings(e, token_type_ids=np.array([[0, 2, 0]])), embeds)


def test_bench_text_quick_runs_and_agrees_with_captum():
  """The benchmark's harness at a tiny size: IG on the port equals Captum's LayerIntegratedGradients (float32)."""
  pytest.importorskip("captum")
  from benchmarks import bench_text  # pylint: disable=import-outside-toplevel

  result = bench_text.main(["--quick", "--threads", "0"])
  records = {r["method"]: r for r in result["records"]}
  assert set(records) == {"ig", "smoothgrad"}
  assert records["ig"]["agreement_with_captum"]["relative_l2"] < 1e-4
  assert records["ig"]["agreement_ours_limit"]["relative_l2"] < 1e-4
  assert set(records["smoothgrad"]["ms"]) == {"ours", "limit", "captum"}


def test_ports_plug_into_the_text_api():
  """`text.nnx_split` takes the ports as they are: a BERT logit and a GPT-2 continuation's log-probability."""
  import adaptgrad_jax as ag  # pylint: disable=import-outside-toplevel
  from adaptgrad_jax import text  # pylint: disable=import-outside-toplevel

  # One block each (the tiny presets have two): the same code paths at half the compile time. The graphs
  # come from nnx.eval_shape and the weights from NumPy: eager initialisation compiled a program per shape.
  rng = np.random.default_rng(0)

  def build(make):
    graphdef, state = nnx.split(nnx.eval_shape(make))
    return nnx.merge(graphdef, jax.tree.map(lambda a: jnp.asarray(0.3 * rng.standard_normal(a.shape), a.dtype), state))

  bert = build(lambda: models.bert(dataclasses.replace(models.BERT_TINY, num_hidden_layers=1), rngs=nnx.Rngs(0)))
  split = text.nnx_split(bert, vocab_size=64, max_length=32)
  ids, mask = text.pad_batch([[2, 7, 9, 3], [2, 5, 3]], pad_id=0, vocab_size=64)
  x = split.embeddings(ids)
  f = text.classifier_fn(split)
  sg = ag.adapt_smooth(jax.grad(f), 0.95, 4, bounds=text.embedding_bounds(bert.embedding_table))
  maps, logits = jax.jit(lambda key: (text.explain_batch(sg, key, x, ids, mask, jnp.array([1, 2])),
                                      bert.forward_from_embeddings(x, mask)))(jax.random.key(0))
  np.testing.assert_allclose(jax.jit(jax.vmap(f))(x, ids, mask, jnp.array([1, 2])), logits[jnp.arange(2), [1, 2]],
                             rtol=1e-5)
  assert np.all(np.asarray(text.token_scores(maps, x, mask))[1, 3:] == 0.0)

  gpt2 = build(lambda: models.gpt2(dataclasses.replace(models.GPT2_TINY, n_layer=1), rngs=nnx.Rngs(0)))
  split = text.nnx_split(gpt2, vocab_size=64, max_length=32)
  tf = text.teacher_forcing([5, 9, 11], [4, 7], split=split, length=7)
  x = split.embeddings(tf.ids)
  log_p, grad = jax.jit(jax.value_and_grad(text.continuation_fn(split)))(x, tf.ids, tf.mask, tf.start)
  logp = jax.nn.log_softmax(gpt2.forward_from_embeddings(x[None], tf.mask[None])[0], axis=-1)
  np.testing.assert_allclose(log_p, logp[2, 4] + logp[3, 7], rtol=1e-5)
  assert np.all(np.asarray(grad)[5:] == 0.0)  # the padding after the continuation


def test_save_pretrained_folder_loads_without_torch(tmp_path):
  """``save_pretrained``'s config.json and model.safetensors load through the config dicts and read_checkpoint."""
  import json  # pylint: disable=import-outside-toplevel

  config = transformers.GPT2Config(vocab_size=20, n_positions=8, n_embd=8, n_layer=1, n_head=2, bos_token_id=0,
                                   eos_token_id=0)
  bert_config = transformers.BertConfig(vocab_size=20, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                        intermediate_size=8, max_position_embeddings=8, num_labels=3)
  ids = np.array([[1, 5, 7, 2]])
  for name, ref, build in (("gpt2", transformers.GPT2LMHeadModel(config).eval(), models.gpt2),
                           ("bert", transformers.BertForSequenceClassification(bert_config).eval(), models.bert)):
    ref.save_pretrained(tmp_path / name)
    cfg_dict = json.loads((tmp_path / name / "config.json").read_text())
    cfg = (models.GPT2Config if name == "gpt2" else models.BertConfig).from_transformers(cfg_dict)
    ours = build(cfg, weights=tmp_path / name / "model.safetensors", rngs=nnx.Rngs(0))
    with torch.no_grad():
      expected = ref(input_ids=torch.from_numpy(ids)).logits.numpy()
    np.testing.assert_allclose(jax.jit(lambda i, m=ours: m(i))(ids), expected, rtol=1e-4, atol=1e-5)
