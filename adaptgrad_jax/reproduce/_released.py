"""The AdaptGrad authors' released MNIST models and the pipeline their code runs.

The authors' repository (AiShare-WHU/AdaptGrad, ``saved_models/``, unchanged
since the commit that produced the paper's Table 1) ships three PyTorch state
dicts of ``nn.Sequential(Linear(784, 200), ReLU(), Linear(200, 10),
Softmax(dim=1))``: ``mlp.pth`` (true labels), ``random_mlp.pth`` (randomly
permuted labels, for Consistency) and ``bias_mlp.pth`` (inputs shifted by +1,
for Invariance). :func:`load_released_mlp` reads them with the torch-free
:func:`adaptgrad_jax.weights.read_checkpoint` into
:class:`adaptgrad_jax.models.MLP` (``output="softmax"``).

Run as its code runs (``experiments/get_salience_mnist.py`` and
``get_correlation.py`` at that commit), the released pipeline differs from a
correct Consistency / Invariance measurement in the ways :class:`Pipeline`
names, one flag each. The decisive one is the input: the script takes the
already transformed float32 digit and calls ``Image.fromarray(img.numpy(),
mode="L")``, which Pillow 10-12 executes by reading the float32 buffer's first
784 BYTES as 8-bit pixels (:func:`reinterpret_bytes`). The images explained
are therefore not digits: for the plain and random-label models most of them
are nearly empty (the first seven rows of a digit are background, and 0.0f is
four zero bytes); for the shifted model, whose input is already ``x + 1``,
rows 0-15 repeat the bytes of 1.0f (``00 00 80 3f``). The plain model and the
shifted model then explain two DIFFERENT images, which caps Invariance at
about 0.35 whatever the explanation method.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Any

import numpy as np

__all__ = (
    "DEVIATIONS",
    "RELEASED_FILES",
    "RELEASED_NAMES",
    "RELEASED_SHIFT",
    "Pipeline",
    "load_released_mlp",
    "released_indices",
    "released_inputs",
    "released_state_dict",
    "reinterpret_bytes",
)

RELEASED_FILES = {"plain": "mlp.pth", "random_label": "random_mlp.pth", "shifted": "bias_mlp.pth"}
"""Model role -> file name in the released ``saved_models/`` folder."""

RELEASED_SHIFT = {"plain": 0.0, "random_label": 0.0, "shifted": 1.0}
"""Model role -> input shift (``Normalize(mean=-1, std=1)`` adds 1 for the shifted model)."""

RELEASED_NAMES = {
    "model.0.weight": "fc1.weight",
    "model.0.bias": "fc1.bias",
    "model.2.weight": "fc2.weight",
    "model.2.bias": "fc2.bias",
}
"""``nn.Sequential`` parameter name -> :class:`adaptgrad_jax.models.MLP` name
(``model.1`` is the ReLU, ``model.3`` the softmax: no parameters)."""


def released_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a released ``.pth`` file without torch and renames it for :class:`~adaptgrad_jax.models.MLP`.

  Args:
    path: ``mlp.pth``, ``random_mlp.pth`` or ``bias_mlp.pth``.

  Returns:
    ``{"fc1.weight": (200, 784), "fc1.bias": (200,), "fc2.weight": (10, 200),
    "fc2.bias": (10,)}``, float32 arrays in torch layout.

  Raises:
    ValueError: the file does not hold exactly the four ``model.{0,2}.*``
      tensors of the released MLP.
  """
  from adaptgrad_jax import weights  # pylint: disable=import-outside-toplevel
  state = weights.read_checkpoint(path)
  if set(state) != set(RELEASED_NAMES):
    raise ValueError(
        f"{str(path)!r} holds {sorted(state)}, not the released MLP's {sorted(RELEASED_NAMES)};"
        " pass one of the files of the authors' saved_models/ folder"
        f" ({', '.join(RELEASED_FILES.values())}).")
  return {RELEASED_NAMES[k]: np.asarray(v) for k, v in state.items()}


