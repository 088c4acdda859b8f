"""Wrapping functions: signatures, the stochastic-function rule, and build-time validation.

The calling convention of every transform in the package:

* a *stochastic* function takes a PRNG key first, ``fn(key, *args)``; the
  smoothing transforms and :func:`~adaptgrad_jax.noise_grad` return one;
* a *deterministic* transform (Gradient x Input, Integrated Gradients) keeps
  the calling convention of the function it wraps.

**The rule a reader can predict.** A function is stochastic if and only if it
carries the mark this module sets: every function the library's transforms
return carries it (``True`` or ``False``), :func:`stochastic` marks your own,
and wrappers that copy function attributes (``jax.jit``, ``functools.wraps``)
keep it. Parameter names are never read. An unmarked function is
deterministic, unless a transform is told otherwise with ``stochastic=True``;
a ``functools.partial`` of a stochastic function with bound positional
arguments is refused (the key may be among them), as is any mark that is not
a bool.
"""

import functools
import inspect
import numbers
from typing import Any, Callable, Optional

import jax
import numpy as np

from adaptgrad_jax._noise import check_key, is_typed_key

MARK = "__adaptgrad_stochastic__"
"""The attribute that says whether a function takes a leading PRNG key."""


def stochastic(fn: Callable[..., Any]) -> Callable[..., Any]:
  """Declares that ``fn`` takes a PRNG key as its first argument: ``fn(key, *args)``.

  Use it for your own stochastic gradient functions before wrapping them in a
  transform, or pass ``stochastic=True`` to that transform.

  Example:
    >>> import adaptgrad_jax as ag
    >>> noisy_grad = ag.stochastic(lambda rng, x: x + jax.random.normal(rng, x.shape))
    >>> ag.is_stochastic(noisy_grad)
    True
    >>> gi = ag.gradient_x_input(noisy_grad)
    >>> gi(jax.random.key(0), jnp.ones(2)).shape
    (2,)
  """
  if not callable(fn):
    raise TypeError(f"stochastic(fn) needs a callable; got {fn!r}.")

  @functools.wraps(fn)
  def marked(*args, **kwargs):
    return fn(*args, **kwargs)

  setattr(marked, MARK, True)
  return marked


def is_stochastic(fn: Callable[..., Any]) -> bool:
  """Whether ``fn`` takes a leading PRNG key, by the rule in this module's docstring.

  Example:
    >>> import adaptgrad_jax as ag
    >>> g = jax.grad(lambda x: jnp.sum(x ** 2))
    >>> ag.is_stochastic(g), ag.is_stochastic(ag.smooth_grad(g, bounds=(0.0, 1.0)))
    (False, True)
    >>> ag.is_stochastic(jax.jit(ag.smooth_grad(g, bounds=(0.0, 1.0))))
    True
  """
  mark = getattr(fn, MARK, None)
  if mark is not None:
    if not isinstance(mark, (bool, np.bool_)):
      raise TypeError(f"{fn!r} has {MARK}={mark!r}; it must be a bool.")
    return bool(mark)
  if isinstance(fn, functools.partial) and is_stochastic(fn.func):
    if fn.args:
      raise ValueError(
          f"{fn!r} is a functools.partial of a stochastic function with bound"
          " positional arguments, so whether it still takes the key first"
          " cannot be known; bind keyword arguments only, or pass"
          " stochastic=True / False explicitly."
      )
    return True
  return False


def resolve_stochastic(fn: Callable[..., Any], declared: Optional[bool]) -> bool:
  """``declared`` if given (a bool), else :func:`is_stochastic` of ``fn``."""
  if declared is None:
    return is_stochastic(fn)
  if not isinstance(declared, (bool, np.bool_)):
    raise TypeError(
        f"stochastic={declared!r} must be None (use the function's mark: the"
        " library's transforms set it, ag.stochastic(fn) declares it), True"
        " (it is called as fn(key, *args)) or False."
    )
  return bool(declared)


def _key_parameter() -> inspect.Parameter:
  return inspect.Parameter("key", inspect.Parameter.POSITIONAL_ONLY)


def _signature(fn: Callable[..., Any], add_key: bool) -> inspect.Signature:
  try:
    signature = inspect.signature(fn)
  except (TypeError, ValueError):  # builtins, some C callables
    signature = inspect.Signature([
        inspect.Parameter("args", inspect.Parameter.VAR_POSITIONAL),
        inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD),
    ])
  if not add_key:
    return signature
  params = [p.replace(kind=inspect.Parameter.POSITIONAL_ONLY)
            if p.kind == inspect.Parameter.POSITIONAL_ONLY else p
            for p in signature.parameters.values()]
  try:
    return signature.replace(parameters=[_key_parameter()] + params)
  except ValueError:  # fn has its own parameter named key: keep the arity readable, not the names
    return inspect.Signature([_key_parameter(),
                              inspect.Parameter("args", inspect.Parameter.VAR_POSITIONAL),
                              inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD)])


