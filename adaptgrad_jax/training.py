"""Training, evaluating and checkpointing Flax NNX classifiers (optax, orbax).

The paper's Table 1 needs three MNIST MLPs (784-200-10, SGD, learning rate
0.01, 20 epochs, batch 32): one trained on the true labels, one on randomly
permuted labels (Adebayo et al.'s data randomisation test) and one on inputs
shifted by +1 (Kindermans et al.'s input invariance test). This module trains
them with a jitted ``lax.scan`` over each epoch's mini-batches.
"""

from __future__ import annotations

import functools
import os
import pathlib
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.typing import ArrayLike

from adaptgrad_jax._progress import progress_bar

__all__ = (
    "TrainHistory",
    "evaluate",
    "load_model",
    "permute_labels",
    "save_model",
    "train_classifier",
    "train_random_label_classifier",
    "train_shifted_classifier",
)


class TrainHistory(NamedTuple):
  """What :func:`train_classifier` returns (the model is trained in place).

  Attributes:
    loss: mean training cross-entropy of each epoch, shape (epochs,).
    input_shift: the constant added to the inputs during training (0 for a
      plain model, 1 for the paper's input-shifted model).
    bounds: the input range the model was trained on, e.g. (1.0, 2.0) for
      the shifted model; None when not stated. Use it as the ``bounds`` of
      AdaptGrad when explaining that model.
    seconds: wall-clock training time.
  """
  loss: np.ndarray
  input_shift: float = 0.0
  bounds: tuple[float, float] | None = None
  seconds: float = 0.0


def _check_data(x, y):
  x = jnp.asarray(x)
  y = jnp.asarray(y)
  if x.shape[0] != y.shape[0]:
    raise ValueError(
        f"x holds {x.shape[0]} examples but y holds {y.shape[0]} labels; "
        f"pass one integer label per example.")
  if y.ndim != 1 or not jnp.issubdtype(y.dtype, jnp.integer):
    raise ValueError(
        f"y has shape {y.shape} and dtype {y.dtype}; pass integer class "
        f"labels of shape (N,), not one-hot vectors.")
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise ValueError(
        f"x has dtype {x.dtype}; pass float inputs (e.g. pixels / 255, as "
        f"datasets.mnist() returns).")
  return x, y.astype(jnp.int32)


_EPOCH_CACHE: dict[Any, Any] = {}


def _epoch_function(graphdef, tx_id, batch_size: int, n: int):
  """A jitted epoch (scan over mini-batches), cached so that retraining the
  same architecture with the same optimiser does not recompile."""
  cache_key = (graphdef, tx_id, batch_size, n)
  try:
    hit = _EPOCH_CACHE.get(cache_key)
  except TypeError:  # an unhashable optimiser: no caching
    cache_key, hit = None, None
  if hit is not None:
    return hit
  tx = optax.sgd(tx_id[1]) if type(tx_id) is tuple else tx_id  # optax transformations are NamedTuples
  num_full, rest_size = divmod(n, batch_size)

  def loss_fn(p, o, xb, yb):
    m = nnx.merge(graphdef, p, o)
    logits = m(xb)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()
    return loss, nnx.state(m, nnx.Not(nnx.Param))

  def step(carry, idx, xs, ys):
    p, o, s = carry
    (loss, o), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        p, o, xs[idx], ys[idx])
    updates, s = tx.update(grads, s, p)
    return (optax.apply_updates(p, updates), o, s), loss

  @jax.jit
  def run_epoch(p, o, s, xs, ys, perm):
    full = perm[:num_full * batch_size].reshape(num_full, batch_size)
    carry, losses = jax.lax.scan(lambda c, i: step(c, i, xs, ys), (p, o, s), full)
    total = jnp.sum(losses) * batch_size
    if rest_size:
      carry, last = step(carry, perm[num_full * batch_size:], xs, ys)
      total = total + last * rest_size
    return (*carry, total / n)

  if cache_key is not None:
    if len(_EPOCH_CACHE) > 16:
      _EPOCH_CACHE.clear()
    _EPOCH_CACHE[cache_key] = (tx, run_epoch)
  return tx, run_epoch


