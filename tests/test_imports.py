"""The package's modules import one another without a circle (read from the source, nothing imported)."""

import ast
import pathlib

import adaptgrad_jax

ROOT = pathlib.Path(adaptgrad_jax.__file__).parent


def _modules() -> dict:
  """``{dotted name: (path, is_package)}`` for every module of the package."""
  out = {}
  for path in ROOT.rglob("*.py"):
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    out[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
  return out


def _import_graph() -> dict:
  """Who imports whom, counting imports inside functions too (a lazy import still forms a circle)."""
  modules = _modules()

  def resolve(name):  # the longest prefix that is a module of the package
    while name and name not in modules:
      name = name.rpartition(".")[0]
    return name

  graph = {}
  for name, (path, is_package) in modules.items():
    package = name if is_package else name.rpartition(".")[0]
    edges = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
      if isinstance(node, ast.Import):
        edges.update(resolve(a.name) for a in node.names if a.name.startswith("adaptgrad_jax"))
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
          head = package.split(".")[: len(package.split(".")) - node.level + 1]
          base = ".".join(head + ([base] if base else []))
        if base.startswith("adaptgrad_jax"):
          edges.update(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else resolve(base) for a in node.names)
    graph[name] = edges - {name, ""}
  return graph


def _circles(graph: dict) -> list:
  """The strongly connected components with more than one module (Tarjan)."""
  index, low, stack, on_stack, found = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in graph.get(v, ()):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        found.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return found


def test_the_graph_sees_a_lazy_import():
  graph = _import_graph()
  assert "adaptgrad_jax.cli._mnist" in graph["adaptgrad_jax.cli._models"]  # imported inside load()
  assert "adaptgrad_jax._files" in graph["adaptgrad_jax.cli._mnist"]
  assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_circles():
  assert _circles(_import_graph()) == []


def test_install_hints_name_the_extras_of_pyproject():
  """Error messages name the packages of an extra (the package is not on PyPI yet): they must be pyproject's."""
  import tomllib  # pylint: disable=import-outside-toplevel

  from adaptgrad_jax._extras import EXTRAS, install_hint  # pylint: disable=import-outside-toplevel

  extras = tomllib.loads((ROOT.parent / "pyproject.toml").read_text())["project"]["optional-dependencies"]
  for extra, packages in EXTRAS.items():
    assert sorted(packages) == sorted(extras[extra]), extra
    assert all(f'"{p}"' in install_hint(extra) for p in packages) and f'.[{extra}]' in install_hint(extra)
  # No message may suggest the PyPI form while the package is not published.
  offenders = [str(p) for p in ROOT.rglob("*.py")
               if p.name != "_extras.py" and "adaptgrad-jax[" in p.read_text(encoding="utf-8")]
  assert not offenders, offenders
