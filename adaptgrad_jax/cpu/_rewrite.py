"""The switch, :func:`rewrite` and :func:`compiler_options` (see the package docstring)."""

import functools
import os
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

from adaptgrad_jax.cpu import _interpreter

REWRITE_ENV = "ADAPTGRAD_JAX_CPU_REWRITE"
"""Environment variable of the switch: ``1`` rewrites (the default), ``0`` does not."""

DEFAULT_REWRITE = True
"""The switch when neither the keyword nor the environment variable says (see the module docstring)."""


def validate_switch(cpu_rewrite: Optional[bool]) -> Optional[bool]:
  """Checks the ``cpu_rewrite`` keyword of a transform (None, True or False)."""
  if cpu_rewrite is not None and not isinstance(cpu_rewrite, bool):
    raise TypeError(
        f"cpu_rewrite={cpu_rewrite!r} must be None (${REWRITE_ENV}, else on),"
        " True or False."
    )
  return cpu_rewrite


def rewrite_enabled(cpu_rewrite: Optional[bool] = None) -> bool:
  """Whether the switch is on: the keyword if given, else ``$ADAPTGRAD_JAX_CPU_REWRITE``, else on.

  Raises:
    ValueError: if the environment variable is set to anything but 0 or 1.

  Example:
    >>> from adaptgrad_jax import cpu
    >>> cpu.rewrite_enabled(False)
    False
  """
  if validate_switch(cpu_rewrite) is not None:
    return cpu_rewrite
  value = os.environ.get(REWRITE_ENV, "").strip()
  if not value:
    return DEFAULT_REWRITE
  if value not in ("0", "1"):
    raise ValueError(f"{REWRITE_ENV}={value!r} must be 0 (off) or 1 (on); unset means on.")
  return value == "1"


def applies(cpu_rewrite: Optional[bool], *values: Any) -> bool:
  """Whether a transform rewrites now: the switch is on, the backend is CPU, and ``values`` are being traced."""
  if not rewrite_enabled(cpu_rewrite) or jax.default_backend() != "cpu":
    return False
  return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(values))


def rewrite(fn: Callable[..., Any], *, canonical_kernels: bool = True) -> Callable[..., Any]:
  """Returns ``fn`` rewritten for XLA:CPU, as described in this module's docstring.

  Args:
    fn: a function of arrays returning a pytree of arrays.
    canonical_kernels: transpose the kernels of the convolutions not
      otherwise rewritten to (spatial..., in, out), which XLA:CPU needs inside
      loop bodies (a scan); in the entry computation XLA lays kernels out
      itself, 10-15% faster: pass False there.

  Returns:
    A function with ``fn``'s arguments and results.

  Example:
    >>> from adaptgrad_jax import cpu
    >>> conv = lambda x, w: jax.lax.conv(x, w, (1, 1), "SAME")
    >>> x, w = jnp.ones((1, 2, 5, 5)), jnp.ones((4, 1, 1, 1))  # grouped: depthwise
    >>> grad = jax.grad(lambda x: jnp.sum(jax.lax.conv_general_dilated(
    ...     x, w, (1, 1), "SAME", feature_group_count=2)))
    >>> bool(jnp.allclose(jax.jit(cpu.rewrite(grad))(x), grad(x)))
    True
  """

  @functools.wraps(fn)
  def rewritten(*args):
    closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(*args)
    out = _interpreter.evaluate(closed.jaxpr, closed.consts, *jax.tree.leaves(args),
                                canonical_kernels=canonical_kernels, unroll_prng=True)
    return jax.tree.unflatten(jax.tree.structure(out_shape), out)

  return rewritten


COMPILER_OPTIONS = {
    "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE",
}
"""XLA:CPU options of :func:`compiler_options`: jaxlib 0.10's default YNNPACK fusions less convolutions."""


@functools.lru_cache(maxsize=None)
def _options_accepted(items: tuple[tuple[str, str], ...]) -> bool:
  try:
    jax.jit(lambda x: x + 1).lower(jnp.zeros((), jnp.float32)).compile(compiler_options=dict(items))
  except Exception:  # pylint: disable=broad-except  (an XLA without these options)
    return False
  return True


def compiler_options(backend: Optional[str] = None) -> dict[str, str]:
  """XLA compiler options that make convolutional networks faster on CPU; ``{}`` elsewhere.

  jaxlib 0.10's XLA:CPU sends convolutions to YNNPACK by default, which on a
  2-core AVX-512 Xeon is up to 2.4x slower than XLA's Eigen convolutions for
  the 3 x 3 layers of VGG and ResNet. These options keep YNNPACK for dots and
  reductions and give convolutions back to Eigen (VGG16's input gradient at
  64 x 64, n = 50: 4210 -> 2949 ms). Pass them when compiling::

    smoothed = jax.jit(ag.adapt_smooth(jax.grad(f), bounds=b), compiler_options=cpu.compiler_options())

  or set ``XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=-individual_convolution``
  for the whole process. Results are unchanged up to float rounding.

  Args:
    backend: defaults to ``jax.default_backend()``.

  Returns:
    The options on the CPU backend when this XLA accepts them, else ``{}``.

  Example:
    >>> from adaptgrad_jax import cpu
    >>> sorted(cpu.compiler_options("gpu"))
    []
  """
  if (backend or jax.default_backend()) != "cpu":
    return {}
  return dict(COMPILER_OPTIONS) if _options_accepted(tuple(COMPILER_OPTIONS.items())) else {}

