"""The text demo: a synthetic classification task whose deciding tokens are known, and a small encoder trained on it.

The task (:func:`synthetic_task`). A vocabulary of 48 tokens: ``[PAD]`` (0),
``[MASK]`` (1), four *marker* tokens ``A B C D`` (2-5), four *decoys*
``a b c d`` (6-9) and 38 *distractors* (10-47). A sequence has 8 to 32
tokens; its class ``y`` in 0..3 is decided by marker ``y``, which occurs one
to three times at random positions. Every other position is a distractor, or
(with probability 0.15) a decoy, which occurs in every class and carries no
information. The ground truth of an explanation is the positions of the
deciding marker: the only tokens the label depends on.

The model (:func:`demo_classifier`): :class:`TinyEncoder` (2 blocks, width
32, 2 heads, about 27,000 parameters) trained with AdamW for a few hundred
steps, seconds on a CPU; it is cached under
``$ADAPTGRAD_JAX_CACHE/demo/text-<hash>/`` (default ``~/.cache/adaptgrad_jax``)
by a hash of its settings, written atomically under a lock, like the MNIST
demo's MLP.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from adaptgrad_jax import _files
from adaptgrad_jax.text._embedding import EmbeddingSplit, nnx_split
from adaptgrad_jax.text._encoder import TinyEncoder, TinyEncoderConfig

PAD_ID, MASK_ID = 0, 1
MARKERS = (2, 3, 4, 5)
DECOYS = (6, 7, 8, 9)
VOCAB = ("[PAD]", "[MASK]", "A", "B", "C", "D", "a", "b", "c", "d") + tuple(f"w{i}" for i in range(10, 48))
"""The demo's token strings, indexed by id."""

DEMO_SETTINGS = {
    "task": "markers-v1", "vocab_size": 48, "max_length": 32, "min_length": 8, "num_classes": 4,
    "dim": 32, "num_heads": 2, "num_layers": 2, "mlp_dim": 64,
    "train_size": 8192, "steps": 600, "batch_size": 64, "learning_rate": 0.003, "weight_decay": 0.01, "seed": 0,
}
QUICK_SETTINGS = dict(DEMO_SETTINGS, train_size=2048, steps=200, dim=16, num_layers=1, mlp_dim=32)
"""Smaller and faster (tests): one block of width 16, 200 steps."""


class TextTask(NamedTuple):
  """A batch of the synthetic task.

  Attributes:
    ids: ``(B, max_length)`` int32 token ids, right-padded with ``[PAD]``.
    mask: ``(B, max_length)`` booleans, True on real tokens.
    labels: ``(B,)`` the class (the deciding marker's index).
    deciding: ``(B, max_length)`` booleans, True at the deciding marker's positions (the ground truth).
  """

  ids: jax.Array
  mask: jax.Array
  labels: jax.Array
  deciding: jax.Array


def synthetic_task(seed: int, size: int, *, max_length: int = 32, min_length: int = 8,
                   decoy_rate: float = 0.15) -> TextTask:
  """Draws ``size`` sequences of the synthetic marker task (see :mod:`adaptgrad_jax.text` demo).

  Args:
    seed: the NumPy seed (the draw is reproducible).
    size: the number of sequences.
    max_length: the padded length (and longest sequence).
    min_length: the shortest sequence.
    decoy_rate: the probability that a non-marker position holds a decoy.

  Returns:
    A :class:`TextTask`.

  Example:
    >>> from adaptgrad_jax import text
    >>> task = text.synthetic_task(0, 3)
    >>> task.ids.shape, bool(jnp.all(task.ids[task.deciding] == 2 + task.labels[:, None].repeat(32, 1)[task.deciding]))
    ((3, 32), True)
  """
  if not (isinstance(size, int) and size >= 1):
    raise ValueError(f"size={size!r} must be a positive int (the number of sequences).")
  if not 4 <= min_length <= max_length:
    raise ValueError(f"min_length={min_length} and max_length={max_length} must satisfy 4 <= min_length <= max_length.")
  rng = np.random.default_rng(seed)
  ids = np.full((size, max_length), PAD_ID, np.int32)
  deciding = np.zeros((size, max_length), bool)
  lengths = rng.integers(min_length, max_length + 1, size)
  labels = rng.integers(0, len(MARKERS), size).astype(np.int32)
  for i in range(size):
    n = lengths[i]
    row = rng.integers(10, len(VOCAB), n)
    decoy = rng.random(n) < decoy_rate
    row[decoy] = rng.choice(DECOYS, int(decoy.sum()))
    where = rng.choice(n, int(rng.integers(1, 4)), replace=False)
    row[where] = MARKERS[labels[i]]
    ids[i, :n] = row
    deciding[i, where] = True
  mask = np.arange(max_length)[None, :] < lengths[:, None]
  return TextTask(jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(labels), jnp.asarray(deciding))


class DemoText(NamedTuple):
  """The trained demo classifier.

  Attributes:
    model: the :class:`TinyEncoder`.
    split: its :class:`EmbeddingSplit` (:func:`nnx_split`).
    table: its input embedding table ``(48, dim)``.
    accuracy: the accuracy on 1,024 held-out sequences.
    description: one line saying what it is.
  """

  model: Any
  split: EmbeddingSplit
  table: jax.Array
  accuracy: float
  description: str


