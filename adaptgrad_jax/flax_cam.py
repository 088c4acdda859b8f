"""Grad-CAM, Grad-CAM++, guided backpropagation and Guided Grad-CAM for Flax NNX models.

A layer is named by its attribute path in the model (``"features.28"``,
``"layer4"``, ``"layer4.1.conv2"``: attributes and list indices joined by
dots); a list (a stage such as ResNet's ``"layer4"``) stands for its last
entry, whose output is the stage's when the model applies the entries in turn.
Nothing in the model is edited: each call splits the model
(``nnx.split``), merges a private copy inside the traced function and, on that
copy only, replaces the named submodule (or list entry) by a wrapper that
returns its output plus a zero input ``delta``; the gradient with respect to
``delta`` is the gradient with respect to the layer's activations.

Inputs are one example without a batch axis (an HWC image; the model is called
on ``x[None]``) and ``target`` is the class index (an int or int array, so
``jax.vmap`` over targets works). Maps are ``(h, w)`` at the layer's
resolution (upsample them for display).

Smoothing composes through the layer-gradient function: ``grad_cam`` and
``grad_cam_pp`` take ``grad_fn``, by default :func:`layer_gradient` (or
:func:`layer_gradient_powers`), and any stochastic transform of it works:
``grad_cam(model, layer, grad_fn=ag.adapt_smooth(layer_gradient(model,
layer), 0.95, n, bounds=b))`` is an AdaptGrad-smoothed Grad-CAM and
``grad_cam_pp(model, layer, grad_fn=ag.smooth_grad(layer_gradient_powers(
model, layer), 0.2, n, bounds=b))`` is SmoothGrad-CAM++ (Omeiza et al. 2019:
the gradient powers averaged over noisy inputs; activations of the clean input).

On CPU the deterministic maps (``grad_cam`` and ``grad_cam_pp`` with their
default gradient, ``guided_backprop``, ``guided_grad_cam``) go through the
library's CPU rewrite while traced, as the transforms do (:mod:`adaptgrad_jax.cpu`;
``cpu_rewrite=False`` or ``ADAPTGRAD_JAX_CPU_REWRITE=0`` turns it off): on a
small CNN it made Grad-CAM 20x and guided backprop 14x faster
(``benchmarks/results/methods_cpu.md``). With a stochastic ``grad_fn`` the
smoothing transform's own switch applies.
"""

import contextlib
from typing import Any, Callable, Optional

import flax.nnx as nnx
import jax
import jax.numpy as jnp

import adaptgrad_jax as ag
from adaptgrad_jax import cpu

__all__ = (
    "available_layers",
    "grad_cam",
    "grad_cam_pp",
    "guided_backprop",
    "guided_grad_cam",
    "guided_relu",
    "guided_relus",
    "layer_activation",
    "layer_gradient",
    "layer_gradient_powers",
)


# ----------------------------------------------------------------------------
# Naming layers.


def _children(node) -> list[tuple[str, Any]]:
  if isinstance(node, (nnx.List, list, tuple)):
    return [(str(i), item) for i, item in enumerate(node)]
  if isinstance(node, nnx.Module):
    # Private attributes are layers too (EfficientNet-Lite's ``_blocks``, ``_conv_head``); only nnx's own
    # bookkeeping (``_pytree__*``) is not.
    return [(name, value) for name, value in vars(node).items()
            if not name.startswith("_pytree__") and isinstance(value, (nnx.Module, nnx.List))]
  return []


def available_layers(model: nnx.Module, max_depth: int = 4) -> list[str]:
  """The dotted paths of the model's submodules and list entries (what ``layer=`` accepts).

  Submodules (``nnx.Module`` attributes) and every entry of an ``nnx.List``
  (modules or functions such as ``jax.nn.relu``) are layers; a plain function
  stored as a module attribute is not.

  Example:
    >>> import flax.nnx as nnx
    >>> from adaptgrad_jax import flax_cam
    >>> class Net(nnx.Module):
    ...   def __init__(self, rngs):
    ...     self.body = nnx.List([nnx.Linear(2, 3, rngs=rngs), jax.nn.relu])
    ...     self.head = nnx.Linear(3, 1, rngs=rngs)
    >>> flax_cam.available_layers(Net(nnx.Rngs(0)))
    ['body', 'body.0', 'body.1', 'head']
  """
  out = []

  def walk(node, prefix, depth):
    for name, child in _children(node):
      path = f"{prefix}{name}"
      out.append(path)
      if depth < max_depth:
        walk(child, path + ".", depth + 1)

  walk(model, "", 1)
  return out