def train_classifier(
    model: nnx.Module,
    x: ArrayLike,
    y: ArrayLike,
    *,
    epochs: int = 20,
    learning_rate: float = 0.01,
    batch_size: int = 32,
    key: jax.Array,
    optimizer: optax.GradientTransformation | None = None,
    progress: bool = True,
    description: str = "training",
) -> TrainHistory:
  """Trains a classifier with softmax cross-entropy, in place.

  Each epoch shuffles the data with ``key`` and runs one jitted
  ``jax.lax.scan`` over the full mini-batches, then one step on the remaining
  examples (like PyTorch's ``DataLoader`` with ``drop_last=False``, which the
  paper's code uses). The defaults are the paper's: plain SGD with learning
  rate 0.01, 20 epochs, batch 32. Parameters (``nnx.Param``) are trained;
  other state (batch statistics, RNG counters) is carried through. The model
  is put in ``train()`` mode while training and left in ``eval()`` mode.

  Args:
    model: a Flax NNX module mapping a batch of inputs to logits (B, K).
    x: inputs (N, ...), float.
    y: integer labels (N,).
    epochs: passes over the data.
    learning_rate: SGD learning rate (ignored when ``optimizer`` is given).
    batch_size: mini-batch size.
    key: PRNG key for the shuffling.
    optimizer: an optax transformation; default ``optax.sgd(learning_rate)``.
    progress: show a rich progress bar over the epochs.
    description: label of the progress bar.

  Returns:
    A :class:`TrainHistory` with the per-epoch mean loss.

  Raises:
    ValueError: mismatched or badly typed x and y, epochs or batch_size < 1.

  Example:
    >>> import jax
    >>> from flax import nnx
    >>> from adaptgrad_jax import datasets, models, training
    >>> data = datasets.mnist_embedded()
    >>> model = models.mlp(rngs=nnx.Rngs(0))
    >>> hist = training.train_classifier(
    ...     model, data.x_train[:2000], data.y_train[:2000], epochs=2,
    ...     learning_rate=0.1, key=jax.random.key(0), progress=False)
    >>> training.evaluate(model, data.x_test, data.y_test) > 0.75
    True

  References:
    Zhou et al., "AdaptGrad", NeurIPS 2025, Sec. 5.1.2 (the MNIST MLP).
  """
  if int(epochs) < 1:
    raise ValueError(f"epochs={epochs!r} must be >= 1; the paper uses 20.")
  if int(batch_size) < 1:
    raise ValueError(f"batch_size={batch_size!r} must be >= 1; the paper uses 32.")
  x, y = _check_data(x, y)
  n = x.shape[0]
  batch_size = min(int(batch_size), n)

  model.train()
  graphdef, params, other = nnx.split(model, nnx.Param, ...)
  tx_id = ("sgd", float(learning_rate)) if optimizer is None else optimizer
  tx, run_epoch = _epoch_function(graphdef, tx_id, batch_size, n)
  opt_state = tx.init(params)

  losses = []
  start = time.perf_counter()
  with progress_bar(progress, int(epochs), description, loss="-") as advance:
    for k in jax.random.split(key, int(epochs)):
      perm = jax.random.permutation(k, n)
      params, other, opt_state, loss = run_epoch(params, other, opt_state, x, y, perm)
      losses.append(float(loss))
      advance(loss=f"{losses[-1]:.4f}")
  nnx.update(model, params, other)
  model.eval()
  return TrainHistory(np.asarray(losses), 0.0, None, time.perf_counter() - start)


def permute_labels(key: jax.Array, y: ArrayLike) -> jax.Array:
  """A random permutation of the labels (keeps the class frequencies)."""
  return jax.random.permutation(key, jnp.asarray(y))


