"""Section 3.2 of the paper: how often Gaussian smoothing samples leave the data domain.

The paper draws SmoothGrad's noise (alpha = 0.2, N = 50) for 1,000 ImageNet
images in torchvision's normalisation and reports that 12.62% of the noisy
pixels (per element) and 100% of the noisy images (per image: at least one
element outside) leave ``[x_min, x_max]``. We repeat the measurement on the
photos bundled with the package (and random crops of them), for SmoothGrad and
for AdaptGrad under each sigma rule, next to the analytic expectation of
Eq. 9 (:func:`adaptgrad_jax.inherent_noise`).
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
    "InherentNoiseConfig",
    "InherentNoiseResult",
    "PAPER_INHERENT_NOISE",
    "RELEASED_IMAGENET_BOUNDS",
    "imagenet_photo_batch",
    "inherent_noise_experiment",
    "out_of_range_rows",
)

PAPER_INHERENT_NOISE = {"per_element": 0.1262, "per_image": 1.0,
                        "figure3_smoothgrad": 0.1596, "figure3_adaptgrad": 0.01424}
"""Section 3.2 (SmoothGrad, 1,000 ImageNet images) and Figure 3 (uniform x)."""

RELEASED_IMAGENET_BOUNDS = (-2.117904, 2.640000)
"""The single (min over channels, max over channels) bounds of the released code."""

RULES = ("two_sided", "eq13", "exact")


@dataclasses.dataclass(frozen=True)
class InherentNoiseConfig:
  """Settings of the inherent-noise experiment.

  Attributes:
    alpha: SmoothGrad's noise level (paper: 0.2).
    c: AdaptGrad's confidence level (paper: 0.95).
    n: noisy copies per image (paper: N = 50).
    photos: bundled photo names (:data:`adaptgrad_jax.models.PHOTOS`).
    crops_per_photo: extra random square crops of each photo (side 50% to
      100% of the shorter side, resized to 224 x 224) besides the torchvision
      center crop; 0 for the center crops only.
    released_bounds: also measure with the released code's single bounds
      (-2.1179, 2.64) for every channel.
    seed: PRNG seed (crops and noise).
  """
  alpha: float = 0.2
  c: float = 0.95
  n: int = 50
  photos: tuple[str, ...] = ("chelsea", "coffee")
  crops_per_photo: int = 8
  released_bounds: bool = True
  seed: int = 0


QUICK_INHERENT_NOISE = InherentNoiseConfig(crops_per_photo=2, n=10)


def imagenet_photo_batch(photos=("chelsea", "coffee"), crops_per_photo: int = 0,
                         seed: int = 0) -> tuple[np.ndarray, list[str]]:
  """Bundled photos in torchvision's ImageNet normalisation, (B, 224, 224, 3).

  Each photo gives its center crop (``preprocess_imagenet``) and
  ``crops_per_photo`` random square crops of 50% to 100% of its shorter side,
  each resized to 224 x 224 and normalised the same way.

  Returns:
    The batch and a name per image (``"chelsea"``, ``"chelsea/crop3"``...).
  """
  from adaptgrad_jax import models  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(seed)
  images, names = [], []
  for name in photos:
    photo = models.load_photo(name)
    images.append(models.preprocess_imagenet(photo))
    names.append(name)
    h, w = photo.shape[:2]
    for j in range(crops_per_photo):
      side = int(rng.integers(min(h, w) // 2, min(h, w) + 1))
      top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
      crop = photo[top:top + side, left:left + side]
      images.append(models.preprocess_imagenet(crop, resize=224, crop=224))
      names.append(f"{name}/crop{j}")
  return np.stack(images), names


def _sigma_fns(config: InherentNoiseConfig) -> dict[str, Callable[[Any, Any], Any]]:
  """label -> sigma_fn(x, bounds)."""
  fns = {f"SmoothGrad (alpha={config.alpha:g})":
         lambda x, b: jnp.broadcast_to(ag.smoothgrad_sigma(config.alpha, bounds=b), x.shape)}
  for rule in RULES:
    fns[f"AdaptGrad {rule} (c={config.c:g})"] = (
        lambda x, b, r=rule: ag.adaptive_sigma(x, config.c, bounds=b, rule=r))
  return fns


def out_of_range_rows(key: jax.Array, images: jax.Array, config: InherentNoiseConfig,
                      bounds: Any) -> list[list[Any]]:
  """[label, measured per element, per image, analytic per element, mean sigma] rows."""
  images = jnp.asarray(images)
  lower = jnp.broadcast_to(jnp.asarray(bounds[0], images.dtype), images.shape[1:])
  upper = jnp.broadcast_to(jnp.asarray(bounds[1], images.dtype), images.shape[1:])
  fns = _sigma_fns(config)

  @jax.jit
  def measure(k, xs):
    def one(args):
      k1, x = args
      # Clip: a pixel on a bound may round a few ulps outside in float32.
      x = jnp.clip(x, lower, upper)
      out = []
      for i, fn in enumerate(fns.values()):
        sigma = fn(x, (lower, upper))
        rate = ag.out_of_range_rate(jax.random.fold_in(k1, i), x, sigma, config.n,
                                        bounds=(lower, upper))
        expected = jnp.mean(ag.inherent_noise(x, sigma, bounds=(lower, upper)))
        out.append(jnp.stack([rate.per_element, rate.per_input, expected, jnp.mean(sigma)]))
      return jnp.stack(out)
    return jax.lax.map(one, (jax.random.split(k, xs.shape[0]), xs))

  values = np.asarray(measure(key, images)).mean(axis=0)  # (methods, 4)
  return [[label, *(float(v) for v in row)] for label, row in zip(fns, values)]


def _figure3_rows(config: InherentNoiseConfig) -> list[list[Any]]:
  """Figure 3's analytic check: x uniform on [-2.12, 2.64]."""
  b = (-2.12, 2.64)
  x = jnp.linspace(b[0], b[1], 20001)
  fns = _sigma_fns(config)
  rates = jax.jit(lambda x: jnp.stack(
      [jnp.mean(ag.inherent_noise(x, fn(x, b), bounds=b)) for fn in fns.values()]))(x)
  return [[label, float(r)] for label, r in zip(fns, rates)]


