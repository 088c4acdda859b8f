"""The explanation methods of the CLI, each built from the library's transforms.

Every method becomes ``explain(key, x, target) -> map`` for ONE input ``x``
(no batch axis): the paper's Grad, SG, AG, their GI / IG / NG combinations
(prefixes S- and A-, Section 5.1.3), composed as in the README's table, e.g.
A-IG is ``integrated_gradients(adapt_smooth(jax.grad(f)))``; and, composed the
same way (docs/transforms.md, "The IG family, CAM and their smoothed
variants"), Expected Gradients, Blur IG, Guided IG, IDGI, Grad-CAM,
Grad-CAM++, guided backpropagation and Guided Grad-CAM with their S- and A-
variants. CAM maps are upsampled bilinearly to the input's height and width
(shape ``(H, W, 1)``), so every map has the input's layout.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

import adaptgrad_jax as ag
from adaptgrad_jax.cli import _shared
from adaptgrad_jax.cli._errors import UsageError

# name -> (label as in the paper, what it costs in gradient evaluations)
METHODS: dict[str, tuple[str, str]] = {
  "grad": ("Grad", "1"),
  "smoothgrad": ("SG", "n"),
  "adaptgrad": ("AG", "n"),
  "gi": ("GI", "1"),
  "s-gi": ("S-GI", "n"),
  "a-gi": ("A-GI", "n"),
  "ig": ("IG", "ig_steps"),
  "s-ig": ("S-IG", "ig_steps * n"),
  "a-ig": ("A-IG", "ig_steps * n"),
  "ng": ("NG", "ng_samples"),
  "s-ng": ("S-NG", "ng_samples * n"),
  "a-ng": ("A-NG", "ng_samples * n"),
  # The IG family (--ig-steps path points, or baseline draws for EG).
  "eg": ("EG", "ig_steps"),
  "s-eg": ("S-EG", "ig_steps * n"),
  "a-eg": ("A-EG", "ig_steps * n"),
  "blur-ig": ("Blur IG", "ig_steps"),
  "s-blur-ig": ("S-Blur IG", "ig_steps * n"),
  "a-blur-ig": ("A-Blur IG", "ig_steps * n"),
  "guided-ig": ("Guided IG", "ig_steps"),
  "s-guided-ig": ("S-Guided IG", "ig_steps * n"),
  "a-guided-ig": ("A-Guided IG", "ig_steps * n"),
  "idgi": ("IDGI", "ig_steps"),
  "s-idgi": ("S-IDGI", "ig_steps * n"),
  "a-idgi": ("A-IDGI", "ig_steps * n"),
  # CAM and guided backpropagation (Flax models; CAM at --layer).
  "grad-cam": ("Grad-CAM", "1"),
  "s-grad-cam": ("S-Grad-CAM", "n"),
  "a-grad-cam": ("A-Grad-CAM", "n"),
  "grad-cam-pp": ("Grad-CAM++", "1"),
  "s-grad-cam-pp": ("S-Grad-CAM++", "n"),
  "a-grad-cam-pp": ("A-Grad-CAM++", "n"),
  "guided-backprop": ("GBP", "1"),
  "s-guided-backprop": ("S-GBP", "n"),
  "a-guided-backprop": ("A-GBP", "n"),
  "guided-grad-cam": ("Guided Grad-CAM", "2"),
  "s-guided-grad-cam": ("S-Guided Grad-CAM", "2 * n"),
  "a-guided-grad-cam": ("A-Guided Grad-CAM", "2 * n"),
}
ALIASES = {
  "sg": "smoothgrad", "ag": "adaptgrad", "gradient": "grad", "gxi": "gi",
  "expected-gradients": "eg", "gradientshap": "eg", "gradient-shap": "eg", "blurig": "blur-ig",
  "guidedig": "guided-ig", "gradcam": "grad-cam", "grad-cam++": "grad-cam-pp", "gradcam++": "grad-cam-pp",
  "smoothgrad-cam++": "s-grad-cam-pp", "gbp": "guided-backprop", "guided-gradcam": "guided-grad-cam",
  "ggc": "guided-grad-cam",
}


def _plain(name: str) -> str:
  """The method without its S- / A- prefix (``a-grad-cam`` -> ``grad-cam``)."""
  return name[2:] if name[:2] in ("s-", "a-") else name


# The methods that need the Flax model itself (not only f): CAM at a layer, guided backprop's ReLUs.
MODEL_METHODS = tuple(m for m in METHODS if _plain(m) in ("grad-cam", "grad-cam-pp", "guided-backprop",
                                                            "guided-grad-cam"))
# The methods that explain at a layer (--layer).
LAYER_METHODS = tuple(m for m in MODEL_METHODS if "backprop" not in m)
# The Expected Gradients methods (--eg-baselines).
EG_METHODS = ("eg", "s-eg", "a-eg")


def canonical(method: str) -> str:
  lowered = method.lower().replace("_", "-")
  name = ALIASES.get(lowered, lowered)
  if name not in METHODS:
    raise UsageError(f"unknown method {method!r}; choose one of: {', '.join(METHODS)} (or sg, ag, gbp,"
                     " grad-cam++, gradientshap)")
  return name


def label(method: str) -> str:
  return METHODS[canonical(method)][0]


@dataclasses.dataclass(frozen=True)
class Options:
  """The method options of the command line (paper defaults)."""

  c: float = 0.95
  n: int = 50
  alpha: float = 0.2
  sigma_rule: str = "two_sided"
  batch_size: Optional[int] = None
  baseline: str = "black"
  ig_steps: int = 50
  ng_samples: int = 10
  ng_sigma: float = 0.2
  rtol: Optional[float] = None
  noise: str = "iid"
  layer: Optional[str] = None  # CAM's layer; None: default_layer(model)
  eg_baselines: str = "uniform"  # "uniform" (within the bounds) or the path of a .npy (m, *x.shape)
  blur_sigma: float = 50.0  # Blur IG's max_sigma in pixels (PAIR's default)
  return_stderr: bool = False  # STDERR_METHODS return an ag.Estimate (map, stderr, samples): free
  estimator: str = "mc"  # how SG / AG are computed: ESTIMATORS


# The methods whose map is ONE Monte Carlo mean of the library (smooth_grad /
# adapt_smooth), so sampling to a tolerance (--rtol) applies to them.
RTOL_METHODS = ("smoothgrad", "adaptgrad")
# The methods that draw input noise (where --noise applies).
NOISE_METHODS = ("smoothgrad", "adaptgrad") + tuple(m for m in METHODS if m.startswith(("s-", "a-")))
NOISE_SCHEMES = ("iid", "antithetic", "orthogonal", "lhs")
# The Monte Carlo maps whose standard error the library propagates (``return_stderr``): SG / AG and
# their GI / IG / Blur IG compositions (the inner smoother's error), and EG / NG (their own samples,
# which also hold any inner smoothing noise). Guided IG, IDGI and the CAMs are not linear in the
# gradient, so they have none; the plain gradient, GI, IG, Blur IG, Grad-CAM... are deterministic.
STDERR_METHODS = ("smoothgrad", "adaptgrad", "s-gi", "a-gi", "s-ig", "a-ig", "s-blur-ig", "a-blur-ig",
                  "eg", "s-eg", "a-eg", "ng", "s-ng", "a-ng")


def is_deterministic(method: str, options: Optional["Options"] = None) -> bool:
  """Whether a method's map draws no noise at all (no key is used)."""
  method = canonical(method)
  if options is not None and options.estimator == "moments" and method in ESTIMATOR_METHODS:
    return True
  return not (method.startswith(("s-", "a-")) or method in ("smoothgrad", "adaptgrad", "eg", "ng"))


