"""The paper's MNIST multi-layer perceptron (784-200-10)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from adaptgrad_jax.models._loading import build_model

__all__ = ["MLP", "mlp"]


OUTPUTS = ("logits", "softmax")


def _validate_output(output: str) -> str:
  if output not in OUTPUTS:
    raise ValueError(
      f"output={output!r} is not one of {OUTPUTS}; use 'logits' (the default, what a classifier "
      "is explained by) or 'softmax' (probabilities, the layout of the AdaptGrad authors' released "
      "MNIST models)"
    )
  return output


class MLP(nnx.Module):
  """Two linear layers with a ReLU between them: ``fc1`` (784 -> hidden), ``fc2`` (hidden -> classes).

  The torch counterpart has parameters ``fc1.weight``, ``fc1.bias``,
  ``fc2.weight``, ``fc2.bias`` (``nn.Linear``). With ``output="softmax"`` the
  model ends in a softmax, as the AdaptGrad authors' released MNIST models do
  (``nn.Sequential(Linear, ReLU, Linear, Softmax)``), and returns
  probabilities.

  Args:
    in_features: number of input pixels (784 for MNIST).
    hidden: width of the hidden layer (200 in the paper).
    num_classes: number of classes.
    output: ``"logits"`` (default) or ``"softmax"`` (class probabilities).
    rngs: the random streams for initialisation.
  """

  def __init__(
    self, in_features: int = 784, hidden: int = 200, num_classes: int = 10, *, output: str = "logits",
    rngs: nnx.Rngs,
  ):
    self.in_features = in_features
    self.output = _validate_output(output)
    self.fc1 = nnx.Linear(in_features, hidden, rngs=rngs)
    self.fc2 = nnx.Linear(hidden, num_classes, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    """Maps images ``(B, 28, 28)``, ``(B, 28, 28, 1)`` or ``(B, 784)`` to ``(B, classes)``.

    The result is logits, or probabilities with ``output="softmax"``.
    """
    x = jnp.reshape(x, (x.shape[0], -1))
    if x.shape[1] != self.in_features:
      raise ValueError(
        f"input of shape {x.shape} flattens to {x.shape[1]} features per example, but the MLP "
        f"expects {self.in_features} (a batch of 28 x 28 MNIST images for the paper's model)"
      )
    logits = self.fc2(jax.nn.relu(self.fc1(x)))
    return jax.nn.softmax(logits, axis=-1) if self.output == "softmax" else logits


def mlp(
  hidden: int = 200,
  num_classes: int = 10,
  *,
  in_features: int = 784,
  output: str = "logits",
  weights: Any = None,
  rngs: nnx.Rngs,
) -> MLP:
  """The paper's MNIST MLP: 784 -> 200 (ReLU) -> 10.

  Args:
    hidden: hidden width (200 in the paper).
    num_classes: number of logits (10 for MNIST).
    in_features: flattened input size (784 = 28 x 28).
    output: ``"logits"`` (default) or ``"softmax"``: end in a softmax and
      return probabilities, like the authors' released models
      (``adaptgrad_jax.reproduce.load_released_mlp`` reads them).
    weights: None, a checkpoint path or a mapping of torch-named arrays
      (``fc1.weight``, ``fc1.bias``, ``fc2.weight``, ``fc2.bias``).
    rngs: the random streams for initialisation.

  Returns:
    An `MLP` taking ``(B, 28, 28[, 1])`` or ``(B, 784)`` inputs.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from adaptgrad_jax import models
    >>> model = models.mlp(rngs=nnx.Rngs(0))
    >>> model(jnp.zeros((2, 28, 28, 1))).shape
    (2, 10)
    >>> sorted(models.state_dict_from_model(model))
    ['fc1.bias', 'fc1.weight', 'fc2.bias', 'fc2.weight']
    >>> probs = models.mlp(output="softmax", rngs=nnx.Rngs(0))(jnp.zeros((2, 784)))
    >>> [round(float(s), 4) for s in probs.sum(axis=-1)]
    [1.0, 1.0]

  References:
    Zhou et al., "AdaptGrad", NeurIPS 2025, Section 5 (two linear layers with 200 and 10 units).
  """
  _validate_output(output)
  return build_model(lambda rngs: MLP(in_features, hidden, num_classes, output=output, rngs=rngs), weights, rngs)