class InherentNoiseResult(NamedTuple):
  """What :func:`inherent_noise_experiment` returns.

  Attributes:
    per_channel: rows [method, per element, per image, analytic, mean sigma]
      with torchvision's per-channel bounds (``IMAGENET_BOUNDS``).
    released_bounds: the same with the released code's single bounds
      (-2.1179, 2.64) for every channel.
    figure3: [method, analytic rate] for x uniform on [-2.12, 2.64].
    num_images: images measured.
    image_names: their names.
    config: the settings.
    seconds: wall time.
  """
  per_channel: list[list[Any]]
  released_bounds: list[list[Any]]
  figure3: list[list[Any]]
  num_images: int
  image_names: list[str]
  config: dict[str, Any]
  seconds: float

  HEADER = ("method", "out of range per element", "per image", "analytic (Eq. 9)",
            "mean sigma")

  def paper_row(self) -> list[Any]:
    return ["SmoothGrad, paper (1,000 ImageNet images)", PAPER_INHERENT_NOISE["per_element"],
            PAPER_INHERENT_NOISE["per_image"], None, None]

  def settings_line(self) -> str:
    c = self.config
    return (f"{self.num_images} images ({', '.join(c['photos'])}: the torchvision center crop "
            f"and {c['crops_per_photo']} random crops of each), 224 x 224 x 3 in torchvision's "
            f"ImageNet normalisation; N = {c['n']} noisy copies per image; seed {c['seed']}; "
            f"{self.seconds:.1f} s.")

  def to_markdown(self) -> str:
    fig3 = [["Figure 3, paper", PAPER_INHERENT_NOISE["figure3_smoothgrad"]],
            ["Figure 3, paper (AdaptGrad)", PAPER_INHERENT_NOISE["figure3_adaptgrad"]]]
    return "\n\n".join([
        "Per-channel bounds (`IMAGENET_BOUNDS`):",
        _report.markdown_table(self.HEADER, [*self.per_channel, self.paper_row()]),
        *(["The released code's single bounds (-2.1179, 2.64) for every channel:",
           _report.markdown_table(self.HEADER, [*self.released_bounds, self.paper_row()])]
          if self.released_bounds else []),
        "Figure 3 (x uniform on [-2.12, 2.64]), analytic expected rate:",
        _report.markdown_table(("method", "expected rate"), [*self.figure3, *fig3]),
        self.settings_line()])

  def to_dict(self) -> dict[str, Any]:
    keys = ("method", "per_element", "per_image", "analytic", "mean_sigma")
    return {"per_channel_bounds": [dict(zip(keys, r)) for r in self.per_channel],
            "released_bounds": [dict(zip(keys, r)) for r in self.released_bounds],
            "figure3": [dict(zip(("method", "expected"), r)) for r in self.figure3],
            "paper": PAPER_INHERENT_NOISE, "num_images": self.num_images,
            "image_names": self.image_names, "config": self.config, "seconds": self.seconds}

  def print(self) -> None:
    for title, rows in (("Inherent noise, per-channel IMAGENET_BOUNDS", self.per_channel),
                        ("Inherent noise, released code's bounds (-2.1179, 2.64)",
                         self.released_bounds)):
      if not rows:
        continue
      _report.print_rich_table(title, self.HEADER, [*rows, self.paper_row()])
    _report.print_rich_table("Figure 3: x uniform on [-2.12, 2.64], expected rate",
                             ("method", "expected rate"), self.figure3,
                             caption=self.settings_line())