def has_stderr(method: str, options: "Options") -> bool:
  """Whether ``build(method, ..., options)`` returns an ``ag.Estimate`` (map, stderr, samples)."""
  method = canonical(method)
  if options.estimator == "moments" and method in ESTIMATOR_METHODS:
    return False
  return (options.return_stderr and method in STDERR_METHODS) or (options.rtol is not None
                                                                  and method in RTOL_METHODS)


# --estimator: how SmoothGrad's and AdaptGrad's smoothed gradient is computed (docs/precision.md).
ESTIMATORS = {
  "mc": "Monte Carlo: the mean of n gradients at noisy inputs (unbiased; error ~ 1/sqrt(n))",
  "smooth-diff": "smoothed differentiation (ag.smooth_diff): n noisy forward passes, one backward pass with each"
                 " unit's expected Jacobian (less noise at equal n, some bias)",
  "moments": "moment propagation (ag.moment_smooth): deterministic, no samples; a bias to measure",
}
# The methods whose smoothing --estimator changes: SG, AG and their GI / IG compositions.
ESTIMATOR_METHODS = ("smoothgrad", "adaptgrad", "s-gi", "a-gi", "s-ig", "a-ig")


def build(
  method: str,
  f: Callable[..., Any],
  bounds: Any,
  options: Options,
  *,
  param_fn: Optional[tuple[Callable[..., Any], Any]] = None,
  model: Any = None,
) -> Callable[[Any, Any, Any], Any]:
  """``explain(key, x, target)`` for a method name.

  Args:
    method: a name of :data:`METHODS` (or an alias).
    f: ``f(x, target)``, the scalar to explain for one input.
    bounds: the input's ``(x_min, x_max)``.
    options: the hyperparameters.
    param_fn: ``(f_params, params)`` with ``f_params(x, params, target)``,
      needed by the NoiseGrad methods.
    model: the Flax NNX model in eval mode (``f``'s model), needed by the CAM
      and guided-backprop methods (:data:`MODEL_METHODS`); their layer is
      ``options.layer`` or :func:`default_layer` of the model.

  Returns:
    ``explain(key, x, target) -> map``; with ``options.rtol`` (SmoothGrad and
    AdaptGrad only) it returns an ``ag.Estimate(value, stderr, num_samples)``.
    Every map has the input's shape, except the CAM maps (Grad-CAM, Grad-CAM++
    and their variants): ``(H, W, 1)``, the layer's map upsampled bilinearly
    to the input's height and width.

  Raises:
    UsageError: ``rtol`` for a method that is not one Monte Carlo mean, or a
      setting the library refuses (rtol outside (0, 1), ``noise="antithetic"``
      with an odd n, a layer the model does not have, ...), as one line
      naming the option.
  """
  method = canonical(method)
  check_options(method, options)
  try:
    return _build(method, f, bounds, options, param_fn=param_fn, model=model)
  except (ValueError, TypeError) as err:  # the library validates when a transform is built
    raise UsageError(_as_options(str(err))) from None


