"""The identity of an attribution run: a fingerprint of the explanation that made the maps.

An output directory must never mix maps of two explanations (another ``c``,
``n``, bounds, sigma rule, method, model or weights). ``attribute`` therefore
records who made the maps and compares it on resume. A name such as
``adapt_smooth(logit)`` does not see hyper-parameters, so by default the run
is identified by :func:`fingerprint`: a sha256 over everything the callable
can reach that decides its values.

The rule (a reader can predict it):

* **Your code** (functions and classes defined outside installed packages) is
  described by its bytecode and constants, its default arguments, the values
  in its closure and the module globals it reads, followed recursively;
* **library code** (installed packages, the standard library, and
  ``adaptgrad_jax`` itself) the same way, except that the globals it reads
  are not followed: its package version stands for them. The values in its
  closure, defaults and ``functools.partial`` arguments are followed: that
  is where the functions the library returns keep their hyper-parameters
  (``adapt_smooth``'s ``c``, ``n`` and bounds, ``jax.grad``'s function);
* **values**: Python scalars, strings, containers, NumPy and JAX arrays (their
  dtype, shape and a sha256 of their bytes: weights count), modules by name;
  instances of your classes by their class and attributes; instances of
  library classes that are registered pytrees (Flax NNX and equinox modules,
  ``nnx.State``) by their class, their pytree structure and static data,
  and their leaves.

Anything else (an instance of a library class that is no pytree such as a
PyTorch module, a file, a lock, an array spread over processes, more than
``_MAX_OBJECTS`` objects or 1 GiB of arrays) cannot be described soundly, so
the fingerprint is unknown, and its ``why_not`` says where it was met. Two
runs resume each other only when both fingerprints are known and equal;
otherwise the caller must name the run with ``explain_id``.

Not seen, by design: the line numbers of your code (a function moved or a
comment edited keeps its fingerprint), and whatever library code
reads from its own module globals or from files at call time (its version
stands for it). Equal fingerprints are therefore "the same code with the
same values", which is what decides the maps of a deterministic explanation.
"""

from __future__ import annotations

import collections.abc
import contextlib
import dataclasses
import enum
import functools
import hashlib
import importlib.metadata
import os
import sys
import sysconfig
import types
from typing import Any

import numpy as np

_MAX_OBJECTS = 100_000  # Objects visited before the fingerprint is given up.
_MAX_BYTES = 1 << 30  # Array bytes hashed before it is given up (1 GiB).
# Library types whose attributes fully describe them (walked like your classes).
_WALKABLE_LIBRARY_TYPES = ("jax._src.custom_derivatives.custom_jvp",
                           "jax._src.custom_derivatives.custom_vjp",
                           # Stateless bases of your classes.
                           "abc.ABC", "typing.Generic", "typing.Protocol")
_OWN_PACKAGE = __name__.split(".")[0]


@dataclasses.dataclass(frozen=True)
class Fingerprint:
  """A sha256 of an explanation, or why it could not be taken.

  Attributes:
    digest: hex sha256, or None when the callable reaches something that
      cannot be described.
    why_not: where and what that was (None when `digest` is known).
  """

  digest: str | None
  why_not: str | None = None


class _Opaque(Exception):
  """Raised inside the walk: `what` met at `path` cannot be described."""

  def __init__(self, what: str, path: str):
    super().__init__(f"{what} at {path}")


class _TooBig(_Opaque):
  """Raised when the walk exceeds its object or byte budget."""


@functools.lru_cache(maxsize=None)
def _library_roots() -> tuple[str, ...]:
  paths = set()
  for name in ("stdlib", "platstdlib", "purelib", "platlib"):
    with contextlib.suppress(Exception):
      paths.add(os.path.realpath(sysconfig.get_paths()[name]))
  with contextlib.suppress(Exception):
    import site  # pylint: disable=import-outside-toplevel
    paths.update(os.path.realpath(p) for p in site.getsitepackages())
    paths.add(os.path.realpath(site.getusersitepackages()))
  return tuple(sorted(p for p in paths if p))


@functools.lru_cache(maxsize=None)
def _is_library(module_name: str | None) -> bool:
  """True for installed packages, the standard library and this package."""
  if not module_name:
    return False
  top = module_name.split(".")[0]
  if top == _OWN_PACKAGE or top in sys.builtin_module_names:
    return True
  file = getattr(sys.modules.get(top), "__file__", None)
  if file is None:  # __main__ of a notebook or REPL, a namespace package.
    return False
  file = os.path.realpath(file)
  return any(file.startswith(root + os.sep) for root in _library_roots())


