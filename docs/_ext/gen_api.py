"""Regenerates docs/api/*.md: one ``::: module.name`` entry per public name (``__all__``).

Run ``python docs/_ext/gen_api.py`` after adding a public name; tests/test_docs.py
fails until every public name has an entry.
"""

import importlib
import pathlib

OUT = pathlib.Path(__file__).resolve().parents[1] / "api"
PAGES = {
    "core.md": ("Core transforms", ["adaptgrad_jax"],
                "The top level of `adaptgrad_jax`: the transforms, the sigma rules and the helpers around them. "
                "Everything here is re-exported from private modules; import it as `import adaptgrad_jax as ag`."),
    "cpu.md": ("adaptgrad_jax.cpu", ["adaptgrad_jax.cpu"],
               "The CPU switch and what it does to a program. The [performance guide](../performance.md) has "
               "the measurements."),
    "metrics.md": ("adaptgrad_jax.metrics", ["adaptgrad_jax.metrics"],
                   "Metrics for explanation maps. The [metrics guide](../metrics.md) says which to use for what."),
    "models.md": ("adaptgrad_jax.models", ["adaptgrad_jax.models"],
                  "Flax NNX ports of torchvision's classifiers, the paper's MNIST MLP, preprocessing and bounds. "
                  "The [models guide](../models.md) explains the conventions."),
    "weights.md": ("adaptgrad_jax.weights", ["adaptgrad_jax.weights"],
                   "Reading checkpoints without torch and fetching torchvision's pretrained files."),
    "attribute.md": ("adaptgrad_jax.attribute", ["adaptgrad_jax.attribute"],
                     "Explaining whole datasets on many devices and hosts. See the [guide](../scale-out.md)."),
    "viz.md": ("adaptgrad_jax.viz", ["adaptgrad_jax.viz"], "Turning maps into pictures. See the [guide](../viz.md)."),
    "adapters.md": ("Flax and Equinox adapters", ["adaptgrad_jax.flax_adapters", "adaptgrad_jax.equinox_adapters"],
                    "Turning a model and a target into the scalar function of one example that the transforms "
                    "differentiate."),
}


def main() -> None:
  for fname, (title, modules, intro) in PAGES.items():
    lines = [f"# {title}", "", intro, ""]
    for module_name in modules:
      module = importlib.import_module(module_name)
      if len(modules) > 1:
        lines += [f"## `{module_name}`", ""]
      lines += [f"::: {module_name}", "    options:", "      members: false", "      show_root_heading: false", ""]
      for name in module.__all__:
        if module_name == "adaptgrad_jax" and name == "cpu":
          lines += ["`adaptgrad_jax.cpu`: the CPU switch, see [its page](cpu.md).", ""]
          continue
        lines += [f"::: {module_name}.{name}", ""]
    (OUT / fname).write_text("\n".join(lines), encoding="utf-8")


if __name__ == "__main__":
  main()
