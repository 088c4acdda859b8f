"""Table 2 style: Sparseness and Information Level on real photos, with OUR model.

The paper's Table 2 explains 100 ImageNet validation images with torchvision's
VGG16, InceptionV3 and ResNet50. Offline, on two CPU cores, we can use one real
pretrained ImageNet classifier: EfficientNet-Lite0
(:func:`adaptgrad_jax.models.pretrained_efficientnet_lite0`, 224 x 224, inputs
``(pixel - 127) / 128`` in ``EFFICIENTNET_LITE_BOUNDS``) on the photos bundled
with the package. The numbers are therefore NOT comparable one to one with the
paper's; what carries over is the comparison of SG and AG within a row group.

Every method is the library's composition of transforms (``methods.md``): SG =
``smooth_grad(g)``, AG = ``adapt_smooth(g)``, GI = ``gradient_x_input``, IG =
``integrated_gradients(..., baseline="black" | "white")`` (black = the lower
bound of the domain, i.e. a black image in pixel space), NG = ``noise_grad``.
Every map explains the model's predicted class on the clean photo.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import adaptgrad_jax as ag
from adaptgrad_jax.reproduce import _report

__all__ = (
    "PAPER_TABLE2",
    "TABLE2_METHODS",
    "Table2Config",
    "Table2Result",
    "table2",
    "table2_explainers",
)

TABLE2_METHODS = ("Grad", "SG", "AG", "GI", "S-GI", "A-GI", "IG(W)", "S-IG(W)", "A-IG(W)",
                  "IG(B)", "S-IG(B)", "A-IG(B)", "NG", "S-NG", "A-NG")
IG_METHODS = ("IG(W)", "S-IG(W)", "A-IG(W)", "IG(B)", "S-IG(B)", "A-IG(B)")

_PAPER_ROWS = {  # method: (VGG16 SS, IL, InceptionV3 SS, IL, ResNet50 SS, IL)
    "Grad": (0.5421, None, 0.5546, None, 0.5626, None),
    "SG": (0.5334, None, 0.5422, None, 0.5536, None),
    "AG": (0.5608, None, 0.5621, None, 0.5659, None),
    "GI": (0.6198, None, 0.6152, None, 0.6304, None),
    "S-GI": (0.6074, None, 0.5994, None, 0.6176, None),
    "A-GI": (0.6487, None, 0.6425, None, 0.6479, None),
    "IG(W)": (0.6284, 0.5635, 0.7083, 0.6677, 0.6178, 0.5491),
    "S-IG(W)": (0.6229, 0.5741, 0.7562, 0.7179, 0.6171, 0.5718),
    "A-IG(W)": (0.6327, 0.5846, 0.7586, 0.7221, 0.6205, 0.5849),
    "IG(B)": (0.6391, 0.5823, 0.6348, 0.6751, 0.6288, 0.5355),
    "S-IG(B)": (0.6371, 0.6035, 0.6392, 0.7166, 0.6250, 0.5731),
    "A-IG(B)": (0.6397, 0.6121, 0.6439, 0.7193, 0.6266, 0.5673),
    "NG": (0.5519, None, 0.5566, None, 0.5626, None),
    "S-NG": (0.5551, None, 0.5734, None, 0.5591, None),
    "A-NG": (0.5823, None, 0.5917, None, 0.5738, None),
}
PAPER_TABLE2 = {
    model: {m: {"SS": row[2 * i], "IL": row[2 * i + 1]} for m, row in _PAPER_ROWS.items()}
    for i, model in enumerate(("VGG16", "InceptionV3", "ResNet50"))
}
"""Zhou et al. (AdaptGrad), Table 2: Sparseness (SS) and Information Level (IL), higher is better."""


@dataclasses.dataclass(frozen=True)
class Table2Config:
  """Settings of the Table 2 style run (the paper's in brackets).

  Attributes:
    photos: bundled photos (``models.PHOTOS``) [100 ImageNet images].
    n: noise samples of SG, AG, S-GI, A-GI, S-NG, A-NG [50].
    ig_steps: points on the Integrated Gradients path [50].
    ig_n: noise samples at each IG path point for S-IG / A-IG [50].
    m: parameter samples of NoiseGrad [50].
    alpha: SmoothGrad's noise level [0.2].
    c: AdaptGrad's confidence level [0.95].
    sigma_rule: AdaptGrad's sigma rule [two_sided, the released code's].
    ng_sigma: NoiseGrad's multiplicative noise level [0.2].
    batch_size: gradient evaluations at a time (memory and speed).
    pic_masks: random seed masks per image for the PIC [10].
    min_pred_value: XRAI's SIC filter: skip images predicted with less
      confidence [XRAI: 0.8; chelsea is predicted with 0.79].
    entropy: the PIC's information estimator (``"webp"``, XRAI's).
    seed: PRNG seed.
  """
  photos: tuple[str, ...] = ("chelsea", "coffee")
  n: int = 8
  ig_steps: int = 6
  ig_n: int = 2
  m: int = 2
  alpha: float = 0.2
  c: float = 0.95
  sigma_rule: str = "two_sided"
  ng_sigma: float = 0.2
  batch_size: int = 8
  pic_masks: int = 1
  min_pred_value: float = 0.5
  entropy: str = "webp"
  seed: int = 0


QUICK_TABLE2 = Table2Config(photos=("chelsea",), n=2, ig_steps=2, ig_n=2, m=2, batch_size=4,
                            pic_masks=1)


def table2_explainers(grad_fn: Callable[..., Any], config: Table2Config, bounds: Any,
                      ) -> dict[str, Callable[..., Any]]:
  """The explainers of Table 2, each ``explainer(key, x, params, target)``.

  GI, S-GI and A-GI are not listed: they are ``x`` times the Grad, SG and AG
  maps computed with the same key, exactly what ``gradient_x_input(smooth_grad(g))``
  returns; :func:`table2` forms them by that product instead of recomputing.

  Args:
    grad_fn: ``jax.grad(f)`` of ``f(x, params, target)`` for one image.
    config: the settings.
    bounds: the model's input domain.
  """
  bs = max(1, config.batch_size)
  sg_kw = dict(bounds=bounds, batch_size=min(bs, config.n))
  ag_kw = dict(bounds=bounds, sigma_rule=config.sigma_rule, batch_size=min(bs, config.n))

  def grad(key, x, params, target):
    del key
    return grad_fn(x, params, target)

  def sg(n):
    return ag.smooth_grad(grad_fn, config.alpha, n, **{**sg_kw, "batch_size": min(bs, n)})

  def adapt(n):
    return ag.adapt_smooth(grad_fn, config.c, n, **{**ag_kw, "batch_size": min(bs, n)})

  def ig(inner, baseline, samples_per_point):
    points = max(1, bs // samples_per_point)
    fn = ag.integrated_gradients(inner, config.ig_steps, baseline=baseline, bounds=bounds,
                                 batch_size=min(points, config.ig_steps))
    if inner is not grad_fn:
      return fn

    def deterministic_ig(key, x, params, target):
      del key
      return fn(x, params, target)
    return deterministic_ig

  def ng(inner, samples_per_param):
    return ag.noise_grad(inner, config.m, sigma=config.ng_sigma,
                         mask=lambda path: path[0] != "_fc",
                         batch_size=max(1, min(config.m, bs // samples_per_param)))

  out = {"Grad": grad, "SG": sg(config.n), "AG": adapt(config.n)}
  for name, baseline in (("W", "white"), ("B", "black")):
    out[f"IG({name})"] = ig(grad_fn, baseline, 1)
    out[f"S-IG({name})"] = ig(sg(config.ig_n), baseline, config.ig_n)
    out[f"A-IG({name})"] = ig(adapt(config.ig_n), baseline, config.ig_n)
  out["NG"] = ng(grad_fn, 1)
  out["S-NG"] = ng(sg(config.n), config.n)
  out["A-NG"] = ng(adapt(config.n), config.n)
  return out


class Table2Result(NamedTuple):
  """What :func:`table2` returns.

  Attributes:
    sparseness: method -> mean Gini index over the photos.
    information_level: IG method -> SIC AUC (median curve over photos and
      masks), None if every image was skipped.
    pic_counts: IG method -> (curves used, curves skipped).
    predictions: photo -> (class index, class name, probability).
    config: the settings.
    seconds: wall time per stage and in total.
    gradient_evaluations: per photo, by method.
  """
  sparseness: dict[str, float]
  information_level: dict[str, float | None]
  pic_counts: dict[str, tuple[int, int]]
  predictions: dict[str, tuple[int, str, float]]
  config: dict[str, Any]
  seconds: dict[str, float]
  gradient_evaluations: dict[str, int]

  HEADER = ("method", "SS (ours, Lite0)", "IL (ours, Lite0)", "SS VGG16", "IL VGG16",
            "SS InceptionV3", "IL InceptionV3", "SS ResNet50", "IL ResNet50")

  def rows(self) -> list[list[Any]]:
    rows = []
    for m in TABLE2_METHODS:
      paper = [PAPER_TABLE2[model][m][k] for model in ("VGG16", "InceptionV3", "ResNet50")
               for k in ("SS", "IL")]
      rows.append([m, self.sparseness[m], self.information_level.get(m), *paper])
    return rows

  def settings_line(self) -> str:
    c = self.config
    preds = "; ".join(f"{k}: {v[1]} ({v[2]:.3f})" for k, v in self.predictions.items())
    counts = ", ".join(f"{k} {v[0]}/{v[0] + v[1]}" for k, v in self.pic_counts.items())
    return (f"OUR model: pretrained EfficientNet-Lite0 (224 x 224, bounds (-0.9922, 1.0)), not the "
            f"paper's VGG16 / InceptionV3 / ResNet50 (paper columns shown for reference). "
            f"{len(c['photos'])} photos ({preds}), each explaining its predicted class. "
            f"n = {c['n']} (SG, AG, S-/A-GI, S-/A-NG), IG {c['ig_steps']} steps (trapezoid) with "
            f"{c['ig_n']} noise samples per step for S-/A-IG, NG m = {c['m']} (sigma "
            f"{c['ng_sigma']}, final `_fc` layer unperturbed), alpha {c['alpha']}, c {c['c']} "
            f"({c['sigma_rule']}); gradient batch {c['batch_size']}. IL: softmax information "
            f"curve AUC (XRAI), {c['pic_masks']} random masks per photo, paper thresholds, "
            f"{c['entropy']} entropy, min_pred_value {c['min_pred_value']}; curves used: "
            f"{counts}. Seed {c['seed']}; explaining {self.seconds['explaining']:.0f} s, PIC "
            f"{self.seconds['information_level']:.0f} s, total {self.seconds['total']:.0f} s.")

  def to_markdown(self) -> str:
    return _report.markdown_table(self.HEADER, self.rows()) + "\n\n" + self.settings_line()

  def to_dict(self) -> dict[str, Any]:
    return {"model": "EfficientNet-Lite0 (pretrained, ours; not the paper's models)",
            "sparseness": self.sparseness, "information_level": self.information_level,
            "pic_counts": self.pic_counts, "predictions": self.predictions,
            "paper": PAPER_TABLE2, "config": self.config, "seconds": self.seconds,
            "gradient_evaluations_per_photo": self.gradient_evaluations}

  def print(self) -> None:
    _report.print_rich_table("Table 2 style: Sparseness / Information Level, OUR EfficientNet-Lite0",
                             self.HEADER, self.rows(), caption=self.settings_line())


def _gradient_counts(c: Table2Config) -> dict[str, int]:
  counts = {"Grad": 1, "SG": c.n, "AG": c.n, "GI": 1, "S-GI": c.n, "A-GI": c.n,
            "NG": c.m, "S-NG": c.m * c.n, "A-NG": c.m * c.n}
  for b in ("W", "B"):
    counts.update({f"IG({b})": c.ig_steps, f"S-IG({b})": c.ig_steps * c.ig_n,
                   f"A-IG({b})": c.ig_steps * c.ig_n})
  return counts


def table2(
    config: Table2Config = Table2Config(),
    *,
    model: Any = None,
    log: Callable[[str], None] | None = print,
) -> Table2Result:
  """Sparseness (all methods) and Information Level (IG rows) with EfficientNet-Lite0.

  Args:
    config: the settings (:class:`Table2Config`).
    model: an NNX ImageNet classifier taking ``preprocess_efficientnet_lite``
      inputs; default ``models.pretrained_efficientnet_lite0()`` (needs the
      ``pretrained`` extra).
    log: where to report progress lines (None: silent).

  Returns:
    A :class:`Table2Result`.

  References:
    Zhou et al., "AdaptGrad", NeurIPS 2025, Table 2; Chalasani et al. 2020
    (Sparseness); Kapishnikov et al. 2019 (XRAI's PIC, Information Level).
  """
  from adaptgrad_jax import flax_adapters, metrics, models  # pylint: disable=import-outside-toplevel
  say = log or (lambda _: None)
  t_start = time.perf_counter()
  if model is None:
    model = models.pretrained_efficientnet_lite0()
  bounds = models.EFFICIENTNET_LITE_BOUNDS
  images = jnp.asarray(np.stack([models.preprocess_efficientnet_lite(models.load_photo(p))
                                 for p in config.photos]))
  f, params = flax_adapters.nnx_param_fn(model)
  targets = flax_adapters.resolve_targets(model, images, "predicted")
  predict = _softmax_fn(model)
  probs = np.asarray(predict(images))
  classes = models.imagenet_classes()
  predictions = {p: (int(t), classes[int(t)], float(probs[i, int(t)]))
                 for i, (p, t) in enumerate(zip(config.photos, np.asarray(targets)))}
  say("predictions: " + "; ".join(f"{k}: {v[1]} ({v[2]:.3f})" for k, v in predictions.items()))

  explainers = table2_explainers(jax.grad(f), config, bounds)
  key = jax.random.key(config.seed)
  maps = {}
  t0 = time.perf_counter()
  for i, (name, explainer) in enumerate(explainers.items()):
    t1 = time.perf_counter()
    fn = jax.jit(lambda keys, xs, p, ts, e=explainer:
                 jax.vmap(lambda k, x, t: e(k, x, p, t))(keys, xs, ts))
    keys = jax.random.split(jax.random.fold_in(key, i), images.shape[0])
    maps[name] = np.asarray(fn(keys, images, params, targets))
    say(f"{name}: {time.perf_counter() - t1:.0f} s")
  for plain in ("Grad", "SG", "AG"):
    maps[{"Grad": "GI", "SG": "S-GI", "AG": "A-GI"}[plain]] = maps[plain] * np.asarray(images)
  explain_seconds = time.perf_counter() - t0

  sparse = jax.jit(jax.vmap(metrics.sparseness))
  sparseness = {m: float(jnp.mean(sparse(jnp.asarray(maps[m])))) for m in TABLE2_METHODS}

  t0 = time.perf_counter()
  information, counts = {}, {}
  for i, m in enumerate(IG_METHODS):
    try:
      res = metrics.information_level(
          jax.random.fold_in(key, 100 + i), images, maps[m], predict, kind="softmax",
          masks_per_image=config.pic_masks, thresholds=metrics.PAPER_THRESHOLDS, bounds=bounds,
          entropy=config.entropy, min_pred_value=config.min_pred_value)
      information[m], counts[m] = float(res.auc), (int(res.num_images), int(res.num_skipped))
    except ValueError as e:  # every curve skipped
      say(f"{m}: information level not defined ({e})")
      information[m], counts[m] = None, (0, len(config.photos) * config.pic_masks)
  pic_seconds = time.perf_counter() - t0
  cfg = dataclasses.asdict(config)
  cfg["photos"] = list(config.photos)
  return Table2Result(sparseness, information, counts, predictions, cfg,
                      {"explaining": explain_seconds, "information_level": pic_seconds,
                       "total": time.perf_counter() - t_start},
                      _gradient_counts(config))


def _softmax_fn(model):
  """Jitted batch -> class probabilities of the model in evaluation mode."""
  from flax import nnx  # pylint: disable=import-outside-toplevel
  from adaptgrad_jax import flax_adapters  # pylint: disable=import-outside-toplevel
  graphdef, state = nnx.split(flax_adapters.eval_view(model))
  return jax.jit(lambda xs: jax.nn.softmax(nnx.merge(graphdef, state)(xs), axis=-1))