@functools.lru_cache(maxsize=None)
def _version(module_name: str) -> str:
  top = module_name.split(".")[0]
  try:
    return importlib.metadata.version(top)
  except Exception:  # pylint: disable=broad-except
    pass
  version = getattr(sys.modules.get(top), "__version__", None)
  if isinstance(version, str):
    return version
  return "python-" + ".".join(map(str, sys.version_info[:2]))


def _code_names(code: types.CodeType) -> list[str]:
  """Global or attribute names a code object (and its nested ones) reads."""
  names = list(code.co_names)
  for const in code.co_consts:
    if isinstance(const, types.CodeType):
      names += _code_names(const)
  return names


class _Walker:
  """Feeds a canonical description of an object graph into one sha256."""

  def __init__(self):
    self.hash = hashlib.sha256()
    self.seen: dict[int, int] = {}
    self.alive: list[Any] = []  # Keeps visited objects alive: ids stay unique.
    self.nbytes = 0

  def put(self, *tokens) -> None:
    for token in tokens:
      text = token if isinstance(token, str) else repr(token)
      self.hash.update(f"{len(text)}:{text};".encode())

  def visit(self, obj: Any, path: str) -> None:
    if obj is None or obj is Ellipsis or isinstance(
        obj, (bool, int, float, complex, str, bytes)):
      self.put(type(obj).__name__, repr(obj))
      return
    if id(obj) in self.seen:  # Shared or cyclic: refer to the first visit.
      self.put("ref", self.seen[id(obj)])
      return
    if len(self.seen) >= _MAX_OBJECTS:
      raise _TooBig(f"more than {_MAX_OBJECTS} objects", path)
    self.seen[id(obj)] = len(self.seen)
    self.alive.append(obj)
    self._visit_new(obj, path)

  def _visit_new(self, obj: Any, path: str) -> None:  # pylint: disable=too-many-branches,too-many-return-statements
    if isinstance(obj, enum.Enum):
      self.put("enum", _type_name(type(obj)), obj.name)
    elif isinstance(obj, (np.generic, np.ndarray)) or _is_jax_array(obj):
      self._array(obj, path)
    elif isinstance(obj, np.dtype):
      self.put("dtype", obj.str)
    elif isinstance(obj, (tuple, list)):
      self.put(_type_name(type(obj)), len(obj))
      if type(obj) not in (tuple, list):  # A NamedTuple: its class too.
        self._class(type(obj), path)
      for i, item in enumerate(obj):
        self.visit(item, f"{path}[{i}]")
    elif isinstance(obj, dict):
      self.put(_type_name(type(obj)), len(obj))
      for k, v in obj.items():
        self.visit(k, f"{path}.keys()")
        self.visit(v, f"{path}[{k!r}]")
    elif isinstance(obj, (set, frozenset)):
      if not all(x is None or isinstance(x, (bool, int, float, str, bytes))
                 for x in obj):
        raise _Opaque("a set of objects (its order is not reproducible)", path)
      self.put(type(obj).__name__, sorted(repr(x) for x in obj))
    elif isinstance(obj, types.ModuleType):
      self.put("module", obj.__name__)
    elif isinstance(obj, functools.partial):
      self.put("partial", _type_name(type(obj)))
      self.visit(obj.func, f"{path}.func")
      self.visit(obj.args, f"{path}.args")
      self.visit(obj.keywords, f"{path}.keywords")
    elif isinstance(obj, types.MethodType):
      self.put("method")
      self.visit(obj.__func__, f"{path}.__func__")
      self.visit(obj.__self__, f"{path}.__self__")
    elif isinstance(obj, types.FunctionType):
      self._function(obj, path)
    elif isinstance(obj, functools._lru_cache_wrapper):  # pylint: disable=protected-access
      self.put("lru_cache")  # A cache does not change values.
      self.visit(obj.__wrapped__, f"{path}.__wrapped__")
    elif isinstance(obj, (types.BuiltinFunctionType, types.WrapperDescriptorType,
                          types.MethodWrapperType, types.MethodDescriptorType)):
      self.put("builtin", getattr(obj, "__module__", None) or "",
               getattr(obj, "__qualname__", repr(obj)))
      owner = getattr(obj, "__self__", None)
      if owner is not None and not isinstance(owner, (types.ModuleType, type)):
        self.visit(owner, f"{path}.__self__")
    elif isinstance(obj, type):
      self._class(obj, path)
    elif isinstance(obj, types.CodeType):
      self._code(obj, path)
    else:
      self._instance(obj, path)

  def _array(self, obj, path: str) -> None:
    if _is_jax_array(obj):
      import jax  # pylint: disable=import-outside-toplevel
      if self.nbytes + getattr(obj, "nbytes", 0) > _MAX_BYTES:
        raise _TooBig(f"more than {_MAX_BYTES >> 30} GiB of arrays to hash",
                      path)
      if isinstance(obj, jax.core.Tracer):
        raise _Opaque("a traced value (fingerprint outside jax transforms)", path)
      if jax.dtypes.issubdtype(obj.dtype, jax.dtypes.prng_key):
        self.put("key", str(jax.random.key_impl(obj)))
        obj = jax.random.key_data(obj)
      if not getattr(obj, "is_fully_addressable", True):
        raise _Opaque("an array spread over processes", path)
      obj = np.asarray(jax.device_get(obj))
    arr = np.asarray(obj)
    if arr.dtype.hasobject:
      raise _Opaque("an object array", path)
    self.nbytes += arr.nbytes
    if self.nbytes > _MAX_BYTES:
      raise _TooBig(f"more than {_MAX_BYTES >> 30} GiB of arrays to hash", path)
    flat = np.ascontiguousarray(arr).reshape(-1).view(np.uint8)
    self.put("array", arr.dtype.str, arr.shape,
             hashlib.sha256(flat.data).hexdigest())

  def _function(self, fn: types.FunctionType, path: str) -> None:
    module = fn.__globals__.get("__name__")
    code = fn.__code__
    self.put("function", module or "",
             getattr(code, "co_qualname", code.co_name))
    library = _is_library(module)
    if library:
      self.put("version", _version(module))
    self._code(code, path)
    self.visit(fn.__defaults__, f"{path}.__defaults__")
    self.visit(fn.__kwdefaults__, f"{path}.__kwdefaults__")
    for name, cell in zip(code.co_freevars, fn.__closure__ or ()):
      try:
        contents = cell.cell_contents
      except ValueError:  # An empty cell (a name assigned later).
        self.put("empty-cell", name)
        continue
      self.visit(contents, f"{path}.<closure {name}>")
    extra = {k: v for k, v in vars(fn).items()
             if k == "__wrapped__" or not k.startswith("__")}
    self.visit(extra, f"{path}.__dict__")
    if not library:  # The module globals your code reads (weights, c, ...).
      for name in dict.fromkeys(_code_names(code)):
        if name in fn.__globals__ and not name.startswith("__"):
          self.put("global", name)
          self.visit(fn.__globals__[name], f"{path}.<global {name}>")

  def _code(self, code: types.CodeType, path: str) -> None:
    self.put("code", code.co_code.hex(), code.co_names, code.co_argcount,
             code.co_kwonlyargcount, code.co_flags)
    for i, const in enumerate(code.co_consts):
      self.visit(const, f"{path}.<constant {i}>")

  def _class(self, cls: type, path: str) -> None:
    self.put("class", _type_name(cls))
    if _is_library(cls.__module__):
      self.put("version", _version(cls.__module__))
      return
    for base in cls.__mro__[1:]:
      self.put("base", _type_name(base))
    for name, member in vars(cls).items():
      if name.startswith("__") and name not in ("__call__", "__init__",
                                                "__post_init__"):
        continue
      if isinstance(member, (staticmethod, classmethod)):
        member = member.__func__
      if isinstance(member, property):
        member = (member.fget, member.fset)
      self.put("member", name)
      if isinstance(member, (types.FunctionType, tuple)):
        self.visit(member, f"{_type_name(cls)}.{name}")
        continue
      try:  # A class attribute: library bookkeeping is described by its type.
        self.visit(member, f"{_type_name(cls)}.{name}")
      except _TooBig:
        raise
      except _Opaque:
        self.put("opaque class attribute", _type_name(type(member)))

  def _instance(self, obj: Any, path: str) -> None:
    cls = type(obj)
    name = _type_name(cls)
    if _is_library(cls.__module__) and cls.__name__ == "PjitFunction" and (
        hasattr(obj, "__wrapped__")):
      self.put("jit")  # jax.jit: same values as the function it wraps.
      self.visit(obj.__wrapped__, f"{path}.__wrapped__")
      return
    self.visit(cls, f"{path}.__class__")
    # A registered pytree (a Flax NNX or equinox module, a flax struct): its
    # flattening holds all its state, leaves (weights) and static data.
    if self._pytree(obj, path):
      return
    if isinstance(obj, collections.abc.Mapping) and isinstance(
        obj, collections.abc.Hashable):  # Immutable: its items are its state.
      self.visit(dict(obj.items()), f"{path}.items()")
      return
    if _is_library(cls.__module__):
      walkable = name in _WALKABLE_LIBRARY_TYPES or cls.__module__.startswith(
          _OWN_PACKAGE + ".")
      why = f"a {name} object (state this fingerprint cannot see)"
    else:
      bases = [_type_name(b) for b in cls.__mro__[1:] if b is not object and
               _is_library(b.__module__)]
      walkable = all(b in _WALKABLE_LIBRARY_TYPES for b in bases)
      why = f"a {name} object, a subclass of library class {bases[:1]}"
    if not walkable:
      raise _Opaque(why, path)
    state = getattr(obj, "__dict__", None)
    slots = [s for c in cls.__mro__ for s in getattr(c, "__slots__", ())
             if s not in ("__dict__", "__weakref__")]
    if state is None and not slots:
      raise _Opaque(f"a {name} object without attributes to read", path)
    if state is not None:
      self.visit(dict(state), f"{path}.__dict__")
    for slot in slots:
      self.visit(getattr(obj, slot, None), f"{path}.{slot}")

  def _pytree(self, obj: Any, path: str) -> bool:
    """Describes `obj` by its pytree flattening; False if it is no pytree node."""
    jax = sys.modules.get("jax")
    if jax is None:
      return False
    try:
      leaves, treedef = jax.tree_util.tree_flatten(obj)
    except Exception:  # pylint: disable=broad-except
      return False
    if treedef.node_data() is None:  # A leaf: jax does not know its parts.
      return False
    self.put("pytree")
    self._treedef(treedef, path)
    for i, leaf in enumerate(leaves):
      self.visit(leaf, f"{path}.<pytree leaf {i}>")
    return True

  def _treedef(self, treedef, path: str) -> None:
    data = treedef.node_data()
    if data is None:
      self.put("leaf")
      return
    node_type, aux = data
    self.put("node", treedef.num_leaves)
    self.visit(node_type, f"{path}.<pytree node>")
    self.visit(aux, f"{path}.<static data of {node_type.__name__}>")
    for child in treedef.children():
      self._treedef(child, path)