_OPTION_NAMES = (("rtol=", "--rtol "), ("batch_size=", "--batch-size "), ("noise=", "--noise "), ("n=", "--n "),
                 ("c=", "--c "), ("alpha=", "--alpha "), ("layer=", "--layer "), ("max_sigma=", "--blur-sigma "),
                 ("n_steps=", "--ig-steps "), ("n_samples=", "--ig-steps "))


def _as_options(message: str) -> str:
  """The library's message on one line, with its argument names spelt as the CLI's options."""
  line = " ".join(message.split())
  for name, option in _OPTION_NAMES:
    line = re.sub(rf"(?<![\w.]){re.escape(name)}", option, line)
  return line


def check_options(method: str, options: Options) -> None:
  """The CLI-level checks of ``--rtol`` / ``--noise`` / ``--layer`` (the library checks the values)."""
  method = canonical(method)
  if options.noise not in NOISE_SCHEMES:
    raise UsageError(f"--noise {options.noise!r} is not a noise scheme; choose one of {', '.join(NOISE_SCHEMES)}")
  if options.noise != "iid" and method not in NOISE_METHODS:
    raise UsageError(f"--noise {options.noise} draws input noise, which --method {method} does not; use it with"
                     f" one of {', '.join(NOISE_METHODS)}, or leave --noise out")
  if options.rtol is not None and method not in RTOL_METHODS:
    raise UsageError(f"--rtol samples one Monte Carlo mean to a tolerance and applies to --method smoothgrad or"
                     f" adaptgrad, not {method}; leave --rtol out or choose one of those")
  if options.rtol is not None and not isinstance(options.batch_size, int):
    raise UsageError(f"--rtol {options.rtol:g} samples in chunks of --batch-size and needs it: pass e.g."
                     " --batch-size 10 (sampling stops after the first chunk that reaches the tolerance)")
  if options.layer is not None and method not in LAYER_METHODS:
    raise UsageError(f"--layer {options.layer} names the layer of a CAM method ({', '.join(LAYER_METHODS)}), not"
                     f" of --method {method}; leave --layer out")
  if options.estimator not in ESTIMATORS:
    raise UsageError(f"--estimator {options.estimator!r} is not an estimator; choose one of {', '.join(ESTIMATORS)}")
  if options.estimator != "mc":
    flag = f"--estimator {options.estimator}"
    if method in NOISE_METHODS and method not in ESTIMATOR_METHODS:  # deterministic methods: no smoothing to change
      raise UsageError(f"{flag} computes the smoothed gradient of SG and AG and applies to --method"
                       f" {', '.join(ESTIMATOR_METHODS)}, not {method}; use --estimator mc (the default) for it")
    if options.rtol is not None:
      raise UsageError(f"--rtol samples Monte Carlo gradients to a tolerance; it does not apply to {flag}: leave"
                       " one of them out")
    if options.noise != "iid":
      raise UsageError(f"--noise {options.noise} is a Monte Carlo sampling scheme; it does not apply to {flag}:"
                       " leave one of them out")
    if options.estimator == "moments" and not hasattr(ag, "moment_smooth"):
      raise UsageError("--estimator moments needs adaptgrad_jax.moment_smooth, which this version does not have;"
                       " use --estimator smooth-diff or mc")
  if method in NOISE_METHODS:  # a dry build: the library's refusals before any model or image is loaded
    rtol = {} if options.rtol is None else {"rtol": options.rtol}
    try:
      ag.smooth_grad(jax.grad(lambda x: x.sum()), options.alpha, options.n, bounds=(0.0, 1.0),
                     batch_size=options.batch_size, noise=options.noise, **rtol)
    except ValueError as err:
      raise UsageError(_as_options(str(err))) from None