def train_random_label_classifier(
    model: nnx.Module, x: ArrayLike, y: ArrayLike, *, key: jax.Array, **kwargs: Any
) -> TrainHistory:
  """Trains ``model`` on randomly permuted labels (the data randomisation test).

  Adebayo et al. (2018, Sec. 3.2) permute the training labels once and train
  the same architecture on them; the model can only memorise, so an
  explanation method that depends on what was learnt gives different maps.
  ``key`` is split into the label permutation and the shuffling key; other
  options are those of :func:`train_classifier`.

  References:
    Adebayo et al., "Sanity checks for saliency maps", NeurIPS 2018.
  """
  k_perm, k_train = jax.random.split(key)
  kwargs.setdefault("description", "training (permuted labels)")
  return train_classifier(model, x, permute_labels(k_perm, y), key=k_train, **kwargs)


def train_shifted_classifier(
    model: nnx.Module,
    x: ArrayLike,
    y: ArrayLike,
    *,
    key: jax.Array,
    shift: float = 1.0,
    bounds: tuple[float, float] = (0.0, 1.0),
    **kwargs: Any,
) -> TrainHistory:
  """Trains ``model`` on ``x + shift`` (the input invariance test).

  Kindermans et al. (2019) and the AdaptGrad paper train a second MLP on
  MNIST shifted by +1, i.e. on [1, 2] instead of [0, 1]. Explain this model on
  ``x + shift`` with ``bounds`` shifted likewise (returned in
  ``history.bounds``; (1.0, 2.0) for the defaults) and compare with the plain
  model's explanations of ``x`` (:func:`adaptgrad_jax.metrics.invariance`).

  Args:
    model: the untrained model.
    x: unshifted inputs within ``bounds``.
    y: labels.
    key: PRNG key for the shuffling.
    shift: constant added to every input (1.0 in the paper).
    bounds: range of the unshifted inputs.
    **kwargs: options of :func:`train_classifier`.

  Returns:
    A :class:`TrainHistory` whose ``input_shift`` and ``bounds`` record the
    shift.

  References:
    Kindermans et al., "The (un)reliability of saliency methods", 2019.
  """
  kwargs.setdefault("description", f"training (inputs + {shift:g})")
  hist = train_classifier(model, jnp.asarray(x) + shift, y, key=key, **kwargs)
  lo, hi = bounds
  return hist._replace(input_shift=float(shift),
                       bounds=(float(lo) + shift, float(hi) + shift))


@functools.partial(jax.jit, static_argnums=0)
def _num_correct(graphdef, state, xb, yb):
  """Correct top-1 predictions in a batch; one compile per architecture and batch shape."""
  return jnp.sum(jnp.argmax(nnx.merge(graphdef, state)(xb), -1) == yb)


def evaluate(
    model: nnx.Module, x: ArrayLike, y: ArrayLike, *, batch_size: int = 1000
) -> float:
  """Top-1 accuracy of ``model`` on (x, y), in [0, 1], evaluated in batches."""
  x, y = _check_data(x, y)
  # The parameters are an argument, not constants of the program: models of one
  # architecture (Table 1's three MLPs) share the compiled function.
  graphdef, state = nnx.split(model)
  total = 0
  for i in range(0, x.shape[0], batch_size):
    total += int(_num_correct(graphdef, state, x[i:i + batch_size], y[i:i + batch_size]))
  return total / x.shape[0]


