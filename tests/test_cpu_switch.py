"""The CPU switch and what the rewrite keeps: values through every kind of equation, names, inner jits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adaptgrad_jax as ag
from adaptgrad_jax import cpu

B01 = (0.0, 1.0)


def _score(x):
  return jnp.sum(jnp.sin(3.0 * x) * x)


@jax.custom_jvp
def _soft(x):
  return jnp.tanh(x)


_soft.defjvp(lambda primals, tangents: (_soft(primals[0]), 0.5 * tangents[0]))  # a deliberately odd rule


@jax.custom_vjp
def _clipped_grad(x):
  return jnp.sin(x)


_clipped_grad.defvjp(lambda x: (jnp.sin(x), x), lambda x, g: (jnp.clip(g * jnp.cos(x), -0.1, 0.1),))

_inner = jax.jit(lambda x: jnp.cos(x) * x)

_FUNCTIONS = {
    "cond": lambda x: jax.lax.cond(jnp.sum(x) > 1.0, jnp.sin, jnp.cos, x).sum(),
    "scan": lambda x: jax.lax.scan(lambda c, xi: (c * 0.9 + jnp.sin(xi), None), 0.0, x)[0],
    "while_loop": None,  # not reverse-differentiable: the grad_fn itself loops, below
    "custom_jvp": lambda x: jnp.sum(_soft(x)),
    "custom_vjp": lambda x: jnp.sum(_clipped_grad(x)),
    "checkpoint": lambda x: jnp.sum(jax.checkpoint(lambda y: jnp.sin(y) ** 2)(x)),
    "debug_print": lambda x: (jax.debug.print("", ordered=False), jnp.sum(jnp.sin(x)))[1],
    "pure_callback": lambda x: jnp.sum(jnp.sin(x)) + jax.pure_callback(
        lambda v: np.float32(np.sum(v) ** 2), jax.ShapeDtypeStruct((), jnp.float32), jax.lax.stop_gradient(x),
        vmap_method="sequential"),
    "inner_jit": lambda x: jnp.sum(_inner(x)),
}


def _while_grad(x):
  return jax.lax.while_loop(lambda s: s[0] < 3, lambda s: (s[0] + 1, jnp.sin(s[1])), (0, x))[1]


def _every_kind_grad(x):
  """Every kind of equation above in one grad_fn (one compile instead of nine)."""
  return jax.grad(lambda y: sum(f(y) for f in _FUNCTIONS.values() if f))(x) + _while_grad(x)


# Each kind on its own at the top level; all kinds at once inside the chunk loop of batch_size=3 (the
# rewrite descends into the loop's body the same way whatever the body holds).
@pytest.mark.parametrize("name, batch_size", [(name, None) for name in sorted(_FUNCTIONS)] + [("every_kind", 3)])
def test_rewrite_equals_no_rewrite(name, batch_size):
  grad = {"every_kind": _every_kind_grad, "while_loop": _while_grad}.get(name) or jax.grad(_FUNCTIONS[name])
  key, x = jax.random.key(0), jnp.linspace(0.1, 0.9, 5)
  build = lambda r: jax.jit(ag.adapt_smooth(grad, 0.95, 8, bounds=B01, batch_size=batch_size, cpu_rewrite=r))
  np.testing.assert_allclose(build(True)(key, x), build(False)(key, x), rtol=1e-6, atol=1e-7)


def test_large_leading_sums_become_a_product_with_ones():
  # The transforms' sums over a chunk of samples: a float sum over the leading axis of a large array is
  # a dot with ones (XLA:CPU runs it as a matrix-vector kernel, not a strided reduction). Other sums
  # (small, integer, other axes) are bound as written; values equal up to rounding. jnp sums bfloat16 in
  # float32, so that one is a dot too.
  x = jax.random.normal(jax.random.key(0), (16, 64, 80, 3))
  sums = lambda v: (jnp.sum(v, axis=0), jnp.sum(v[:, :2], axis=0), jnp.sum(v, axis=1),
                    jnp.sum(v.astype(jnp.int32), axis=0), jnp.sum(v.astype(jnp.bfloat16), axis=0))
  jaxpr = jax.make_jaxpr(cpu.rewrite(sums))(x).jaxpr
  reduced = [e.invars[0].aval for e in jaxpr.eqns if e.primitive.name == "reduce_sum"]
  assert [e.primitive.name for e in jaxpr.eqns].count("dot_general") == 2
  assert sorted((a.shape, str(a.dtype)) for a in reduced) == sorted([
      ((16, 2, 80, 3), "float32"), ((16, 64, 80, 3), "float32"), ((16, 64, 80, 3), "int32")])
  for got, want in zip(jax.jit(cpu.rewrite(sums))(x), sums(x)):
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32), rtol=1e-5, atol=1e-4)


def test_named_scopes_survive_the_rewrite():
  def f(x):
    with jax.named_scope("my_layer"):
      return jnp.sum(jnp.sin(x))

  fn = jax.jit(ag.adapt_smooth(jax.grad(f), 0.95, 4, bounds=B01, cpu_rewrite=True))
  text = fn.lower(jax.random.key(0), jnp.full(3, 0.5)).as_text(debug_info=True)
  assert "my_layer" in text
  assert "test_cpu_switch.py" in text  # the user's source lines, not the interpreter's


def test_inner_jit_name_kept_and_donation_respected():
  @jax.jit
  def named(x):
    return jnp.sin(x) * 2.0

  assert "named" in jax.jit(lambda x: named(x)).lower(jnp.ones(3)).as_text()
  rewritten = jax.jit(cpu.rewrite(lambda x: named(x)))
  assert "named" in rewritten.lower(jnp.ones(3)).as_text()
  donating = jax.jit(lambda x: x * 2.0, donate_argnums=0)
  jaxpr = jax.make_jaxpr(cpu.rewrite(lambda x: donating(x) + 1.0))(jnp.ones(3))
  inner = [e for e in jaxpr.jaxpr.eqns if e.primitive.name in ("jit", "pjit")]
  assert inner and any(inner[0].params["donated_invars"])  # bound unchanged, donation kept


def test_switch_reads_the_environment(monkeypatch):
  monkeypatch.delenv(cpu.REWRITE_ENV, raising=False)
  assert cpu.rewrite_enabled() is cpu.DEFAULT_REWRITE
  monkeypatch.setenv(cpu.REWRITE_ENV, "0")
  assert cpu.rewrite_enabled() is False and cpu.rewrite_enabled(True) is True
  monkeypatch.setenv(cpu.REWRITE_ENV, "1")
  assert cpu.rewrite_enabled() is True and cpu.rewrite_enabled(False) is False
  monkeypatch.setenv(cpu.REWRITE_ENV, "yes")
  with pytest.raises(ValueError, match="ADAPTGRAD_JAX_CPU_REWRITE='yes' must be 0"):
    cpu.rewrite_enabled()


def test_switch_off_leaves_the_program_as_written(monkeypatch):
  # A depthwise convolution is rewritten into slices when on, left a convolution when off.
  w = jnp.ones((3, 3, 1, 4)) * 0.1

  def f(x):
    y = jax.lax.conv_general_dilated(x[None], w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                     feature_group_count=4)
    return jnp.sum(jnp.tanh(y))

  x = jnp.full((6, 6, 4), 0.5)
  text = lambda r: jax.jit(ag.adapt_smooth(jax.grad(f), 0.95, 4, bounds=B01, cpu_rewrite=r)).lower(
      jax.random.key(0), x).as_text()
  if jax.default_backend() == "cpu":
    assert "convolution" not in text(True)
  assert "convolution" in text(False)
  monkeypatch.setenv(cpu.REWRITE_ENV, "0")
  assert "convolution" in text(None)


def test_eager_calls_are_not_rewritten(monkeypatch):
  seen = []
  original = cpu.rewrite

  def spy(fn, **kwargs):
    seen.append(1)
    return original(fn, **kwargs)

  monkeypatch.setattr(cpu, "rewrite", spy)
  smoothed = ag.adapt_smooth(jax.grad(_score), 0.95, 4, bounds=B01, cpu_rewrite=True)
  smoothed(jax.random.key(0), jnp.full(3, 0.5))
  assert not seen
  jax.jit(smoothed)(jax.random.key(0), jnp.full(3, 0.5))
  if jax.default_backend() == "cpu":
    assert seen  # traced under jit: rewritten
