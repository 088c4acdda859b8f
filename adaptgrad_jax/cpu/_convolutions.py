"""Convolutions (of gradients too) in the forms XLA:CPU runs fastest, with the same values.

Each rewrite computes the same values as the ``conv_general_dilated`` it
replaces; the timings in the docstrings are from jax 0.10.2 on a 2-core Xeon
(``benchmarks/results/cpu_experiments.md``).
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jex_core




def _channels_last(lhs, lhs_spec):
  """The input transposed to (batch, spatial..., features)."""
  return jnp.transpose(lhs, (lhs_spec[0],) + tuple(lhs_spec[2:]) + (lhs_spec[1],))


def _to_out_spec(y, out_spec):
  """A (batch, spatial..., features) result transposed to the layout ``out_spec`` names."""
  spatial = y.ndim - 2
  perm = [0] * y.ndim
  perm[out_spec[0]] = 0
  perm[out_spec[1]] = spatial + 1
  for i in range(spatial):
    perm[out_spec[2 + i]] = 1 + i
  return jnp.transpose(y, perm)


def _pad_spatial(x, padding, lhs_dilation):
  """Zero padding and input dilation of a channels-last array, as one ``lax.pad``."""
  config = [(0, 0, 0)] + [(lo, hi, d - 1) for (lo, hi), d in zip(padding, lhs_dilation)] + [(0, 0, 0)]
  return jax.lax.pad(x, jnp.zeros((), x.dtype), config)


def _taps(x, kernel, rhs_dilation, window_strides):
  """For each kernel tap (row-major), the strided slice of a padded channels-last input it reads."""
  spatial = len(kernel)
  extent = [(k - 1) * d + 1 for k, d in zip(kernel, rhs_dilation)]
  out = [(x.shape[1 + i] - extent[i]) // window_strides[i] + 1 for i in range(spatial)]
  for tap in np.ndindex(*kernel):
    start = (0,) + tuple(t * d for t, d in zip(tap, rhs_dilation)) + (0,)
    limit = ((x.shape[0],) + tuple(b + (m - 1) * s + 1 for b, m, s in zip(start[1:], out, window_strides))
             + (x.shape[-1],))
    yield tap, jax.lax.slice(x, start, limit, (1,) + tuple(window_strides) + (1,))


def _canonical_kernel(rhs, dimension_numbers):
  """The kernel transposed to (spatial..., in, out), and the dimension numbers to match.

  JAX emits a convolution's input gradient with the kernel's feature axes
  swapped (``01oi``). XLA:CPU rewrites such kernels into the form its fast
  convolutions take only in the entry computation; inside a scan body the
  convolution falls back to a naive loop nest (50x slower for one such
  convolution, 3-9x for a small convnet's gradient).
  """
  lhs_spec, rhs_spec, out_spec = dimension_numbers
  ndim = len(rhs_spec)
  canonical = (ndim - 1, ndim - 2) + tuple(range(ndim - 2))
  if tuple(rhs_spec) != canonical:
    out_dim, in_dim, *spatial = rhs_spec
    rhs = jnp.transpose(rhs, tuple(spatial) + (in_dim, out_dim))
    dimension_numbers = jax.lax.ConvDimensionNumbers(lhs_spec, canonical, out_spec)
  return rhs, dimension_numbers


def _is_depthwise(lhs, rhs, params) -> bool:
  """Whether every input feature is its own group (a depthwise convolution)."""
  lhs_spec, rhs_spec, _ = params["dimension_numbers"]
  groups = params["feature_group_count"]
  return (params["batch_group_count"] == 1 and groups > 1
          and groups == lhs.shape[lhs_spec[1]] and rhs.shape[rhs_spec[1]] == 1)


def _depthwise_as_taps(lhs, rhs, *, window_strides, padding, lhs_dilation, rhs_dilation,
                       dimension_numbers, feature_group_count, preferred_element_type, **_):
  """A depthwise convolution as a sum over kernel taps of strided slices times weights.

  XLA fuses the sum into one elementwise loop. XLA:CPU's grouped
  convolution is slow: the input gradients of EfficientNet-Lite0's depthwise
  layers (batch 20) take 25-300 ms, 2-15 ms this way, and the whole
  Lite0 gradient at 64 x 64 runs 13x faster.
  """
  lhs_spec, _, out_spec = dimension_numbers
  rhs, _ = _canonical_kernel(rhs, dimension_numbers)  # (spatial..., 1, features * multiplier)
  x = _channels_last(lhs, lhs_spec)
  multiplier = rhs.shape[-1] // feature_group_count
  if multiplier > 1:  # output feature g * multiplier + j reads input feature g
    x = jnp.repeat(x, multiplier, axis=-1)
  dtype = preferred_element_type or jnp.result_type(x, rhs)
  x = _pad_spatial(x, padding, lhs_dilation)
  y = None
  for tap, patch in _taps(x, rhs.shape[:-2], rhs_dilation, window_strides):
    term = patch.astype(dtype) * rhs[tap + (0,)].astype(dtype)
    y = term if y is None else y + term
  return _to_out_spec(y, out_spec)


def _is_plain(params) -> bool:
  """No feature or batch groups."""
  return params["feature_group_count"] == 1 and params["batch_group_count"] == 1


def _is_pointwise(rhs, params) -> bool:
  """Whether the kernel is 1 x ... x 1 and the convolution has no groups."""
  rhs_spec = params["dimension_numbers"][1]
  return _is_plain(params) and all(rhs.shape[d] == 1 for d in rhs_spec[2:])


def _pointwise_as_dot(lhs, rhs, *, window_strides, padding, lhs_dilation, dimension_numbers,
                      precision, preferred_element_type, **_):
  """A 1 x 1 convolution as one dot over the features, the kernel read as it is.

  The dot needs no transposed copy of the kernel (the gradient of a 1 x 1
  convolution otherwise transposes it on every call: ResNet-50 at 64 x 64,
  n = 20, 345-358 against 424-455 ms). A pointwise map commutes with padding,
  dilation and strides, which are applied to the smaller side: the input
  when they only shrink it, the product when the input is dilated.
  """
  lhs_spec, rhs_spec, out_spec = dimension_numbers
  spatial = len(window_strides)
  x = _channels_last(lhs, lhs_spec)
  in_axis = 0 if rhs_spec[1] < rhs_spec[0] else 1
  w = rhs.reshape([rhs.shape[d] for d in sorted(rhs_spec[:2])])

  def spatial_part(a):
    a = _pad_spatial(a, padding, lhs_dilation)
    return a[(slice(None),) + tuple(slice(None, None, s) for s in window_strides)]

  def dot(a):
    return jax.lax.dot_general(a, w, (((spatial + 1,), (in_axis,)), ((), ())),
                               precision=precision, preferred_element_type=preferred_element_type)

  y = spatial_part(dot(x)) if any(d != 1 for d in lhs_dilation) else dot(spatial_part(x))
  return _to_out_spec(y, out_spec)


def _output_smaller_than_kernel(lhs, rhs, params) -> bool:
  """Whether an output spatial extent is smaller than the kernel's (a plain convolution).

  XLA:CPU runs such convolutions 4-80x slower than the same product as
  patches and one dot: 3 x 3 with padding 1 on a 2 x 2 x 512 map (batch
  20) takes 363 ms against 5 ms, as in ResNet-50's last stage at 64 x 64.
  With outputs at least the kernel's size the two are within 1.5x. Not for
  non-overlapping windows (stride >= kernel, a ViT's patch embedding): as
  slices they become one per kernel tap (256 for 16 x 16), 3-4x slower than
  XLA's own convolution (vit_micro's smoothed gradient: 22 ms against 6 ms).
  """
  if not _is_plain(params) or any(d != 1 for d in params["lhs_dilation"] + params["rhs_dilation"]):
    return False
  lhs_spec, rhs_spec, _ = params["dimension_numbers"]
  if all(s >= rhs.shape[d] for s, d in zip(params["window_strides"], rhs_spec[2:])):
    return False
  for i, (lo, hi) in enumerate(params["padding"]):
    kernel = rhs.shape[rhs_spec[2 + i]]
    out = (lhs.shape[lhs_spec[2 + i]] + lo + hi - kernel) // params["window_strides"][i] + 1
    if 0 < out < kernel:
      return True
  return False


def _patches_dot(lhs, rhs, *, window_strides, padding, dimension_numbers,
                 precision, preferred_element_type, **_):
  """A plain convolution as patches (strided slices of the padded input) and one dot."""
  lhs_spec, _, out_spec = dimension_numbers
  rhs, _ = _canonical_kernel(rhs, dimension_numbers)  # (spatial..., in, out)
  spatial = len(window_strides)
  ones = (1,) * spatial
  x = _pad_spatial(_channels_last(lhs, lhs_spec), padding, ones)
  patches = jnp.concatenate([p for _, p in _taps(x, rhs.shape[:spatial], ones, window_strides)], axis=-1)
  y = jax.lax.dot_general(patches, rhs.reshape((-1, rhs.shape[-1])), (((spatial + 1,), (0,)), ((), ())),
                          precision=precision, preferred_element_type=preferred_element_type)
  return _to_out_spec(y, out_spec)


def _dilated_input_smaller_than_kernel(lhs, rhs, params) -> bool:
  """Whether this is the input gradient of a strided convolution whose cotangent is smaller than the kernel.

  JAX emits that gradient with ``lhs_dilation`` = the stride. When the
  cotangent is smaller than the kernel (a stride-2 3 x 3 convolution from
  4 x 4 to 2 x 2), XLA:CPU's default (YNNPACK) path takes 233 ms against
  18 ms with the zeros written out (4 x 4 x 512, batch 20); with larger
  cotangents writing the zeros out is 1.3-5x slower, so only this case is
  rewritten.
  """
  if all(d == 1 for d in params["lhs_dilation"]):
    return False
  lhs_spec, rhs_spec, _ = params["dimension_numbers"]
  if all(s >= rhs.shape[d] for s, d in zip(params["lhs_dilation"], rhs_spec[2:])):  # non-overlapping, see above
    return False
  return any(lhs.shape[lhs_spec[2 + i]] < rhs.shape[rhs_spec[2 + i]] for i in range(len(params["lhs_dilation"])))


def _write_out_dilation(lhs, params):
  """``lhs_dilation`` written out as interior zero padding; returns the input and the new params."""
  lhs_spec = params["dimension_numbers"][0]
  config = [(0, 0, 0)] * lhs.ndim
  for i, d in enumerate(params["lhs_dilation"]):
    config[lhs_spec[2 + i]] = (0, 0, d - 1)
  lhs = jax.lax.pad(lhs, jnp.zeros((), lhs.dtype), config)
  return lhs, dict(params, lhs_dilation=(1,) * len(params["lhs_dilation"]))


def fast_conv(lhs, rhs, *, canonical_kernels: bool = True, **params):
  """``conv_general_dilated`` in the form XLA:CPU runs fastest, with the same values.

  ``canonical_kernels=False`` leaves the other convolutions as they are: in
  the entry computation XLA:CPU lays their kernels out itself, 10-15%
  faster than our explicit transpose (VGG16's 3x3 layers, batch 20).
  """
  if _is_depthwise(lhs, rhs, params):
    return _depthwise_as_taps(lhs, rhs, **params)
  if _is_pointwise(rhs, params):
    return _pointwise_as_dot(lhs, rhs, **params)
  if _dilated_input_smaller_than_kernel(lhs, rhs, params):
    lhs, params = _write_out_dilation(lhs, params)
  if _output_smaller_than_kernel(lhs, rhs, params):
    return _patches_dot(lhs, rhs, **params)
  if canonical_kernels:
    rhs, params["dimension_numbers"] = _canonical_kernel(rhs, params["dimension_numbers"])
  return jex_core.primitives.conv_general_dilated_p.bind(lhs, rhs, **params)