def inherent_noise_experiment(
    config: InherentNoiseConfig = InherentNoiseConfig(),
    *,
    images: Any = None,
    log: Callable[[str], None] | None = print,
) -> InherentNoiseResult:
  """Out-of-range rates of SmoothGrad and AdaptGrad noise on real photos.

  Args:
    config: the settings (:class:`InherentNoiseConfig`).
    images: optional (B, H, W, 3) images already in torchvision's ImageNet
      normalisation; default: :func:`imagenet_photo_batch` of the bundled
      photos.
    log: where to report progress lines (None: silent).

  Returns:
    An :class:`InherentNoiseResult`.

  Example:
    >>> from adaptgrad_jax import reproduce
    >>> cfg = reproduce.InherentNoiseConfig(n=4, crops_per_photo=0, photos=("coffee",),
    ...                                     released_bounds=False)
    >>> res = reproduce.inherent_noise_experiment(cfg, log=None)
    >>> res.per_channel[0][2]  # SmoothGrad: every noisy image leaves the domain
    1.0

  References:
    Zhou et al., "AdaptGrad", NeurIPS 2025, Sec. 3.2 (Eqs. 9-10, Figure 3).
  """
  from adaptgrad_jax import models  # pylint: disable=import-outside-toplevel
  say = log or (lambda _: None)
  start = time.perf_counter()
  if images is None:
    images, names = imagenet_photo_batch(config.photos, config.crops_per_photo, config.seed)
  else:
    images = np.asarray(images, np.float32)
    names = [f"image{i}" for i in range(images.shape[0])]
  say(f"measuring {images.shape[0]} images")
  key = jax.random.key(config.seed)
  per_channel = out_of_range_rows(jax.random.fold_in(key, 0), images, config,
                                  models.IMAGENET_BOUNDS)
  released = []
  if config.released_bounds:
    released = out_of_range_rows(jax.random.fold_in(key, 1), images, config,
                                 RELEASED_IMAGENET_BOUNDS)
  cfg = dataclasses.asdict(config)
  cfg["photos"] = list(config.photos)
  return InherentNoiseResult(per_channel, released, _figure3_rows(config), int(images.shape[0]),
                             names, cfg, time.perf_counter() - start)