def wrap(wrapper: Callable[..., Any], wrapped: Callable[..., Any], name: str, *,
         is_stochastic_result: bool, adds_key: bool) -> Callable[..., Any]:
  """Gives ``wrapper`` ``wrapped``'s metadata, its signature (with a leading key if ``adds_key``) and the mark.

  ``functools.wraps`` alone would set ``__wrapped__``, and ``jax.jit`` would
  then read ``wrapped``'s signature (without the key).
  """
  functools.update_wrapper(wrapper, wrapped)
  del wrapper.__wrapped__
  wrapper.__signature__ = _signature(wrapped, adds_key)
  wrapped_name = getattr(wrapped, "__name__", type(wrapped).__name__)
  wrapper.__name__ = wrapper.__qualname__ = f"{name}({wrapped_name})"
  setattr(wrapper, MARK, bool(is_stochastic_result))
  return wrapper


def split_key_args(call_args: tuple, has_key: bool, argnums: int, name: str) -> tuple[Any, tuple]:
  """``(key, args)`` from a call, with a clear error if the key is not a key or the input is missing."""
  key, args = (call_args[0], call_args[1:]) if has_key and call_args else (None, call_args)
  if has_key and not call_args:
    raise TypeError(f"{name} is stochastic: call it as fn(key, x, ...).")
  if has_key:
    check_key(key)
  elif len(args) > argnums and is_typed_key(args[argnums]):  # the input's place holds a key: one passed too many
    raise TypeError(
        f"{name} is deterministic and takes no key: call it as fn(x, ...) with the arguments of the"
        f" function it explains; its input (positional argument argnums={argnums}) here is a PRNG key."
    )
  if len(args) <= argnums:
    how = "fn(key, x, ...)" if has_key else "fn(x, ...)"
    raise TypeError(
        f"{name} reads its input from positional argument argnums={argnums}"
        f"{' after the key' if has_key else ''}, but was called with"
        f" {len(args)} such argument(s); pass the input positionally: {how}."
    )
  return key, args


# ----------------------------------------------------------------------------
# Build-time validation: messages name the argument, the value and the fix.


def validate_callable(fn, name: str = "grad_fn") -> None:
  if not callable(fn):
    raise TypeError(f"{name}={fn!r} is not callable; pass a gradient function such as jax.grad(f).")


def validate_argnums(fn, argnums, has_key: bool, name: str = "grad_fn") -> int:
  """Checks ``argnums`` (counted after the key for a stochastic ``fn``) against ``fn``'s signature."""
  validate_callable(fn, name)
  if isinstance(argnums, (bool, np.bool_)) or not isinstance(argnums, numbers.Integral) or argnums < 0:
    raise ValueError(
        f"argnums={argnums!r} must be a non-negative int: the index of the"
        f" positional argument of {name} (after the key, if it takes one) that"
        " holds the input (0 for grad_fn(x, ...))."
    )
  argnums = int(argnums)
  try:
    params = inspect.signature(fn).parameters.values()
  except (TypeError, ValueError):
    return argnums
  kinds = [p.kind for p in params]
  if inspect.Parameter.VAR_POSITIONAL in kinds:
    return argnums
  positional = sum(k in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
                   for k in kinds) - int(has_key)
  if argnums >= positional:
    where = " after its key" if has_key else ""
    raise ValueError(
        f"argnums={argnums} is out of range: {name} takes {max(positional, 0)}"
        f" positional argument(s){where}, so argnums must be <"
        f" {max(positional, 0)}."
    )
  return argnums


def validate_count(value, name: str, hint: str, *, maximum: Optional[int] = None) -> int:
  """Checks a sample or step count: an int >= 1 (``True`` and ``2.0`` are refused)."""
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
    raise TypeError(f"{name}={value!r} must be an int >= 1; {hint}")
  if value < 1:
    raise ValueError(f"{name}={value!r} must be >= 1; {hint}")
  if maximum is not None and value > maximum:
    raise ValueError(
        f"{name}={value!r} is more than this library evaluates ({maximum:,}):"
        f" the keys alone would not fit in memory. {hint}"
    )
  return int(value)


def validate_number(value, name: str, hint: str) -> float:
  """A real Python/NumPy number (not a string, not a bool), returned as float."""
  if isinstance(value, jax.core.Tracer):
    return value
  if isinstance(value, (bool, np.bool_, str, bytes)) or not isinstance(value, (numbers.Real, np.ndarray, jax.Array)):
    raise TypeError(f"{name}={value!r} must be a number; {hint}")
  if np.ndim(value) != 0:
    raise TypeError(f"{name}={value!r} must be a scalar number; {hint}")
  return float(value)


def validate_flag(value, name: str) -> bool:
  if not isinstance(value, (bool, np.bool_)):
    raise TypeError(f"{name}={value!r} must be True or False.")
  return bool(value)


def validate_choice(value, name: str, choices: tuple, hint: str = "") -> str:
  if not isinstance(value, str) or value not in choices:
    raise ValueError(f"{name}={value!r} is not supported; use one of {choices}.{(' ' + hint) if hint else ''}")
  return value


def validate_stderr_option(value, name: str = "return_stderr") -> Optional[bool]:
  """None (follow the gradient function: an Estimate in, an Estimate out), True or False."""
  if value is None or isinstance(value, (bool, np.bool_)):
    return None if value is None else bool(value)
  raise TypeError(
      f"{name}={value!r} must be None (return an Estimate if and only if"
      " grad_fn returns one), True or False."
  )