def _resolve(model, layer: str):
  """``(parent, part, child)`` for the dotted path ``layer``; a clear error otherwise."""
  if not isinstance(layer, str) or not layer:
    raise TypeError(f"layer={layer!r} must be a dotted attribute path such as 'features.28' or 'layer4'.")
  node, parent, part = model, None, None
  for part in layer.split("."):
    names = dict(_children(node))
    if part not in names:
      listing = available_layers(model)
      shown = ", ".join(listing[:60]) + (" ..." if len(listing) > 60 else "")
      raise ValueError(
          f"layer={layer!r} does not exist in {type(model).__name__}: it has no {part!r}"
          f" there. Available layers: {shown or '(none: the model has no submodules)'}."
      )
    parent, node = node, names[part]
  if isinstance(node, (nnx.List, list)) and len(node) and not callable(node):
    # A stage (torchvision's nn.Sequential, e.g. ResNet's "layer4"): its output is its last entry's.
    parent, part, node = node, str(len(node) - 1), node[len(node) - 1]
  if not callable(node):
    raise ValueError(f"layer={layer!r} names a {type(node).__name__}, which is not callable; name a layer.")
  return parent, part, node


def _replace(parent, part: str, value) -> None:
  if isinstance(parent, (nnx.List, list)):
    parent[int(part)] = value
  else:
    setattr(parent, part, value)


def _score(model, x, target):
  logits = model(x[None])
  if jnp.ndim(logits) != 2:
    raise ValueError(f"the model returned shape {jnp.shape(logits)} for one example; expected (1, num_classes) logits.")
  return logits[0, target]


def _split(model, layer: str):
  if not isinstance(model, nnx.Module):
    raise TypeError(f"model={model!r:.60} must be a Flax NNX module.")
  _resolve(model, layer)  # build-time check of the name
  return nnx.split(model)


def _run_with_delta(graphdef, state, layer, x, target, delta):
  """``(score, activation)`` of a private copy whose ``layer`` returns ``output + delta``."""
  copy = nnx.merge(graphdef, state)
  parent, part, original = _resolve(copy, layer)
  captured = []

  def hooked(*args, **kwargs):
    out = original(*args, **kwargs)
    captured.append(out)
    return out + delta

  _replace(parent, part, hooked)
  score = _score(copy, x, target)
  if not captured:
    raise ValueError(f"layer={layer!r} exists but the model's forward pass never called it.")
  return score, captured[0]


def _activation_and_gradient(graphdef, state, layer, x, target):
  _, act = jax.eval_shape(lambda: _run_with_delta(graphdef, state, layer, x, target, 0.0))
  if len(act.shape) != 4 or act.shape[0] != 1:
    raise ValueError(f"layer={layer!r} outputs shape {act.shape}; Grad-CAM needs a (1, h, w, c) feature map.")
  delta = jnp.zeros(act.shape, act.dtype)
  grad, activation = jax.grad(lambda d: _run_with_delta(graphdef, state, layer, x, target, d), has_aux=True)(delta)
  return activation[0], grad[0]


def layer_activation(model: nnx.Module, layer: str) -> Callable[[jax.Array], jax.Array]:
  """``act(x)``: the ``(h, w, c)`` output of ``layer`` for one example ``x``."""
  graphdef, state = _split(model, layer)

  def act(x):
    return _run_with_delta(graphdef, state, layer, x, 0, 0.0)[1][0]

  return act


def layer_gradient(model: nnx.Module, layer: str) -> Callable[..., jax.Array]:
  """``grad(x, target)``: the gradient of logit ``target`` with respect to ``layer``'s ``(h, w, c)`` output.

  A gradient function in the library's sense (its output need not be shaped
  like ``x``): ``ag.adapt_smooth(layer_gradient(model, layer), 0.95, n,
  bounds=b)`` averages it over adaptively noised inputs.
  """
  graphdef, state = _split(model, layer)

  def grad(x, target):
    return _activation_and_gradient(graphdef, state, layer, x, target)[1]

  return grad


