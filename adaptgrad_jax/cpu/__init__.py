"""CPU acceleration: what it does to a program, in one place, behind one switch.

XLA:CPU runs some programs that the smoothing transforms produce far below
what the hardware allows. This module holds everything the library does about
it; the transforms enter it from one place (``adaptgrad_jax._monte_carlo``).

**The switch.** The transforms take ``cpu_rewrite=None | True | False``. None
reads the environment variable ``ADAPTGRAD_JAX_CPU_REWRITE`` (``1`` on, ``0``
off); unset, the rewrite is **on**, because on the models we measured it is
what makes the CPU competitive (``benchmarks/README.md``): EfficientNet-Lite0
at 64 x 64 about 13x faster, ResNet-50 about 3x, the MNIST MLP 1.2x; VGG16
unchanged. It only ever applies on the CPU backend, and only while the
transform is being traced (under ``jax.jit``, ``vmap``, ``grad``): a plain
eager call runs the user's function as written.

**What it does to a program** (:func:`rewrite`): the function is traced to a
jaxpr and re-evaluated equation by equation, as ``jax.core.eval_jaxpr`` does
(with each equation's source information and name stack, so ``named_scope``
and line numbers survive), except that:

1. each ``conv_general_dilated`` (those of gradients included) becomes the
   equivalent computation XLA:CPU runs fastest: depthwise convolutions a sum
   of shifted slices, 1 x 1 convolutions a dot, convolutions whose output is
   smaller than the kernel patches and a dot, strided input gradients whose
   cotangent is smaller than the kernel with the dilation written out, and
   (inside loop bodies) every other kernel in the (spatial..., in, out) layout;
2. a float32 or float64 sum over the leading axis of a large array (the
   transforms' sums over a chunk of samples) becomes a product with a vector
   of ones, which XLA:CPU runs as a matrix-vector kernel: smooth_diff on
   EfficientNet-Lite0 at 224 px, n = 16, 1.75 s -> 0.63 s;
3. Threefry ``random_split`` and, for draws whose minor dimension is at least
   8, ``random_bits`` are computed with the hash rounds unrolled: bit for bit
   JAX's values, without XLA:CPU's rolled loop;
4. an inner ``jax.jit`` with no shardings, layouts, donation or compiler
   options stays a jit of the same name whose body gets the same rewrites; one
   with any of those is kept exactly as it is (and its body is not rewritten).

Control flow, custom derivative rules, ``checkpoint`` and callbacks are kept
as they are. Values equal the original program's up to float rounding.

:func:`compiler_options` is independent of the switch: XLA options to pass
when compiling on CPU (they give 3 x 3 convolutions to Eigen rather than
YNNPACK).
"""

from adaptgrad_jax.cpu._rewrite import COMPILER_OPTIONS as COMPILER_OPTIONS
from adaptgrad_jax.cpu._rewrite import DEFAULT_REWRITE as DEFAULT_REWRITE
from adaptgrad_jax.cpu._rewrite import REWRITE_ENV as REWRITE_ENV
from adaptgrad_jax.cpu._rewrite import applies as applies
from adaptgrad_jax.cpu._rewrite import compiler_options as compiler_options
from adaptgrad_jax.cpu._rewrite import rewrite as rewrite
from adaptgrad_jax.cpu._rewrite import rewrite_enabled as rewrite_enabled
from adaptgrad_jax.cpu._rewrite import validate_switch as validate_switch

__all__ = (
    "COMPILER_OPTIONS",
    "DEFAULT_REWRITE",
    "REWRITE_ENV",
    "applies",
    "compiler_options",
    "rewrite",
    "rewrite_enabled",
    "validate_switch",
)
