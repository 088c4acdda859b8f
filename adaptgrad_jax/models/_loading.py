"""Loading torchvision-named weights into Flax NNX models, and back.

The naming convention (every model in `adaptgrad_jax.models` follows it):

* NNX attribute paths mirror torchvision's parameter names exactly. A torch
  ``nn.Sequential`` becomes an ``nnx.List`` holding the same layers at the same
  indices (parameter-free entries such as ReLU or pooling are kept as plain
  functions so the indices line up), so torch's ``features.0.weight`` is the NNX
  path ``('features', 0, 'kernel')`` and ``layer1.0.downsample.1.running_mean``
  is ``('layer1', 0, 'downsample', 1, 'mean')``.
* The torch name of a variable is its NNX path joined with ``'.'``, with the
  last element renamed by `_LEAF_NAMES` below (a short table, keyed by the
  variable's type and its NNX name).
* Layouts: a 4-d ``kernel`` is a convolution, stored HWIO by Flax and OIHW by
  torch (grouped and depthwise convolutions too: Flax's ``(kh, kw, in/groups,
  out)`` against torch's ``(out, in/groups, kh, kw)``); a 2-d ``kernel`` is a
  Linear, ``(in, out)`` in Flax, ``(out, in)`` in torch. Vectors are copied.
* torch's ``num_batches_tracked`` buffers are ignored.
* Flatten order: torch flattens a feature map as (C, H, W), our NHWC models as
  (H, W, C). A Linear that reads a flattened map with more than one pixel (VGG's
  ``classifier.0``) carries an attribute ``torch_flatten_chw = (C, H, W)``; the
  loader then permutes the input dimension of its weight so the logits match
  exactly. After a global pooling (ResNet, Inception, EfficientNet) there is a
  single pixel and nothing needs doing.

Only `nnx.Param` and `nnx.BatchStat` variables are mapped; RNG state (dropout)
is not part of a checkpoint.

A model constructor takes ``weights=`` and ``rngs=`` and ends with
``return build_model(lambda rngs: MyNet(..., rngs=rngs), weights, rngs)``: with
weights, `build_model` skips the random initialisation (slow to compile on CPU)
and loads strictly; a path goes through `adaptgrad_jax.weights.read_checkpoint`.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

__all__ = ["LoadResult", "build_model", "load_state_dict", "load_weights", "state_dict_from_model"]

# (variable type, NNX leaf name) -> torch leaf name.
_LEAF_NAMES: dict[tuple[type[nnx.Variable], str], str] = {
  (nnx.Param, "kernel"): "weight",  # Conv (HWIO <- OIHW), Linear ((in, out) <- (out, in))
  (nnx.Param, "bias"): "bias",
  (nnx.Param, "scale"): "weight",  # BatchNorm / LayerNorm gamma
  (nnx.BatchStat, "mean"): "running_mean",
  (nnx.BatchStat, "var"): "running_var",
  (nnx.Param, "embedding"): "weight",  # nnx.Embed's (num_embeddings, features) table, as torch's nn.Embedding
  # Leaves kept in torch's layout under their torch names (ViT, ConvNeXt).
  **{(nnx.Param, name): name for name in ("class_token", "pos_embedding", "in_proj_weight", "in_proj_bias",
                                          "layer_scale")},
}
_IGNORED_TORCH_LEAVES = ("num_batches_tracked",)
_FLATTEN_ATTR = "torch_flatten_chw"

ModuleT = TypeVar("ModuleT", bound=nnx.Module)


class LoadResult(NamedTuple):
  """What `load_state_dict` left out (both empty when ``strict=True``)."""

  missing_keys: list[str]
  unexpected_keys: list[str]


def _torch_leaf(variable: nnx.Variable, name: Any, path: tuple) -> str:
  for (kind, nnx_name), torch_name in _LEAF_NAMES.items():
    if isinstance(variable, kind) and name == nnx_name:
      return torch_name
  raise ValueError(
    f"model variable {'.'.join(map(str, path))} ({type(variable).__name__}) has no torch "
    f"counterpart in the mapping table; known leaves: {sorted(n for _, n in _LEAF_NAMES)}"
  )


def _named_variables(model: nnx.Module) -> dict[str, tuple[tuple, nnx.Variable]]:
  """Torch name -> (NNX path, variable) for every Param and BatchStat."""
  state = nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat))
  named = {}
  for path, variable in nnx.to_flat_state(state):
    torch_name = ".".join([*map(str, path[:-1]), _torch_leaf(variable, path[-1], path)])
    named[torch_name] = (path, variable)
  return named


def _flatten_layouts(model: nnx.Module) -> dict[tuple, tuple[int, int, int]]:
  """NNX path of a Linear's kernel -> (C, H, W) of the map it reads flattened."""
  layouts = {}
  for path, module in nnx.iter_modules(model):
    chw = getattr(module, _FLATTEN_ATTR, None)
    if chw is not None:
      layouts[(*path, "kernel")] = tuple(chw)
  return layouts