def layer_gradient_powers(model: nnx.Module, layer: str) -> Callable[..., tuple]:
  """``powers(x, target) = (g, g**2, g**3)`` for ``g = layer_gradient(model, layer)(x, target)`` (Grad-CAM++)."""
  grad = layer_gradient(model, layer)

  def powers(x, target):
    g = grad(x, target)
    return g, g * g, g * g * g

  return powers


def _with_grad_fn(model, layer, grad_fn, default, stochastic):
  graphdef, state = _split(model, layer)
  grad_fn = default(model, layer) if grad_fn is None else grad_fn
  stochastic = ag.is_stochastic(grad_fn) if stochastic is None else bool(stochastic)

  def parts(call_args):
    key, (x, target) = (call_args[0], call_args[1:]) if stochastic else (None, call_args)
    act = _run_with_delta(graphdef, state, layer, x, target, 0.0)[1][0]
    grads = grad_fn(key, x, target) if stochastic else grad_fn(x, target)
    return act, grads

  return parts, stochastic


def _on_cpu(fn, cpu_rewrite):
  """``fn`` through the CPU rewrite when it applies (the switch on, the CPU backend, traced arguments)."""
  cpu.validate_switch(cpu_rewrite)

  def run(*args):
    if not cpu.applies(cpu_rewrite, args):
      return fn(*args)
    return cpu.rewrite(fn, canonical_kernels=False)(*args)  # one gradient, no loop: XLA lays out the kernels

  return run


def _finish(fn, name, stochastic, cpu_rewrite=None):
  if not stochastic:  # a stochastic grad_fn is a smoothing transform, which rewrites under its own switch
    fn = _on_cpu(fn, cpu_rewrite)
  fn.__name__ = fn.__qualname__ = name
  return ag.stochastic(fn) if stochastic else fn


def grad_cam(model: nnx.Module, layer: str, *, grad_fn: Optional[Callable[..., Any]] = None, relu: bool = True,
             stochastic: Optional[bool] = None, cpu_rewrite: Optional[bool] = None) -> Callable[..., jax.Array]:
  r"""Grad-CAM: the layer's channels weighted by their spatially averaged gradients.

  ``L = ReLU(sum_c a_c A_c)`` with ``a_c = mean_{h, w} dy_target / dA_{hwc}``
  (Selvaraju et al., Eq. 1-2). Equal to Captum's ``LayerGradCam`` (its
  ``relu_attributions=relu``, channel-summed, without its batch and channel
  axes).

  Args:
    model: a Flax NNX model mapping NHWC images to ``(B, num_classes)`` logits
      (call ``model.eval()`` first).
    layer: the dotted path of the layer (see :func:`available_layers`).
    grad_fn: the layer-gradient function, ``(x, target) -> (h, w, c)``
      (default :func:`layer_gradient`), or a stochastic one, e.g. its
      ``ag.adapt_smooth`` (the result then takes a key first).
    relu: apply the final ReLU (the paper's; Captum's default is False).
    stochastic: whether ``grad_fn`` takes a key first; None uses its mark.
    cpu_rewrite: the CPU switch of a deterministic map (see the module
      docstring); None reads ``$ADAPTGRAD_JAX_CPU_REWRITE``, else on.

  Returns:
    ``cam(x, target)`` (``cam(key, x, target)`` if stochastic), an ``(h, w)`` map.

  Raises:
    ValueError: a layer that does not exist (listing the available ones) or
      that does not output a feature map.

  References:
    Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via
    Gradient-based Localization", ICCV 2017.
  """
  parts, stochastic = _with_grad_fn(model, layer, grad_fn, layer_gradient, stochastic)

  def cam(*call_args):
    act, grad = parts(call_args)
    weights = jnp.mean(grad, axis=(0, 1))
    out = jnp.sum(act * weights, axis=-1)
    return jax.nn.relu(out) if relu else out

  return _finish(cam, f"grad_cam({layer})", stochastic, cpu_rewrite)


