"""Token attribution in embedding space: explaining sequence models with every transform of the library.

Tokens are discrete, so smoothing happens in embedding space. A model that
takes token ids is cut at its embedding lookup (:func:`split_model` for any
two functions, :func:`nnx_split` for a Flax NNX model, :func:`eqx_split` for an
Equinox model); a target (:func:`classifier_fn`, :func:`continuation_fn`) is
then a scalar function of the embeddings, and AdaptGrad's data domain is the
box spanned by the embedding table (:func:`embedding_bounds`):

>>> import adaptgrad_jax as ag
>>> from adaptgrad_jax import text
>>> table = jax.random.normal(jax.random.key(0), (12, 4))           # a model's embedding table
>>> w = jax.random.normal(jax.random.key(1), (4, 3))
>>> forward = lambda e, m: jnp.sum(jnp.tanh(e @ w) * m[:, None], 0)  # embeddings, mask -> logits
>>> split = text.split_model(lambda ids: table[ids], forward, vocab_size=12)   # or text.nnx_split(model, ...)
>>> ids, mask = text.pad_batch([[3, 4, 5, 6], [7, 8]], pad_id=0, vocab_size=12)
>>> x = split.embeddings(ids)                                     # (2, 4, 4)
>>> f = text.classifier_fn(split)                                 # f(embeds, ids, mask, target)
>>> ag_fn = ag.adapt_smooth(jax.grad(f), 0.95, 4, bounds=text.embedding_bounds(table))
>>> explain = jax.jit(lambda key, *args: text.explain_batch(ag_fn, key, *args))
>>> maps = explain(jax.random.key(0), x, ids, mask, jnp.array([1, 2]))
>>> scores = text.token_scores(maps, x, mask)                     # (2, 4) grad x input per token
>>> scores.shape, scores[1, 2:].tolist()                          # padding scores exactly 0
((2, 4), [0.0, 0.0])

Padded positions get no noise the model could see and score exactly 0 (see
:mod:`adaptgrad_jax.text` targets). The guide is ``docs/sequences.md``.
"""

from adaptgrad_jax.text._bounds import baseline_embedding as baseline_embedding
from adaptgrad_jax.text._bounds import embedding_bounds as embedding_bounds
from adaptgrad_jax.text._demo import DemoText as DemoText
from adaptgrad_jax.text._demo import TextTask as TextTask
from adaptgrad_jax.text._demo import demo_classifier as demo_classifier
from adaptgrad_jax.text._demo import synthetic_task as synthetic_task
from adaptgrad_jax.text._evaluation import evaluation_data as evaluation_data
from adaptgrad_jax.text._evaluation import pack_tokens as pack_tokens
from adaptgrad_jax.text._evaluation import packed_explainer as packed_explainer
from adaptgrad_jax.text._evaluation import packed_predict as packed_predict
from adaptgrad_jax.text._evaluation import token_deletion as token_deletion
from adaptgrad_jax.text._evaluation import token_deletion_metric as token_deletion_metric
from adaptgrad_jax.text._evaluation import token_insertion as token_insertion
from adaptgrad_jax.text._evaluation import token_insertion_metric as token_insertion_metric
from adaptgrad_jax.text._evaluation import token_randomisation as token_randomisation
from adaptgrad_jax.text._evaluation import token_sparseness_metric as token_sparseness_metric
from adaptgrad_jax.text._evaluation import unpack_tokens as unpack_tokens
from adaptgrad_jax.text._embedding import EmbeddingSplit as EmbeddingSplit
from adaptgrad_jax.text._embedding import TeacherForcing as TeacherForcing
from adaptgrad_jax.text._embedding import check_token_ids as check_token_ids
from adaptgrad_jax.text._embedding import classifier_fn as classifier_fn
from adaptgrad_jax.text._embedding import continuation_fn as continuation_fn
from adaptgrad_jax.text._embedding import eqx_split as eqx_split
from adaptgrad_jax.text._embedding import nnx_split as nnx_split
from adaptgrad_jax.text._embedding import pad_batch as pad_batch
from adaptgrad_jax.text._embedding import split_model as split_model
from adaptgrad_jax.text._embedding import teacher_forcing as teacher_forcing
from adaptgrad_jax.text._encoder import TinyEncoder as TinyEncoder
from adaptgrad_jax.text._encoder import TinyEncoderConfig as TinyEncoderConfig
from adaptgrad_jax.text._scores import explain_batch as explain_batch
from adaptgrad_jax.text._scores import token_scores as token_scores
from adaptgrad_jax.text._viz import save_html as save_html
from adaptgrad_jax.text._viz import token_heatmap_html as token_heatmap_html
from adaptgrad_jax.text._viz import token_heatmap_png as token_heatmap_png

__all__ = (
    "DemoText",
    "EmbeddingSplit",
    "TeacherForcing",
    "TextTask",
    "TinyEncoder",
    "TinyEncoderConfig",
    "baseline_embedding",
    "check_token_ids",
    "classifier_fn",
    "continuation_fn",
    "demo_classifier",
    "embedding_bounds",
    "eqx_split",
    "evaluation_data",
    "explain_batch",
    "nnx_split",
    "pack_tokens",
    "packed_explainer",
    "packed_predict",
    "pad_batch",
    "save_html",
    "split_model",
    "synthetic_task",
    "teacher_forcing",
    "token_deletion",
    "token_deletion_metric",
    "token_heatmap_html",
    "token_heatmap_png",
    "token_insertion",
    "token_insertion_metric",
    "token_randomisation",
    "token_scores",
    "token_sparseness_metric",
    "unpack_tokens",
)