def _type_name(cls: type) -> str:
  return f"{cls.__module__}.{cls.__qualname__}"


def _is_jax_array(obj) -> bool:
  jax = sys.modules.get("jax")
  return jax is not None and isinstance(obj, jax.Array)


def fingerprint(fn: Any, name: str = "explain_fn") -> Fingerprint:
  """A sha256 of `fn` and everything it reaches that decides its values.

  Args:
    fn: the callable (or any value) to describe.
    name: how `fn` is called in :attr:`Fingerprint.why_not`.

  Returns:
    A :class:`Fingerprint`; its digest is None when the rule in this module's
    docstring cannot describe something `fn` reaches.

  Example:
    >>> a = fingerprint(lambda x: 2.0 * x)
    >>> b = fingerprint(lambda x: 3.0 * x)
    >>> a.digest != b.digest, a == fingerprint(lambda x: 2.0 * x)
    (True, True)
  """
  walker = _Walker()
  walker.put("python", sys.version_info[:2])
  try:
    walker.visit(fn, name)
  except _Opaque as e:
    return Fingerprint(None, str(e))
  except RecursionError:
    return Fingerprint(None, f"an object graph too deep to describe in {name}")
  except Exception as e:  # pylint: disable=broad-except
    # An object that fails when read (a property that raises, ...): unknown.
    return Fingerprint(None, f"{type(e).__name__} while describing {name}: {e}")
  return Fingerprint(walker.hash.hexdigest())