def grad_cam_pp(model: nnx.Module, layer: str, *, grad_fn: Optional[Callable[..., Any]] = None,
                stochastic: Optional[bool] = None, cpu_rewrite: Optional[bool] = None) -> Callable[..., jax.Array]:
  r"""Grad-CAM++: channel weights from positive gradients, pixel-weighted by higher-order terms.

  With ``g = dy/dA`` and the exponential-output identities of Chattopadhyay
  et al. (Eq. 19), ``alpha = g^2 / (2 g^2 + sum_{hw} A * g^3)`` (0 where the
  denominator is 0), ``w_c = sum_{hw} alpha ReLU(g)``, and
  ``L = ReLU(sum_c w_c A_c)``, as in the common implementations
  (pytorch-grad-cam). ``grad_fn`` returns ``(g, g^2, g^3)``; averaging these
  three over noisy inputs gives SmoothGrad-CAM++.

  Args:
    model, layer: as for :func:`grad_cam`.
    grad_fn: ``(x, target) -> (g, g2, g3)`` (default
      :func:`layer_gradient_powers`) or a stochastic transform of it.
    stochastic, cpu_rewrite: as for :func:`grad_cam`.

  Returns:
    ``cam(x, target)`` (or ``cam(key, x, target)``), an ``(h, w)`` map.

  References:
    Chattopadhyay et al., "Grad-CAM++: Improved Visual Explanations for Deep
    Convolutional Networks", WACV 2018; Omeiza et al., "Smooth Grad-CAM++",
    2019.
  """
  parts, stochastic = _with_grad_fn(model, layer, grad_fn, layer_gradient_powers, stochastic)

  def cam(*call_args):
    act, grads = parts(call_args)
    if not isinstance(grads, (tuple, list)) or len(grads) != 3:
      raise ValueError("grad_cam_pp: grad_fn must return (g, g**2, g**3), as layer_gradient_powers does.")
    g, g2, g3 = grads
    denom = 2.0 * g2 + jnp.sum(act, axis=(0, 1)) * g3
    alpha = jnp.where(denom != 0, g2 / jnp.where(denom != 0, denom, 1.0), 0.0)
    weights = jnp.sum(alpha * jax.nn.relu(g), axis=(0, 1))
    return jax.nn.relu(jnp.sum(act * weights, axis=-1))

  return _finish(cam, f"grad_cam_pp({layer})", stochastic, cpu_rewrite)


# ----------------------------------------------------------------------------
# Guided backpropagation.


@jax.custom_vjp
def guided_relu(x: jax.Array) -> jax.Array:
  """ReLU whose backward pass lets only positive gradients through where the input was positive."""
  return jnp.maximum(x, 0)  # not jax.nn.relu: guided_relus() patches it to this function


def _guided_fwd(x):
  return jnp.maximum(x, 0), x


def _guided_bwd(x, g):
  return (jnp.where((x > 0) & (g > 0), g, jnp.zeros_like(g)),)


guided_relu.defvjp(_guided_fwd, _guided_bwd)


def _swap_relus(node, depth=0) -> None:
  """Replaces stored references to ``jax.nn.relu`` / ``nnx.relu`` (e.g. in ``nnx.List``s) by :func:`guided_relu`."""
  if depth > 32:
    return
  stored = [(n, v) for n, v in vars(node).items() if v is jax.nn.relu or v is nnx.relu] if isinstance(
      node, nnx.Module) else []
  for name, child in _children(node) + stored:
    if child is jax.nn.relu or child is nnx.relu:
      _replace(node, name, guided_relu)
    elif isinstance(child, (nnx.Module, nnx.List, list)):
      _swap_relus(child, depth + 1)


@contextlib.contextmanager
def guided_relus():
  """While active (and while a function is traced inside it), ``jax.nn.relu`` and ``nnx.relu`` are :func:`guided_relu`.

  Models that call ``jax.nn.relu(x)`` or ``nnx.relu(x)`` in ``__call__`` (the
  ports in :mod:`adaptgrad_jax.models` do) then backpropagate guidedly;
  references stored in the model (``nnx.List([..., jax.nn.relu])``) are swapped
  by :func:`guided_backprop` on its private copy. Patching module attributes is
  process-wide: do not trace other functions in other threads meanwhile. A model
  that imported ``relu`` by name (``from jax.nn import relu``) is not affected.
  """
  import flax.nnx as nnx_module
  saved = (jax.nn.relu, nnx_module.relu)
  jax.nn.relu = guided_relu
  nnx_module.relu = guided_relu
  try:
    yield
  finally:
    jax.nn.relu, nnx_module.relu = saved