def _to_flax(array: np.ndarray, path: tuple, chw: tuple[int, int, int] | None) -> np.ndarray:
  """Torch layout -> Flax layout for one leaf (see the module docstring)."""
  if path[-1] != "kernel":
    return array
  if array.ndim == 4:  # OIHW -> HWIO
    return array.transpose(2, 3, 1, 0)
  if array.ndim == 3:  # OIW -> WIO
    return array.transpose(2, 1, 0)
  if array.ndim == 2:
    if chw is not None:  # (out, C*H*W) -> (H*W*C, out)
      c, h, w = chw
      return array.reshape(-1, c, h, w).transpose(2, 3, 1, 0).reshape(h * w * c, -1)
    return array.T
  return array


def _to_torch(array: np.ndarray, path: tuple, chw: tuple[int, int, int] | None) -> np.ndarray:
  """Flax layout -> torch layout for one leaf; inverse of `_to_flax`."""
  if path[-1] != "kernel":
    return array
  if array.ndim == 4:  # HWIO -> OIHW
    return array.transpose(3, 2, 0, 1)
  if array.ndim == 3:
    return array.transpose(2, 1, 0)
  if array.ndim == 2:
    if chw is not None:  # (H*W*C, out) -> (out, C*H*W)
      c, h, w = chw
      return array.reshape(h, w, c, -1).transpose(3, 2, 0, 1).reshape(-1, c * h * w)
    return array.T
  return array


def _torch_shape(shape: tuple[int, ...], path: tuple) -> tuple[int, ...]:
  """Torch shape of a Flax leaf of the given shape (flatten permutation keeps shapes)."""
  return _to_torch(np.empty(shape, np.bool_), path, None).shape


def _as_numpy(value: Any) -> np.ndarray:
  if hasattr(value, "detach"):  # a torch tensor handed over directly
    value = value.detach().cpu().numpy()
  return np.asarray(value)


def _cast(array: np.ndarray, dtype: Any) -> tuple[np.ndarray, str]:
  """``(array cast to dtype, "")``, or ``(array, why)`` when the cast would lose values.

  Refused: complex to real (the imaginary part would be dropped) and finite
  values that overflow to +-inf in a narrower float (float64 1e300 in a
  float32 model). Rounding to the nearer representable value is not a loss.
  """
  dtype = np.dtype(dtype)
  if jnp.issubdtype(array.dtype, jnp.complexfloating) and not jnp.issubdtype(dtype, jnp.complexfloating):
    return array, (f"{array.dtype} values in a {dtype} variable would lose their imaginary part; pass real"
                   " arrays (np.real(v) if the imaginary part is 0 by design)")
  if not (jnp.issubdtype(array.dtype, jnp.number) or array.dtype == np.bool_):
    return array, f"{array.dtype} values are not numbers"
  with np.errstate(over="ignore", invalid="ignore"):
    cast = array.astype(dtype)
  if jnp.issubdtype(array.dtype, jnp.inexact) and jnp.issubdtype(dtype, jnp.inexact):
    if float(jnp.finfo(array.dtype).max) > float(jnp.finfo(dtype).max):
      overflow = np.isfinite(array) & ~np.isfinite(cast)
      if np.any(overflow):
        example = array[overflow].flat[0]
        example = complex(example) if jnp.iscomplexobj(array) else float(example)
        return array, (f"{int(np.sum(overflow))} finite {array.dtype} value(s) (e.g. {example:.3g})"
                       f" overflow to inf in {dtype}")
  elif jnp.issubdtype(dtype, jnp.integer) or dtype == np.bool_:
    if not np.array_equal(cast.astype(array.dtype), array):
      return array, f"{array.dtype} values change when cast to {dtype}"
  return cast, ""


def _prefix_hint(missing: list[str], unexpected: list[str]) -> str:
  for key in unexpected:
    for name in missing:
      if key.endswith("." + name):
        prefix = key[: -len(name)]
        return (
          f"\nThe checkpoint's names look prefixed by {prefix!r} (e.g. {key!r}); strip it, e.g. "
          f"{{k.removeprefix({prefix!r}): v for k, v in state_dict.items()}}."
        )
  return ""