# ----------------------------------------------------------------------------
# CAM layers.


def default_layer(model: Any) -> Optional[str]:
  """The default CAM layer of a registered model: the output of its last convolutional block.

  Decided by the model's class: VGG ``features.<i>`` (the last ReLU, before
  the last max pool, as in the Grad-CAM paper), ResNet ``layer4``,
  Inception-v3 ``Mixed_7c``, EfficientNet-Lite ``_blocks`` (its last MBConv
  block), ConvNeXt and MobileNetV3 ``features`` (the last stage / the last
  1x1 convolution), DenseNet ``features`` (after ``norm5``). None for models
  without a convolutional feature map (the MLP; ViT, whose encoder works on
  tokens) and for classes it does not know.
  """
  from adaptgrad_jax import models  # pylint: disable=import-outside-toplevel

  if isinstance(model, models.VGG):
    return f"features.{len(model.features) - 2}"
  if isinstance(model, models.ResNet):
    return "layer4"
  if isinstance(model, models.Inception3):
    return "Mixed_7c"
  if isinstance(model, models.EfficientNetLite):
    return "_blocks"
  if isinstance(model, (models.ConvNeXt, models.MobileNetV3, models.DenseNet)):
    return "features"
  return None


DEFAULT_LAYERS_HELP = ("vgg*: the last ReLU (features.29 for vgg16); resnet*/resnext/wide_resnet: layer4; inception_v3:"
                       " Mixed_7c; efficientnet_lite0: _blocks (the last MBConv block); convnext*, mobilenet_v3*,"
                       " densenet*: features; mlp and vit_*: none (no convolutional feature map)")


