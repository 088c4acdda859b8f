"""Toy explanations for tests/test_attribute.py, and a subprocess entry point.

Run as ``python tests/_attribute_worker.py SPEC_JSON``; the spec's ``mode``:

* ``"devices"``: explain the toy data with several batch sizes and meshes on
  however many devices XLA_FLAGS forces, saving each result under ``out``;
* ``"multihost"``: join a 2-process CPU job on 127.0.0.1 (gloo collectives)
  and run ``attribute_multihost``;
* ``"hold"``: run ``attribute`` on ``out`` with an iterable that, after
  ``pause_after`` batches, creates the file ``paused`` and waits for the file
  ``go`` (so a test can act while this run holds ``out``), then prints the
  fingerprint of ``noisy_grad``.
"""

import json
import os
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))

D_IN, D_HID, D_OUT = 12, 16, 3


def mlp_params():
  rng = np.random.default_rng(0)
  return (rng.normal(size=(D_IN, D_HID)).astype(np.float32) / np.sqrt(D_IN),
          rng.normal(size=(D_HID, D_OUT)).astype(np.float32) / np.sqrt(D_HID))


def logit(x, target=1):
  w1, w2 = mlp_params()
  return (jnp.tanh(x @ w1) @ w2)[target]


def noisy_grad(key, x):
  """One noisy gradient (a toy one-sample explanation)."""
  return jax.grad(logit)(x + 0.1 * jax.random.normal(key, x.shape))


def toy_data(n):
  return np.random.default_rng(1).uniform(size=(n, D_IN)).astype(np.float32)


def explain_fns():
  from adaptgrad_jax import adapt_smooth
  from adaptgrad_jax.attribute import sample_mean
  return {
      "noisy_grad": noisy_grad,
      "adapt_smooth": adapt_smooth(jax.grad(logit), 0.95, 4,
                                   bounds=(0.0, 1.0)),
      "sample_mean": sample_mean(noisy_grad, 4),
  }


def _devices(spec):
  from adaptgrad_jax.attribute import attribute, local_mesh
  fns = explain_fns()
  xs = toy_data(spec["num_examples"])
  key = jax.random.key(spec["seed"])
  out = pathlib.Path(spec["out"])
  info = {"device_count": jax.device_count()}
  for run in spec["runs"]:
    mesh = None
    if run.get("samples"):
      mesh = local_mesh(samples=run["samples"])
    elif run.get("mesh"):
      mesh = jax.make_mesh(tuple(run["mesh"]), tuple(run["axes"]),
                           devices=jax.local_devices())
    res = attribute(fns[run["fn"]], key, xs, batch_size=run["batch_size"],
                    mesh=mesh, sample_axis=run.get("sample_axis"),
                    out=out / run["name"] if run.get("disk") else None,
                    progress=False)
    np.save(out / f"{run['name']}.npy", np.asarray(res))
  (out / "info.json").write_text(json.dumps(info))


def _multihost(spec):
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.config.update("jax_num_cpu_devices", spec["local_devices"])
  from adaptgrad_jax.attribute import attribute_multihost, initialize_distributed
  initialize_distributed(f"127.0.0.1:{spec['port']}", 2, spec["process_id"])
  res = attribute_multihost(
      noisy_grad, jax.random.key(spec["seed"]), toy_data(spec["num_examples"]),
      out=spec["out"], batch_size=spec["batch_size"], progress=False)
  # Every process sees the merged result after the barrier.
  print(json.dumps({"process": jax.process_index(), "shape": list(res.shape),
                    "local_devices": len(jax.local_devices()),
                    "global_devices": jax.device_count()}), flush=True)
  jax.distributed.shutdown()


def _hold(spec):
  from adaptgrad_jax.attribute import attribute
  from adaptgrad_jax.attribute._identity import fingerprint
  xs = toy_data(spec["num_examples"])
  b = spec["batch_size"]

  def batches():
    for i, start in enumerate(range(0, len(xs), b)):
      if i == spec["pause_after"]:
        pathlib.Path(spec["paused"]).touch()
        deadline = time.monotonic() + 120
        while not pathlib.Path(spec["go"]).exists():
          if time.monotonic() > deadline:
            raise TimeoutError("the test never created the go file")
          time.sleep(0.02)
      yield xs[start:start + b]

  # The module imported by its name, as the test process has it (this file
  # runs as __main__, and a function's module is part of its identity).
  import _attribute_worker  # pylint: disable=import-outside-toplevel
  fn = _attribute_worker.noisy_grad
  res = attribute(fn, jax.random.key(spec["seed"]), batches(),
                  out=spec["out"], batch_size=b, progress=False)
  print(json.dumps({"shape": list(res.shape),
                    "fingerprint": fingerprint(fn).digest}), flush=True)


if __name__ == "__main__":
  spec = json.loads(sys.argv[1])
  {"devices": _devices, "multihost": _multihost, "hold": _hold}[spec["mode"]](
      spec)