def load_released_mlp(path: str | os.PathLike, *, output: str = "softmax") -> Any:
  """A released model as :class:`adaptgrad_jax.models.MLP`.

  Args:
    path: a released ``.pth`` file.
    output: ``"softmax"`` (default: the released model, which ends in
      ``nn.Softmax``) or ``"logits"`` (the same weights without the softmax).

  Returns:
    The MLP with the released weights, taking ``(B, 784)`` inputs.

  Example:
    >>> import os, tempfile
    >>> import numpy as np
    >>> from adaptgrad_jax import reproduce
    >>> rng = np.random.default_rng(0)
    >>> shapes = {"model.0.weight": (200, 784), "model.0.bias": (200,),
    ...           "model.2.weight": (10, 200), "model.2.bias": (10,)}
    >>> path = os.path.join(tempfile.mkdtemp(), "mlp.npz")  # a stand-in for mlp.pth
    >>> np.savez(path, **{k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()})
    >>> probs = reproduce.load_released_mlp(path)(np.zeros((1, 784), np.float32))
    >>> probs.shape, round(float(probs.sum()), 4)
    ((1, 10), 1.0)
  """
  from flax import nnx  # pylint: disable=import-outside-toplevel
  from adaptgrad_jax import models  # pylint: disable=import-outside-toplevel
  return models.mlp(output=output, weights=released_state_dict(path), rngs=nnx.Rngs(0))


def load_released_models(weights_dir: str | os.PathLike, *, output: str = "softmax") -> dict[str, Any]:
  """The three released models by role (``plain``, ``random_label``, ``shifted``).

  Raises:
    FileNotFoundError: a file is missing (the message names the folder to pass).
  """
  root = pathlib.Path(weights_dir)
  missing = [f for f in RELEASED_FILES.values() if not (root / f).is_file()]
  if missing:
    raise FileNotFoundError(
        f"--weights-dir {str(root)!r} lacks {missing}: pass the folder holding the authors'"
        f" released {', '.join(RELEASED_FILES.values())} (AiShare-WHU/AdaptGrad, saved_models/;"
        " in this project's checkout: ../shared/data/adaptgrad-released).")
  return {role: load_released_mlp(root / f, output=output) for role, f in RELEASED_FILES.items()}


def reinterpret_bytes(x: np.ndarray) -> np.ndarray:
  """What ``Image.fromarray(x, mode="L")`` makes of a float32 digit with Pillow 10-12, as ToTensor reads it.

  Pillow reads the first 784 bytes of the float32 buffer (little-endian) as
  28 x 28 8-bit pixels; ``ToTensor`` divides them by 255. Pillow 13 refuses the
  call instead.

  Args:
    x: a float32 digit with 784 elements (any shape, e.g. ``(28, 28)``).

  Returns:
    ``np.frombuffer(x.tobytes()[:784], np.uint8) / 255`` as float32, shape (784,).

  Raises:
    ValueError: ``x`` does not have 784 elements.

  Example:
    >>> import numpy as np
    >>> x = np.zeros((28, 28), np.float32)
    >>> x[0, :2] = 1.0  # bytes 00 00 80 3f, twice
    >>> [round(float(v), 4) for v in reinterpret_bytes(x)[:8]]
    [0.0, 0.0, 0.502, 0.2471, 0.0, 0.0, 0.502, 0.2471]
  """
  x = np.asarray(x)
  if x.size != 784:
    raise ValueError(f"x has shape {x.shape} ({x.size} elements); pass one 28 x 28 digit (784 elements).")
  raw = np.ascontiguousarray(x, dtype="<f4").tobytes()[:784]
  return np.frombuffer(raw, np.uint8).astype(np.float32) / np.float32(255.0)


def released_indices(num: int = 1000, seed: int = 0, *, population: int = 10000) -> np.ndarray:
  """The released script's test digits: ``np.random.seed(seed); np.random.choice(range(population), num)``.

  The draws are WITH replacement (951 distinct digits for the defaults). The
  script caches maps per index and the correlation script lists the cached
  files, so each distinct digit counts once: use ``np.unique`` of the result.
  """
  return np.random.RandomState(seed).choice(population, num)