def _layer(model: Any, options: Options, method: str) -> str:
  if options.layer is not None:
    return options.layer
  layer = default_layer(model)
  if layer is None:
    from adaptgrad_jax import flax_cam  # pylint: disable=import-outside-toplevel

    layers = flax_cam.available_layers(model, max_depth=2)
    raise UsageError(
      f"--method {method} needs a convolutional feature map and {type(model).__name__} has no default --layer"
      f" (it has no convolutional block: {', '.join(layers[:20]) or 'no layers'}"
      f"{' ...' if len(layers) > 20 else ''}); use a convolutional --model (e.g. efficientnet_lite0, resnet18),"
      " or pass --layer NAME of an (h, w, c) output")
  return layer


def _upsampled(cam: Callable[..., Any]) -> Callable[..., Any]:
  """``explain(key, x, t)``: a CAM map upsampled bilinearly to ``x``'s height and width, shape ``(H, W, 1)``."""
  stochastic = ag.is_stochastic(cam)

  def explain(key, x, t):
    m = cam(key, x, t) if stochastic else cam(x, t)
    return jax.image.resize(m, x.shape[:2], method="bilinear")[..., None].astype(x.dtype)

  return explain


def uniform_baselines(bounds: Any, shape: tuple[int, ...], dtype: Any) -> Callable[[Any], Any]:
  """``sample(key)``: one baseline drawn uniformly within ``bounds`` per element (EG's CLI default)."""
  lo, hi = (jnp.asarray(b, dtype) for b in bounds)

  def sample(key):
    return jax.random.uniform(key, shape, dtype, minval=lo, maxval=hi)

  return sample


def _eg_dataset(options: Options):
  """The baselines of ``--eg-baselines PATH`` (None for ``uniform``)."""
  if options.eg_baselines == "uniform":
    return None


  path = pathlib.Path(options.eg_baselines).expanduser()
  if path.suffix.lower() != ".npy" or not path.is_file():
    raise UsageError(f"--eg-baselines {options.eg_baselines}: pass 'uniform' or an existing .npy file of"
                     " baselines, shape (m, H, W, C) in the model's input space (after preprocessing)")
  data = _shared.read_npy(path, f"--eg-baselines {options.eg_baselines}",  # the header first: no unbounded memory
                          "pass an array of shape (m, H, W, C) of baselines in the model's input space, saved with"
                          " numpy.save")
  return np.asarray(data, np.float32)


def _check_layer(model: Any, layer: str, x_shape: tuple[int, ...]) -> None:
  """The layer's output for an input of ``x_shape`` must be a feature map (traced abstractly, no computation)."""
  from adaptgrad_jax import flax_cam  # pylint: disable=import-outside-toplevel

  try:
    out = jax.eval_shape(flax_cam.layer_activation(model, layer), jax.ShapeDtypeStruct(tuple(x_shape), jnp.float32))
  except (ValueError, TypeError) as err:
    raise UsageError(_as_options(str(err))) from None
  if len(out.shape) != 3:
    raise UsageError(
      f"--layer {layer} outputs shape {out.shape} for one input; Grad-CAM needs an (h, w, c) feature map: name a"
      f" convolutional layer (available: {', '.join(flax_cam.available_layers(model, max_depth=2)[:30])})")


