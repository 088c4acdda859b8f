"""The CLI's model registry: every torchvision-named port of adaptgrad_jax.models is reachable by --model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from adaptgrad_jax import models
from adaptgrad_jax.cli import _errors, _explain, _methods, _models

# CLI name -> the port's tiny test-size preset (same code paths, 32 x 32 inputs).
NEWER = {"vit_b_16": "vit_micro", "convnext_tiny": "convnext_micro", "mobilenet_v3_large": "mobilenet_v3_micro",
         "densenet121": "densenet_micro"}


def test_every_method_family_is_reachable():
  labels = {_methods.label(m) for m in _methods.METHODS}
  assert labels == {"Grad", "SG", "AG", "GI", "S-GI", "A-GI", "IG", "S-IG", "A-IG", "NG", "S-NG", "A-NG"}


def test_every_exported_port_is_registered_with_imagenet_bounds():
  for name in ["mlp", "efficientnet_lite0", "vgg16", "resnet50", "inception_v3", *NEWER]:
    if name in NEWER and not hasattr(models, name):
      continue  # not exported by this version
    spec = _models.spec_for(name)
    assert spec.name == name
  for name in NEWER:
    if not hasattr(models, name):
      continue
    spec = _models.spec_for(name)
    assert (spec.family, spec.size) == ("imagenet", 224)
    lo, hi = _models.bounds_for(spec)
    np.testing.assert_allclose(lo, np.asarray(models.IMAGENET_BOUNDS[0], np.float32))
    np.testing.assert_allclose(hi, np.asarray(models.IMAGENET_BOUNDS[1], np.float32))


@pytest.mark.parametrize("name", [n for n in NEWER if hasattr(models, n)])
def test_newer_port_needs_weights_and_has_no_download(name):
  with pytest.raises(_errors.UsageError, match=f"--model {name} needs weights: pass --weights PATH"):
    _models.load(name, None)
  with pytest.raises(_errors.UsageError, match=f"lists no download for {name}.*--weights PATH"):
    _models.load(name, "download")


@pytest.mark.parametrize("name", [n for n in NEWER if hasattr(models, n)])
def test_newer_port_loads_random_and_checkpoint_weights(name, tmp_path, monkeypatch):
  micro = getattr(models, NEWER[name])
  monkeypatch.setattr(_models, "_constructor", lambda n: micro if n == name else None)
  random = _models.load(name, "random")
  # A checkpoint of the same architecture, written as .npz, loads through --weights PATH to the same outputs.
  state = {k: np.asarray(v) for k, v in models.state_dict_from_model(random.module).items()}
  path = tmp_path / "w.npz"
  np.savez(path, **state)
  loaded = _models.load(name, str(path))
  x = jax.random.uniform(jax.random.key(1), (1, 32, 32, 3), minval=-2.0, maxval=2.0)
  logits = [jax.jit(_explain.model_functions(m)[1])(x) for m in (loaded, random)]  # jitted: eager is slow
  np.testing.assert_allclose(np.asarray(logits[0]), np.asarray(logits[1]), rtol=1e-5, atol=1e-5)
  # Explaining works with the registry's bounds (per channel, ImageNet-normalised space).
  explain_one, _ = _explain.make_explain_one("adaptgrad", loaded, _methods.Options(n=2), "predicted")
  m = jax.jit(explain_one)(jax.random.key(0), x[0])
  assert m.shape == (32, 32, 3) and bool(jnp.all(jnp.isfinite(m))) and float(jnp.abs(m).sum()) > 0