def released_inputs(x_uint8: np.ndarray, shift: float, *, garbled: bool = True) -> np.ndarray:
  """The flat float32 images the released pipeline explains.

  ``ToTensor`` (``pixels / 255``) plus ``shift`` (the shifted model's
  ``Normalize(mean=-1, std=1)``), then, with ``garbled``, the byte
  reinterpretation (:func:`reinterpret_bytes`) and the same transform again.

  Args:
    x_uint8: digits ``(N, 28, 28)`` (or ``(N, 28, 28, 1)``), uint8 0..255.
    shift: 0.0, or 1.0 for the shifted model.
    garbled: reproduce the byte reinterpretation (the released code) or not
      (the real digit).

  Returns:
    ``(N, 784)`` float32.
  """
  x = np.asarray(x_uint8)
  if x.dtype != np.uint8:
    raise ValueError(f"x_uint8 has dtype {x.dtype}; pass the raw 0..255 digits"
                     " (datasets.mnist(path, dtype='uint8')).")
  x = x.reshape(len(x), 784).astype(np.float32) / np.float32(255.0) + np.float32(shift)
  if not garbled:
    return x
  return np.stack([reinterpret_bytes(row) for row in x]) + np.float32(shift)


DEVIATIONS = {
    "garbled_inputs": (
        "inputs: the script passes the transformed float32 digit to Image.fromarray(mode='L'), "
        "which (Pillow 10-12) reads its first 784 BYTES as pixels; the models explain "
        "np.frombuffer(x.tobytes()[:784], np.uint8) / 255 (+ 1 for the shifted model), not the "
        "digit, and the plain and shifted models explain two different images"),
    "softmax_saliency": (
        "saliency: the gradient of the softmax PROBABILITY of the predicted class (the models "
        "end in nn.Softmax), not of its logit"),
    "shared_bounds": (
        "AdaptGrad bounds (0, 1) for the shifted model too, whose inputs lie in [1, 2]: its sigma "
        "is min(|x - 0|, |x - 1|) / (sqrt(2) erfinv(c)), the distance to the LOWER edge 1 only"),
    "include_clean": (
        "SmoothGrad / AdaptGrad average n = 50 noisy gradients plus the clean gradient "
        "(n + 1 terms)"),
    "inert_noisegrad": (
        "NoiseGrad: the perturbed model copy is never evaluated, so NG is a positive multiple of "
        "Grad (x.grad accumulates: the mean of g, 2g, ..., (m + 1)g), and S-NG / A-NG are the "
        "clean gradient and m = 50 independent SG / AG runs averaged"),
    "with_replacement": (
        "examples: np.random.seed(0); np.random.choice(10000, 1000) draws WITH replacement: 951 "
        "distinct test digits (maps are cached per index, so each counts once)"),
}
"""Each way the released pipeline departs from a correct measurement, by :class:`Pipeline` flag."""

NOT_CORRECTABLE = (
    "training (fixed in the released weights): CrossEntropyLoss applied to the softmax output "
    "(softmax twice); the random-label model barely moved from its initialisation (it predicts 7 "
    "for every real test digit) and the shifted model never predicts 9. Our own models "
    "(logit output, optax cross-entropy) do not share these.")


@dataclasses.dataclass(frozen=True)
class Pipeline:
  """Which of the released pipeline's behaviours a Table 1 run keeps (:data:`DEVIATIONS`).

  ``Pipeline.released()`` keeps all of them (the code that produced the paper's
  Table 1); ``Pipeline()`` corrects all of them.
  """
  garbled_inputs: bool = False
  softmax_saliency: bool = False
  shared_bounds: bool = False
  include_clean: bool = False
  inert_noisegrad: bool = False
  with_replacement: bool = False

  @classmethod
  def released(cls) -> "Pipeline":
    """The released code's pipeline: every flag on."""
    return cls(**{f: True for f in DEVIATIONS})

  def deviations(self) -> list[str]:
    """The descriptions of the flags that are on."""
    return [DEVIATIONS[f] for f in DEVIATIONS if getattr(self, f)]

  def corrections(self) -> list[str]:
    """The flags that are off, i.e. the released behaviours corrected."""
    return [f for f in DEVIATIONS if not getattr(self, f)]