def _check_relus(model: Any, method: str, x_shape: tuple[int, ...]) -> None:
  """Guided backprop changes ReLU's backward pass only (as Captum's): a model without ReLUs is refused."""
  from flax import nnx  # pylint: disable=import-outside-toplevel

  from adaptgrad_jax import flax_cam  # pylint: disable=import-outside-toplevel

  graphdef, state = nnx.split(model)

  def forward(x):
    copy = nnx.merge(graphdef, state)
    flax_cam._swap_relus(copy)  # pylint: disable=protected-access
    with flax_cam.guided_relus():
      return copy(x[None])

  jaxpr = jax.make_jaxpr(forward)(jax.ShapeDtypeStruct(tuple(x_shape), jnp.float32))
  if "custom_vjp_call" not in str(jaxpr):
    raise UsageError(
      f"--method {method}: guided backpropagation changes the backward pass of ReLUs (jax.nn.relu / nnx.relu, as"
      f" Captum's GuidedBackprop changes nn.ReLU) and {type(model).__name__} has none (ReLU6, GELU or hardswish"
      " instead), so its map would be the plain gradient; use a ReLU model (vgg*, resnet*, densenet*,"
      " inception_v3) or --method grad")


def check_model(method: str, options: Options, x_shape: tuple[int, ...], *, model: Any = None) -> None:
  """The build-time checks that need the input's shape, as one line before any image is explained.

  A CAM layer whose output is not an ``(h, w, c)`` feature map, a model
  without ReLUs for guided backprop (which would silently be the plain
  gradient) and ``--eg-baselines`` rows not shaped like the input.

  Raises:
    UsageError: naming the option to change.
  """
  method = canonical(method)
  if model is not None and _plain(method) in ("guided-backprop", "guided-grad-cam"):
    _check_relus(model, method, x_shape)
  if model is not None and method in LAYER_METHODS:
    _check_layer(model, _layer(model, options, method), x_shape)
  if method in EG_METHODS and options.eg_baselines != "uniform":
    data = _eg_dataset(options)
    if data.ndim != len(x_shape) + 1 or data.shape[1:] != tuple(x_shape) or data.shape[0] < 1:
      raise UsageError(
        f"--eg-baselines {options.eg_baselines} holds shape {data.shape}; the model's input is {tuple(x_shape)}, so"
        f" pass an array of shape (m, {', '.join(map(str, x_shape))}) with m >= 1 baselines in its input space")


# ----------------------------------------------------------------------------
# The compositions.


