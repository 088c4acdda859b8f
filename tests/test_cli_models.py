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
  # The paper's families, and every other base method with its SmoothGrad (S-) and AdaptGrad (A-) variants.
  assert {"Grad", "SG", "AG", "GI", "S-GI", "A-GI", "IG", "S-IG", "A-IG", "NG", "S-NG", "A-NG"} <= labels
  bases = {label for label in labels if not label.startswith(("S-", "A-"))} - {"Grad", "SG", "AG"}
  assert labels == {"Grad", "SG", "AG"} | bases | {f"{v}-{b}" for b in bases for v in "SA"}


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
  # The same module (graph and static settings) holding exactly the same arrays computes the same outputs;
  # this says so without compiling the forward pass twice (once per model, 10 s on a busy machine).
  # (RNG streams, as MobileNetV3's dropout's, are not weights: a checkpoint does not hold them.)
  weights = nnx.Any(nnx.Param, nnx.BatchStat)
  graphdef, state, _ = nnx.split(loaded.module, weights, ...)
  random_graphdef, random_state, _ = nnx.split(random.module, weights, ...)
  assert graphdef == random_graphdef
  assert jax.tree.structure(state) == jax.tree.structure(random_state) and jax.tree.leaves(state)
  for ours, theirs in zip(jax.tree.leaves(state), jax.tree.leaves(random_state)):
    assert ours.dtype == theirs.dtype
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))
  x = jnp.asarray(np.random.default_rng(1).uniform(-2.0, 2.0, (1, 32, 32, 3)), jnp.float32)  # no threefry to compile
  # Explaining works with the registry's bounds (per channel, ImageNet-normalised space).
  options = _methods.Options(n=2)
  explain_one, _ = _explain.make_explain_one("adaptgrad", loaded, options, "predicted")
  m, error = _explain.split_error("adaptgrad", options, jax.jit(explain_one)(jax.random.key(0), x[0]))
  assert m.shape == (32, 32, 3) and bool(np.all(np.isfinite(m))) and float(np.abs(m).sum()) > 0
  assert error is not None and np.isfinite(error) and error > 0  # the map's Monte Carlo error comes with it