def load_state_dict(
  model: nnx.Module, state_dict: Mapping[str, Any], *, strict: bool = True
) -> LoadResult:
  """Copies torchvision-named arrays into an NNX model, in place.

  Each of the model's `nnx.Param` and `nnx.BatchStat` variables is looked up
  by its torch name (its NNX path joined with ``'.'``, with ``kernel`` ->
  ``weight``, BatchNorm ``scale`` -> ``weight``, ``mean`` -> ``running_mean``,
  ``var`` -> ``running_var``) and converted from torch's layout (OIHW
  convolutions, ``(out, in)`` linears, C-H-W flatten order) to Flax's. Arrays
  are cast to the dtype of the variable they replace; a cast that would lose
  values is refused (complex to real, finite values that overflow to inf in
  a narrower float). ``num_batches_tracked`` entries are ignored.

  Args:
    model: a Flax NNX module whose attribute paths mirror torchvision's names,
      e.g. one from `adaptgrad_jax.models`.
    state_dict: a mapping from torch parameter names to arrays (NumPy, JAX or
      torch tensors), e.g. from `adaptgrad_jax.weights.read_checkpoint`.
    strict: if True, every model variable must be present and every checkpoint
      entry used. If False, missing and unexpected keys are returned instead.
      Shape mismatches are always an error.

  Returns:
    A `LoadResult` ``(missing_keys, unexpected_keys)``, empty when strict.

  Raises:
    TypeError: for a key that is not a string (naming it).
    ValueError: listing, in one message, all missing, unexpected and
      mis-shaped keys and lossy casts (nothing is copied in that case).

  Example:
    >>> from flax import nnx
    >>> from adaptgrad_jax import models
    >>> a = models.mlp(rngs=nnx.Rngs(0))
    >>> b = models.mlp(rngs=nnx.Rngs(1))
    >>> models.load_state_dict(b, models.state_dict_from_model(a))
    LoadResult(missing_keys=[], unexpected_keys=[])
  """
  if not isinstance(state_dict, Mapping):
    raise TypeError(
      f"state_dict must be a mapping from torch names to arrays, got {type(state_dict).__name__}; "
      "read a file with adaptgrad_jax.weights.read_checkpoint(path)"
    )
  for key in state_dict:
    if not isinstance(key, str):
      raise TypeError(
        f"state_dict has the key {key!r} of type {type(key).__name__}; keys must be torch parameter names"
        " (strings such as 'features.0.weight'), as adaptgrad_jax.weights.read_checkpoint returns them"
      )
  named = _named_variables(model)
  layouts = _flatten_layouts(model)
  given = {k: v for k, v in state_dict.items() if k.rsplit(".", 1)[-1] not in _IGNORED_TORCH_LEAVES}

  missing = [name for name in named if name not in given]
  unexpected = [name for name in given if name not in named]
  misshaped, lost = [], []
  updates = {}
  for name, (path, variable) in named.items():
    if name not in given:
      continue
    array = _as_numpy(given[name])
    want = _torch_shape(variable.shape, path)
    if array.shape != want:
      misshaped.append(f"{name}: checkpoint {tuple(array.shape)}, model expects {want}")
      continue
    cast, lossy = _cast(array, variable.dtype)
    if lossy:
      lost.append(f"{name}: {lossy}")
      continue
    updates[path] = _to_flax(cast, path, layouts.get(path))

  if misshaped or lost or (strict and (missing or unexpected)):
    lines = [f"cannot load the state dict into {type(model).__name__}:"]
    if missing:
      lines.append(f"  missing keys ({len(missing)}): {', '.join(missing)}")
    if unexpected:
      lines.append(f"  unexpected keys ({len(unexpected)}): {', '.join(unexpected)}")
    if misshaped:
      lines.append(f"  mis-shaped keys ({len(misshaped)}):")
      lines.extend(f"    {m}" for m in misshaped)
    if lost:
      lines.append(f"  keys whose values the model's dtype cannot hold ({len(lost)}):")
      lines.extend(f"    {m}" for m in lost)
    raise ValueError("\n".join(lines) + _prefix_hint(missing, unexpected))

  for path, variable in named.values():
    if path in updates:
      variable.set_value(jax.device_put(np.ascontiguousarray(updates[path])))  # no per-shape convert program
  return LoadResult(missing, unexpected)