def _hash(settings: dict) -> str:
  return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def _config(settings: dict) -> TinyEncoderConfig:
  return TinyEncoderConfig(vocab_size=settings["vocab_size"], max_length=settings["max_length"],
                           num_classes=settings["num_classes"], dim=settings["dim"], num_heads=settings["num_heads"],
                           num_layers=settings["num_layers"], mlp_dim=settings["mlp_dim"])


def _train(settings: dict):
  import optax  # pylint: disable=import-outside-toplevel
  from flax import nnx  # pylint: disable=import-outside-toplevel

  model = TinyEncoder(_config(settings), rngs=nnx.Rngs(settings["seed"]))
  data = synthetic_task(settings["seed"] + 1, settings["train_size"], max_length=settings["max_length"],
                        min_length=settings["min_length"])
  optimizer = nnx.Optimizer(model, optax.adamw(settings["learning_rate"], weight_decay=settings["weight_decay"]),
                            wrt=nnx.Param)

  @nnx.jit
  def step(model, optimizer, ids, mask, labels):
    def loss_fn(model):
      logits = model(ids, attention_mask=mask)
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss

  rng = np.random.default_rng(settings["seed"] + 2)
  b = settings["batch_size"]
  for _ in range(settings["steps"]):
    idx = rng.integers(0, settings["train_size"], b)
    step(model, optimizer, data.ids[idx], data.mask[idx], data.labels[idx])
  return model


def _accuracy(model, settings: dict) -> float:
  test = synthetic_task(12345, 1024, max_length=settings["max_length"], min_length=settings["min_length"])
  from flax import nnx  # pylint: disable=import-outside-toplevel
  logits = nnx.jit(lambda m, i, k: m(i, attention_mask=k))(model, test.ids, test.mask)
  return float(jnp.mean(jnp.argmax(logits, -1) == test.labels))


def demo_classifier(*, quick: bool = False, cache: Optional[pathlib.Path] = None) -> DemoText:
  """The demo's trained text classifier: trained on first use (seconds on a CPU), then loaded from the cache.

  Args:
    quick: the smaller, faster settings (:data:`QUICK_SETTINGS`), for tests.
    cache: the cache root; default ``$ADAPTGRAD_JAX_CACHE`` or ``~/.cache/adaptgrad_jax``.

  Returns:
    A :class:`DemoText`.
  """
  from flax import nnx  # pylint: disable=import-outside-toplevel

  settings = QUICK_SETTINGS if quick else DEMO_SETTINGS
  root = pathlib.Path(cache) if cache is not None else _files.cache_dir()
  folder = root / "demo" / f"text-{_hash(settings)}"
  folder.mkdir(parents=True, exist_ok=True)
  model = TinyEncoder(_config(settings), rngs=nnx.Rngs(settings["seed"]))
  state = nnx.state(model, nnx.Param)
  leaves, treedef = jax.tree.flatten(state)
  meta_path = folder / "meta.json"
  with _blocking_lock(folder.with_suffix(".lock")):
    if meta_path.exists():
      meta = json.loads(meta_path.read_text())
      with np.load(folder / "params.npz") as f:
        loaded = [jnp.asarray(f[f"p{i}"]) for i in range(len(leaves))]
      if [tuple(a.shape) for a in loaded] != [tuple(a.shape) for a in leaves]:
        raise ValueError(f"the cached text demo model in {folder} does not fit its settings; delete the folder.")
      nnx.update(model, jax.tree.unflatten(treedef, loaded))
      accuracy = float(meta["accuracy"])
    else:
      model = _train(settings)
      accuracy = _accuracy(model, settings)
      trained = jax.tree.leaves(nnx.state(model, nnx.Param))
      _files.atomic_write(folder / "params.npz", lambda f: np.savez(f, **{f"p{i}": np.asarray(a)
                                                                              for i, a in enumerate(trained)}))
      _files.atomic_write(meta_path, lambda f: f.write(json.dumps(
          {"settings": settings, "accuracy": accuracy}, indent=1).encode()))
  cfg = _config(settings)
  description = (f"TinyEncoder ({cfg.num_layers} blocks, width {cfg.dim}, {cfg.num_heads} heads) trained"
                 f" {settings['steps']} AdamW steps on the synthetic marker task; held-out accuracy {accuracy:.3f}")
  split = nnx_split(model, vocab_size=cfg.vocab_size, max_length=cfg.max_length)
  return DemoText(model, split, model.token_embed.embedding[...], accuracy, description)


class _blocking_lock:  # pylint: disable=invalid-name
  """An exclusive lock that waits (two processes training the same model: the second loads what the first wrote)."""

  def __init__(self, path):
    self.path = pathlib.Path(path)
    self.fd = None

  def __enter__(self):
    import fcntl  # pylint: disable=import-outside-toplevel
    import os  # pylint: disable=import-outside-toplevel
    self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(self.fd, fcntl.LOCK_EX)
    return self.path

  def __exit__(self, *exc):
    import os  # pylint: disable=import-outside-toplevel
    os.close(self.fd)
    return False