def save_model(path: str | os.PathLike, model: nnx.Module, *, overwrite: bool = False) -> pathlib.Path:
  """Saves ``nnx.state(model)`` as a standard orbax checkpoint directory.

  Args:
    path: the checkpoint directory to create (made absolute, as orbax needs).
    model: the Flax NNX module.
    overwrite: replace an existing checkpoint at ``path``.

  Returns:
    The absolute checkpoint path.

  Raises:
    FileExistsError: ``path`` exists and ``overwrite`` is False.

  Example:
    >>> import tempfile, pathlib
    >>> from flax import nnx
    >>> from adaptgrad_jax import models, training
    >>> d = pathlib.Path(tempfile.mkdtemp()) / "mlp"
    >>> m = models.mlp(hidden=8, rngs=nnx.Rngs(0))
    >>> _ = training.save_model(d, m)
    >>> m2 = training.load_model(d, models.mlp(hidden=8, rngs=nnx.Rngs(1)))
    >>> bool((m2.fc1.kernel[...] == m.fc1.kernel[...]).all())
    True
  """
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  path = pathlib.Path(path).expanduser().absolute()
  if path.exists() and not overwrite:
    raise FileExistsError(
        f"{str(path)!r} already exists; pass overwrite=True to replace the "
        f"checkpoint or choose another path.")
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(path, nnx.state(model), force=overwrite)
  checkpointer.wait_until_finished()
  checkpointer.close()
  return path


def _leaf_shapes(tree) -> dict[tuple, tuple]:
  """``{path as names: (shape, dtype name)}`` of a pytree's leaves (``.value`` and ``['value']`` alike)."""
  def name(k):
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        return str(getattr(k, attr))
    return str(k)
  return {tuple(name(k) for k in p): (tuple(v.shape), str(v.dtype))
          for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _structure_differences(checkpointer, path, abstract, limit: int = 5) -> list[str]:
  """How the checkpoint's saved leaves differ from ``abstract``'s (empty if its metadata cannot be read)."""
  try:
    metadata = checkpointer.metadata(path)
    saved = getattr(metadata, "item_metadata", metadata)
    saved = _leaf_shapes(getattr(saved, "tree", saved))
  except Exception:  # pylint: disable=broad-exception-caught  # an older layout: restore() decides
    return []
  want = _leaf_shapes(abstract)
  out = [f"{'/'.join(k)}: saved {saved[k][0]} {saved[k][1]}, template {want[k][0]} {want[k][1]}"
         for k in sorted(saved.keys() & want.keys()) if saved[k] != want[k]]
  out += [f"{'/'.join(k)}: in the template, not in the checkpoint" for k in sorted(want.keys() - saved.keys())]
  out += [f"{'/'.join(k)}: in the checkpoint, not in the template" for k in sorted(saved.keys() - want.keys())]
  return out[:limit] + ([f"and {len(out) - limit} more"] if len(out) > limit else [])


def load_model(path: str | os.PathLike, model_template: nnx.Module) -> nnx.Module:
  """Restores a checkpoint written by :func:`save_model` into a new module.

  Args:
    path: the checkpoint directory.
    model_template: a module of the same architecture (its values are not
      used and it is not modified; ``nnx.eval_shape`` output works too).

  Returns:
    A new module with the saved state.

  Raises:
    FileNotFoundError: no checkpoint at ``path``.
    ValueError: the checkpoint does not match the template's structure.
  """
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  path = pathlib.Path(path).expanduser().absolute()
  if not path.exists():
    raise FileNotFoundError(
        f"no checkpoint at {str(path)!r}; write one with "
        f"training.save_model(path, model).")
  graphdef, state = nnx.split(model_template)
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
  checkpointer = ocp.StandardCheckpointer()
  try:
    differences = _structure_differences(checkpointer, path, abstract)
    if differences:  # refused before any read (a failed restore leaves orbax's reads unawaited)
      raise ValueError("; ".join(differences))
    restored = checkpointer.restore(path, abstract)
  except (ValueError, KeyError, TypeError) as e:
    raise ValueError(
        f"the checkpoint at {str(path)!r} does not match the structure of "
        f"model_template ({type(model_template).__name__}): {e}. Build the "
        f"template with the same architecture and sizes.") from e
  finally:
    checkpointer.close()
  return nnx.merge(graphdef, restored)