def guided_backprop(model: nnx.Module, *, cpu_rewrite: Optional[bool] = None) -> Callable[..., jax.Array]:
  """Guided backpropagation: the input gradient of logit ``target`` through guided ReLUs.

  Every ReLU's backward pass is replaced by :func:`guided_relu`'s (Springenberg
  et al.): stored references on a private copy of the model (``nnx.split`` /
  ``nnx.merge``) and calls of ``jax.nn.relu`` / ``nnx.relu`` while tracing (see
  :func:`guided_relus`). Equal to Captum's ``GuidedBackprop``.

  Args:
    model: a Flax NNX model mapping NHWC images to logits (``model.eval()`` first).
    cpu_rewrite: the CPU switch (see the module docstring).

  Returns:
    ``gbp(x, target)``, shaped like ``x``; a gradient function in the
    library's sense, so ``ag.smooth_grad(guided_backprop(model), 0.2, n,
    bounds=b)`` works.

  References:
    Springenberg et al., "Striving for Simplicity: The All Convolutional Net",
    ICLR workshop 2015.
  """
  if not isinstance(model, nnx.Module):
    raise TypeError(f"model={model!r:.60} must be a Flax NNX module.")
  graphdef, state = nnx.split(model)

  def score(x, target):
    copy = nnx.merge(graphdef, state)
    _swap_relus(copy)
    with guided_relus():
      return _score(copy, x, target)

  def gbp(x, target):
    return jax.grad(score)(x, target)

  gbp = _on_cpu(gbp, cpu_rewrite)
  gbp.__name__ = gbp.__qualname__ = "guided_backprop"
  return gbp


def _upsample_nearest(m: jax.Array, shape: tuple[int, int]) -> jax.Array:
  """torch's ``F.interpolate(mode="nearest")``: output pixel ``i`` reads input ``floor(i * in / out)``."""
  rows = (jnp.arange(shape[0]) * m.shape[0]) // shape[0]
  cols = (jnp.arange(shape[1]) * m.shape[1]) // shape[1]
  return m[rows][:, cols]


def guided_grad_cam(model: nnx.Module, layer: str, *, interpolate: str = "nearest",
                    cpu_rewrite: Optional[bool] = None) -> Callable[..., jax.Array]:
  """Guided Grad-CAM: guided backpropagation times Grad-CAM upsampled to the input.

  As Captum's ``GuidedGradCam``: the Grad-CAM map (with ReLU) is upsampled to
  the input's height and width (``interpolate="nearest"``, Captum's default and
  torch's ``F.interpolate`` rule, or ``"bilinear"`` by ``jax.image.resize``) and
  multiplied with every channel of the guided-backprop gradient.

  Args:
    model, layer: as for :func:`grad_cam`.
    interpolate: ``"nearest"`` or ``"bilinear"`` (above).
    cpu_rewrite: the CPU switch (see the module docstring).

  Returns:
    ``ggc(x, target)``, shaped like ``x``.

  References:
    Selvaraju et al., ICCV 2017, Section 3.1.
  """
  if interpolate not in ("nearest", "bilinear"):
    raise ValueError(f"interpolate={interpolate!r} must be 'nearest' (Captum's default) or 'bilinear'.")
  cam = grad_cam(model, layer, cpu_rewrite=False)  # the product is rewritten as a whole below
  gbp = guided_backprop(model, cpu_rewrite=False)

  def ggc(x, target):
    m = cam(x, target)
    if interpolate == "nearest":
      up = _upsample_nearest(m, x.shape[:2])
    else:
      up = jax.image.resize(m, x.shape[:2], method="bilinear")
    return gbp(x, target) * up[..., None]

  ggc = _on_cpu(ggc, cpu_rewrite)
  ggc.__name__ = ggc.__qualname__ = f"guided_grad_cam({layer})"
  return ggc
