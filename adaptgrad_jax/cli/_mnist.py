"""The demo's MNIST MLP: trained on the embedded digits, cached by a hash of its settings.

The first call trains the paper's 784-200-10 MLP on the MNIST subset shipped
with the package (10,000 training digits) and saves it with orbax under
``$ADAPTGRAD_JAX_CACHE/demo/mlp-<hash>`` (default ``~/.cache/adaptgrad_jax``);
later calls with the same settings load it. ``explain --model mlp`` without
``--weights`` uses the same model.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from adaptgrad_jax.cli import _models

# Fewer epochs than the paper's 20 (on full MNIST) so the demo stays quick; the
# optimiser, learning rate, batch size and architecture are the paper's.
DEMO_SETTINGS = {
  "model": "mlp-784-200-10",
  "data": "mnist_embedded",
  "train_size": 10000,
  "epochs": 5,
  "optimizer": "sgd",
  "learning_rate": 0.01,
  "batch_size": 32,
  "seed": 0,
}
QUICK_SETTINGS = dict(DEMO_SETTINGS, train_size=2000, epochs=2, learning_rate=0.05)


def describe(settings: dict) -> str:
  return (f"MLP 784-200-10, {settings['optimizer'].upper()} lr={settings['learning_rate']}, batch "
          f"{settings['batch_size']}, {settings['epochs']} epochs on {settings['train_size']} embedded MNIST digits")


def demo_mlp(settings: dict | None = None, *, progress: bool = True, use_cache: bool = True,
             log=None) -> tuple[Any, str]:
  """Returns ``(model, description)``: the trained MLP in eval mode, from the cache if there.

  The description includes the test accuracy on the embedded 2,000 test digits
  and whether the model was loaded or trained.
  """
  import jax  # pylint: disable=import-outside-toplevel
  from flax import nnx  # pylint: disable=import-outside-toplevel

  from adaptgrad_jax import datasets, models, training  # pylint: disable=import-outside-toplevel

  settings = dict(DEMO_SETTINGS if settings is None else settings)
  log = log or (lambda message: print(message, file=sys.stderr))
  directory = _models.cache_root() / "demo" / f"mlp-{_models.settings_hash(settings)}"
  checkpoint, meta_file = directory / "checkpoint", directory / "meta.json"

  if use_cache and meta_file.exists() and checkpoint.exists():
    try:
      template = nnx.eval_shape(lambda: models.mlp(rngs=nnx.Rngs(0)))
      model = training.load_model(checkpoint, template)
      model.eval()
      meta = json.loads(meta_file.read_text())
      return model, f"{describe(settings)}; test accuracy {meta['accuracy']:.1%} (loaded from {directory})"
    except Exception as err:  # pylint: disable=broad-except
      log(f"the cached MLP in {directory} could not be read ({type(err).__name__}); training it again")

  data = datasets.mnist_embedded()
  n = settings["train_size"]
  model = models.mlp(rngs=nnx.Rngs(settings["seed"]))
  training.train_classifier(  # plain SGD, as the paper
    model, data.x_train[:n], data.y_train[:n], epochs=settings["epochs"],
    batch_size=settings["batch_size"], learning_rate=settings["learning_rate"],
    key=jax.random.key(settings["seed"]), progress=progress, description="training the MNIST MLP")
  model.eval()
  accuracy = training.evaluate(model, data.x_test, data.y_test)
  where = "not cached"
  if use_cache:
    try:
      directory.mkdir(parents=True, exist_ok=True)
      training.save_model(checkpoint, model, overwrite=True)
      meta_file.write_text(json.dumps({"settings": settings, "accuracy": accuracy}, indent=2))
      where = f"cached in {directory}"
    except OSError as err:
      log(f"could not cache the trained MLP in {directory} ({err}); it will be trained again next time")
  return model, f"{describe(settings)}; test accuracy {accuracy:.1%} (trained now, {where})"