def state_dict_from_model(model: nnx.Module) -> dict[str, np.ndarray]:
  """Returns the model's parameters and batch statistics under torch names and layouts.

  The inverse of `load_state_dict`: ``load_state_dict(other,
  state_dict_from_model(model))`` copies ``model`` into ``other``, and the result
  can be loaded into the torchvision module of the same architecture with
  ``torch_module.load_state_dict({k: torch.from_numpy(v) ...}, strict=False)``
  (``num_batches_tracked`` is not produced).

  Args:
    model: a Flax NNX module following the naming convention of this module.

  Returns:
    An ordered dict from torch parameter names to NumPy arrays (to
    `jax.ShapeDtypeStruct` of the torch shapes for a model built under
    `nnx.eval_shape`, a cheap way to list what a checkpoint must hold).
  """
  layouts = _flatten_layouts(model)
  out = collections.OrderedDict()
  for name, (path, variable) in _named_variables(model).items():
    value = variable.get_value()
    if isinstance(value, jax.ShapeDtypeStruct):  # an abstract model from nnx.eval_shape
      out[name] = jax.ShapeDtypeStruct(_torch_shape(value.shape, path), value.dtype)
    else:
      out[name] = np.ascontiguousarray(_to_torch(np.asarray(value), path, layouts.get(path)))
  return out


def _as_state_dict(weights: Any) -> Mapping[str, Any]:
  if isinstance(weights, (str, os.PathLike)):
    from adaptgrad_jax.weights import read_checkpoint  # pylint: disable=import-outside-toplevel

    weights = read_checkpoint(weights)
  if not isinstance(weights, Mapping):
    raise TypeError(
      f"weights={type(weights).__name__} must be None, a checkpoint path or a mapping of "
      "torchvision-named arrays; for official weights use weights=adaptgrad_jax.weights.pretrained(name)"
    )
  return weights


def load_weights(model: ModuleT, weights: Any) -> ModuleT:
  """Applies a constructor's ``weights=`` argument to a built model and returns it.

  Args:
    model: a model following this module's naming convention.
    weights: None (keep the initialisation), a checkpoint path (``.pth``,
      ``.pt``, ``.safetensors`` or ``.npz``, read with
      `adaptgrad_jax.weights.read_checkpoint`) or a mapping of
      torchvision-named arrays. Loading is strict.

  Returns:
    ``model``, loaded in place.

  Raises:
    TypeError: if ``weights`` is of another type.
    ValueError: if the weights do not fit the model (see `load_state_dict`).
  """
  if weights is not None:
    load_state_dict(model, _as_state_dict(weights))
  return model


def build_model(make: Callable[[nnx.Rngs], ModuleT], weights: Any, rngs: nnx.Rngs) -> ModuleT:
  """Returns ``make(rngs)`` with a constructor's ``weights=`` argument applied.

  With weights the random initialisation is skipped: the model is traced with
  `nnx.eval_shape` and every parameter and batch statistic comes from the
  checkpoint (on CPU, compiling the initialisers of a ResNet-50 costs more than
  10 s). Dropout RNG streams are then drawn from ``rngs``. Model constructors
  in this package (and new ones) should build through this function.

  Args:
    make: builds the model from ``rngs``, e.g. ``lambda rngs: VGG(cfg, rngs=rngs)``.
    weights: None, a checkpoint path or a mapping of torchvision-named arrays.
    rngs: the random streams for initialisation (without weights) and dropout.

  Returns:
    The model, with the weights loaded (strictly).

  Raises:
    TypeError: if ``weights`` is of another type.
    ValueError: if the weights do not fit the model (see `load_state_dict`).
  """
  if weights is None:
    return make(rngs)
  state_dict = _as_state_dict(weights)
  model = nnx.eval_shape(make, rngs)
  load_state_dict(model, state_dict)
  for path, variable in nnx.to_flat_state(nnx.state(model)):
    value = variable.get_value()
    if not isinstance(value, jax.ShapeDtypeStruct):
      continue
    if isinstance(variable, nnx.RngKey):
      variable.set_value(rngs[variable.tag]())
    elif isinstance(variable, nnx.RngCount):
      variable.set_value(jnp.zeros(value.shape, value.dtype))
    else:
      raise ValueError(
        f"{'.'.join(map(str, path))} ({type(variable).__name__}) is neither in a checkpoint nor "
        "an RNG stream; build the model with weights=None and call load_state_dict"
      )
  return model
