"""The jaxpr interpreter behind :func:`adaptgrad_jax.cpu.rewrite`.

It is ``jax.core.eval_jaxpr`` with four substitutions, and nothing else:

* ``conv_general_dilated`` -> :func:`~adaptgrad_jax.cpu._convolutions.fast_conv`;
* a float32 / float64 ``reduce_sum`` over the leading axis of a large array
  (the transforms' sums over a chunk of samples) -> a product with a vector
  of ones (:func:`_leading_sum_as_dot`);
* Threefry ``random_bits`` / ``random_split`` -> the unrolled hash of
  :mod:`~adaptgrad_jax.cpu._threefry` (bit for bit JAX's values);
* an inner ``jax.jit`` without shardings, layouts, donation or compiler
  options is re-evaluated by this interpreter *inside a new* ``jax.jit`` of the
  same name (so its convolutions are rewritten and it stays a named call in
  profiles); one with any of those is bound unchanged, keeping them.

Every equation is bound inside ``source_info_util.user_context`` with its
traceback and name stack, as ``jax.core.eval_jaxpr`` does, so a user's
``jax.named_scope`` and line numbers survive in the lowered program, profiles
and ``jax_debug_nans`` reports. Control flow (``cond``, ``scan``,
``while_loop``), custom derivative rules, ``checkpoint`` and callbacks are
bound unchanged.
"""

from typing import Any

import jax
from jax.extend import core as jex_core
from jax.extend import source_info_util

from adaptgrad_jax.cpu import _convolutions
from adaptgrad_jax.cpu import _threefry

_JIT_PRIMITIVES = ("jit", "pjit")
_CONV = jex_core.primitives.conv_general_dilated_p
_SUM = jex_core.primitives.reduce_sum_p
_LEADING_SUM_MIN_SIZE = 1 << 16
"""Elements from which a sum over the leading axis is a dot: below it the two cost about the same."""


def _leading_sum_as_dot(x, params):
  """``sum(x, axis=0)`` as ``ones @ x`` where that is what XLA:CPU runs fastest, else None.

  XLA:CPU reduces over a major axis element by element, strided; a product
  with a ones vector runs as a matrix-vector kernel. smooth_diff sums
  EfficientNet-Lite0's 33 ReLU6 masks (6.2 million elements a sample) over
  the samples: at 224 px and n = 16 it took 0.63 s with this rule and 1.75 s
  without (``python benchmarks/cost_smooth_diff.py --lite0 224 --n 16``).
  Only for float32 and float64 (the product accumulates in the input's
  dtype).
  """
  dtype = getattr(x, "dtype", None)
  if (tuple(params["axes"]) != (0,) or dtype not in (jax.numpy.float32, jax.numpy.float64)
      or x.ndim < 2 or x.shape[0] < 2 or x.size < _LEADING_SUM_MIN_SIZE):
    return None
  ones = jax.numpy.ones((x.shape[0],), dtype)
  return jax.lax.dot_general(ones, x, (((0,), (0,)), ((), ())), preferred_element_type=dtype)


def _plain_jit(params) -> bool:
  """A jit call with nothing the user chose beyond its function: no shardings, layouts, donation or options."""
  unspecified = lambda s: type(s).__name__ == "UnspecifiedValue"
  return (all(unspecified(s) for s in params.get("in_shardings", ()) + params.get("out_shardings", ()))
          and all(layout is None for layout in params.get("in_layouts", ()) + params.get("out_layouts", ()))
          and not any(params.get("donated_invars", ()))
          and not params.get("compiler_options_kvs", ()))


def _unrolled_prng(name, invals, params):
  """The outputs of a ``random_bits`` / ``random_split`` equation, unrolled, or None to keep JAX's."""
  if name == "random_bits" and _threefry.applies(invals[0], params["shape"]) and _threefry.unroll_bits(params["shape"]):
    return [_threefry.random_bits(invals[0], params["bit_width"], params["shape"])]
  if name == "random_split" and _threefry.applies(invals[0], params["shape"]):
    return [_threefry.split(invals[0], params["shape"])]
  return None


def evaluate(jaxpr, consts, *args, canonical_kernels: bool, unroll_prng: bool) -> list[Any]:
  """Evaluates ``jaxpr`` like ``jax.core.eval_jaxpr``, with the substitutions of this module."""
  env = {}

  def read(v):
    return v.val if isinstance(v, jex_core.Literal) else env[v]

  env.update(zip(jaxpr.constvars, consts))
  env.update(zip(jaxpr.invars, args))
  for eqn in jaxpr.eqns:
    invals = [read(v) for v in eqn.invars]
    name = eqn.primitive.name
    name_stack = source_info_util.current_name_stack() + eqn.source_info.name_stack
    with source_info_util.user_context(eqn.source_info.traceback, name_stack=name_stack), eqn.ctx.manager:
      outvals = _unrolled_prng(name, invals, eqn.params) if unroll_prng else None
      if outvals is not None:
        pass
      elif eqn.primitive is _CONV:
        outvals = [_convolutions.fast_conv(*invals, canonical_kernels=canonical_kernels, **eqn.params)]
      elif eqn.primitive is _SUM and (dot := _leading_sum_as_dot(invals[0], eqn.params)) is not None:
        outvals = [dot]
      elif name in _JIT_PRIMITIVES and _plain_jit(eqn.params):
        inner = eqn.params["jaxpr"]

        def call(*inner_args, inner=inner):
          return evaluate(inner.jaxpr, inner.consts, *inner_args,
                          canonical_kernels=canonical_kernels, unroll_prng=unroll_prng)

        call.__name__ = call.__qualname__ = eqn.params.get("name", "call")
        if eqn.params.get("inline", False):
          outvals = call(*invals)
        else:
          outvals = jax.jit(call, keep_unused=eqn.params.get("keep_unused", False))(*invals)
      else:
        outvals = eqn.primitive.bind(*invals, **eqn.primitive.get_bind_params(eqn.params))
        if not eqn.primitive.multiple_results:
          outvals = [outvals]
    env.update(zip(eqn.outvars, outvals))
  return [read(v) for v in jaxpr.outvars]