def _build(method, f, bounds, options, *, param_fn, model):
  o = options
  bs = o.batch_size
  mc = {} if o.rtol is None else {"rtol": o.rtol}
  # The smoother's error propagates through GI, IG and Blur IG; EG and NG measure their own (outer) spread.
  own = o.return_stderr and method in STDERR_METHODS and _plain(method) in ("eg", "ng")
  if o.return_stderr and method in STDERR_METHODS and not own:
    mc["return_stderr"] = True

  def sg(g):
    if o.estimator != "mc":
      return one_pass(alpha=o.alpha)
    return ag.smooth_grad(g, o.alpha, o.n, bounds=bounds, batch_size=bs, noise=o.noise, **mc)

  def adapt(g):
    if o.estimator != "mc":
      return one_pass(c=o.c, sigma_rule=o.sigma_rule)
    return ag.adapt_smooth(g, o.c, o.n, bounds=bounds, sigma_rule=o.sigma_rule, batch_size=bs, noise=o.noise,
                           **mc)

  def one_pass(**sigma):
    """SG's or AG's smoothed gradient of ``f`` from one backward pass (--estimator; GI and IG compose)."""
    if o.estimator == "smooth-diff":
      return ag.smooth_diff(f, o.n, bounds=bounds, batch_size=bs, **sigma,
                            **({"return_stderr": True} if "return_stderr" in mc else {}))
    return ag.moment_smooth(f, bounds=bounds, **sigma)  # pylint: disable=no-member  # checked: check_options

  def smoothed(g):
    """``g``, ``sg(g)`` or ``adapt(g)`` by the method's prefix."""
    return {"s-": sg, "a-": adapt}.get(method[:2], lambda h: h)(g)

  def with_key(fn):
    return fn if ag.is_stochastic(fn) else (lambda key, x, t: fn(x, t))

  def ig(g):
    return ag.integrated_gradients(g, o.ig_steps, baseline=o.baseline, bounds=bounds, batch_size=bs)

  g = jax.grad(f)
  if method == "grad":
    return lambda key, x, t: g(x, t)
  if method == "smoothgrad":
    return with_key(sg(g))
  if method == "adaptgrad":
    return with_key(adapt(g))
  if method == "gi":
    gi = ag.gradient_x_input(g)
    return lambda key, x, t: gi(x, t)
  if method == "s-gi":
    return with_key(ag.gradient_x_input(sg(g)))
  if method == "a-gi":
    return with_key(ag.gradient_x_input(adapt(g)))
  if method == "ig":
    plain = ig(g)
    return lambda key, x, t: plain(x, t)
  if method == "s-ig":
    return with_key(ig(sg(g)))
  if method == "a-ig":
    return with_key(ig(adapt(g)))

  base = _plain(method)
  if base == "eg":
    inner = smoothed(g)
    data = _eg_dataset(o)
    ag.expected_gradients(inner, o.ig_steps, baselines=[0.0], batch_size=bs)  # validates the counts now

    def eg(key, x, t):
      baselines = uniform_baselines(bounds, x.shape, x.dtype) if data is None else data
      return ag.expected_gradients(inner, o.ig_steps, baselines=baselines, batch_size=bs,
                                   **({"return_stderr": True} if own else {}))(key, x, t)

    return eg
  if base == "blur-ig":
    return with_key(ag.blur_integrated_gradients(smoothed(g), o.ig_steps, max_sigma=o.blur_sigma, batch_size=bs))
  if base == "guided-ig":
    return with_key(ag.guided_integrated_gradients(smoothed(g), o.ig_steps, baseline=o.baseline, bounds=bounds))
  if base == "idgi":
    return with_key(ag.idgi(smoothed(g), f, o.ig_steps, baseline=o.baseline, bounds=bounds, batch_size=bs))

  if method in MODEL_METHODS:
    if model is None:
      raise UsageError(f"--method {method} needs the Flax model itself (its layers or ReLUs); pass model=")
    from adaptgrad_jax import flax_cam  # pylint: disable=import-outside-toplevel

    if base == "guided-backprop":
      return with_key(smoothed(flax_cam.guided_backprop(model)))
    layer = _layer(model, o, method)
    if base == "guided-grad-cam":
      return with_key(smoothed(flax_cam.guided_grad_cam(model, layer)))
    if base == "grad-cam":
      return _upsampled(flax_cam.grad_cam(model, layer, grad_fn=smoothed(flax_cam.layer_gradient(model, layer))))
    return _upsampled(flax_cam.grad_cam_pp(model, layer,
                                           grad_fn=smoothed(flax_cam.layer_gradient_powers(model, layer))))

  # NoiseGrad family: the parameters are an argument.
  if param_fn is None:
    raise UsageError(f"--method {method} perturbs the model's parameters and needs a Flax model")
  f_params, params = param_fn
  gp = jax.grad(f_params)  # gradient with respect to x, f_params(x, params, t)

  def ng(inner):
    return ag.noise_grad(inner, o.ng_samples, sigma=o.ng_sigma, argnums=1,
                         **({"return_stderr": True} if own else {}))

  if method == "ng":
    explain = ng(gp)
  elif method == "s-ng":
    explain = ng(sg(gp))
  else:
    explain = ng(adapt(gp))
  return lambda key, x, t: explain(key, x, params, t)


def cost(method: str, options: Options) -> int:
  """Gradient evaluations per input (IDGI also evaluates f at ig_steps + 1 points, a forward pass each)."""
  o = options
  return {
    "1": 1, "2": 2, "n": o.n, "2 * n": 2 * o.n, "ig_steps": o.ig_steps, "ig_steps * n": o.ig_steps * o.n,
    "ng_samples": o.ng_samples, "ng_samples * n": o.ng_samples * o.n,
  }[METHODS[canonical(method)][1]]
