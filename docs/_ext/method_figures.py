"""Draws docs/img/methods_chelsea.png: plain, S- and A- variants of the IG family and Grad-CAM.

EfficientNet-Lite0 with its real ImageNet weights (the ``pretrained`` extra) on
scikit-image's CC0 ``chelsea`` photo, class 285 "Egyptian cat". Each smoothed
variant is the one-liner of docs/transforms.md ("The IG family, CAM and their
smoothed variants"): the method's gradient function replaced by
``ag.smooth_grad(g, 0.2, N, bounds=b)`` (S-) or ``ag.adapt_smooth(g, 0.95, N,
bounds=b)`` (A-). N and the path steps are kept modest so the figure is drawn
in a few minutes on a laptop CPU::

  nice -n 5 python docs/_ext/method_figures.py

It prints the seconds per map (compilation included) and writes the PNG.
"""

import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np

import adaptgrad_jax as ag
from adaptgrad_jax import flax_adapters, flax_cam, models, viz

N = 10  # noise samples of S- and A- (the paper uses 50)
STEPS = 16  # path points (IG family), baseline draws (EG)
CAM_N = 50  # noise samples of S-/A-Grad-CAM (one layer gradient each: cheap)
TARGET = 285  # "Egyptian cat"
LAYER = "_blocks"  # EfficientNet-Lite0's last MBConv block (the CLI's default)
BATCH = 8  # noisy samples / path points evaluated at once (bounds memory; results do not depend on it)
OUT = pathlib.Path(__file__).resolve().parents[1] / "img" / "methods_chelsea.png"


def main() -> None:
  model = models.pretrained_efficientnet_lite0()
  x = jnp.asarray(models.preprocess_efficientnet_lite(models.load_photo("chelsea")), jnp.float32)
  b = tuple(float(v) for v in models.EFFICIENTNET_LITE_BOUNDS)
  f = flax_adapters.nnx_target_fn(model)  # f(x, target): the logit of one image
  g = jax.grad(f)

  def smoothers(n):
    return {
      "": lambda h: h,
      "S-": lambda h: ag.smooth_grad(h, 0.2, n, bounds=b, batch_size=BATCH),
      "A-": lambda h: ag.adapt_smooth(h, 0.95, n, bounds=b, batch_size=BATCH),
    }

  def uniform(key):  # EG's baselines: uniform within the bounds (the CLI's default)
    return jax.random.uniform(key, x.shape, x.dtype, minval=b[0], maxval=b[1])

  families = {
    "EG": lambda s: ag.expected_gradients(s(g), STEPS, baselines=uniform, batch_size=BATCH),
    "Blur IG": lambda s: ag.blur_integrated_gradients(s(g), STEPS, batch_size=BATCH),
    "Guided IG": lambda s: ag.guided_integrated_gradients(s(g), STEPS, baseline="black", bounds=b),
    "IDGI": lambda s: ag.idgi(s(g), f, STEPS, baseline="black", bounds=b, batch_size=BATCH),
    "Grad-CAM": lambda s: flax_cam.grad_cam(model, LAYER, grad_fn=s(flax_cam.layer_gradient(model, LAYER))),
  }
  key = jax.random.key(0)
  maps, seconds = [], {}
  for name, build in families.items():
    row = []
    for prefix, smooth in smoothers(CAM_N if name == "Grad-CAM" else N).items():
      fn = build(smooth)
      args = (x, TARGET) if not ag.is_stochastic(fn) else (key, x, TARGET)
      start = time.perf_counter()
      m = np.asarray(jax.jit(fn)(*args))
      seconds[prefix + name] = round(time.perf_counter() - start, 1)
      if name == "Grad-CAM":  # the (7, 7) map upsampled bilinearly to the image, as the CLI does
        m = np.asarray(jax.image.resize(jnp.asarray(m), x.shape[:2], method="bilinear"))[..., None]
      assert np.all(np.isfinite(m)), prefix + name
      row.append(m)
      print(f"{prefix + name}: {seconds[prefix + name]} s (compile included)", flush=True)
    maps.append(row)
  image = np.clip((np.asarray(x) * 128.0 + 127.0) / 255.0, 0.0, 1.0)
  viz.plot_grid(maps, row_labels=list(families), col_labels=["plain", f"S- (N={N})", f"A- (N={N})"],
                images=image, title=f"{STEPS} steps; CAM N={CAM_N}", cell_size=1.7, dpi=80, path=OUT,
                overwrite=True)
  from PIL import Image  # pylint: disable=import-outside-toplevel

  Image.open(OUT).convert("RGB").quantize(colors=256).save(OUT, optimize=True)  # < 300 KB in the repository
  print(f"wrote {OUT} ({OUT.stat().st_size // 1024} KB)")


if __name__ == "__main__":
  main()
