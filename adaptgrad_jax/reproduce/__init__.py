"""Reproductions of the AdaptGrad paper's experiments.

``python -m adaptgrad_jax.reproduce table1|table2|inherent-noise [--quick]``
runs them from the command line (:func:`main`); the functions below return
result objects that print rich tables (``.print()``) and dump JSON and
markdown (``.to_dict()``, ``.to_markdown()``).

* :func:`table1`: Table 1, Consistency and Invariance of Grad, SG, AG, NG,
  S-NG, A-NG on MNIST MLPs.
* :func:`table2`: Table 2 style Sparseness and Information Level on the
  bundled photos with OUR pretrained EfficientNet-Lite0 (not the paper's
  VGG16 / InceptionV3 / ResNet50).
* :func:`inherent_noise_experiment`: Section 3.2's out-of-range rates of
  SmoothGrad and AdaptGrad noise on photos in ImageNet normalisation.
"""

from adaptgrad_jax.reproduce._cli import main as main
from adaptgrad_jax.reproduce._inherent_noise import PAPER_INHERENT_NOISE as PAPER_INHERENT_NOISE
from adaptgrad_jax.reproduce._inherent_noise import QUICK_INHERENT_NOISE as QUICK_INHERENT_NOISE
from adaptgrad_jax.reproduce._inherent_noise import InherentNoiseConfig as InherentNoiseConfig
from adaptgrad_jax.reproduce._inherent_noise import InherentNoiseResult as InherentNoiseResult
from adaptgrad_jax.reproduce._inherent_noise import imagenet_photo_batch as imagenet_photo_batch
from adaptgrad_jax.reproduce._inherent_noise import inherent_noise_experiment as inherent_noise_experiment
from adaptgrad_jax.reproduce._table1 import METHODS as METHODS
from adaptgrad_jax.reproduce._table1 import PAPER_TABLE1 as PAPER_TABLE1
from adaptgrad_jax.reproduce._table1 import QUICK_TABLE1 as QUICK_TABLE1
from adaptgrad_jax.reproduce._table1 import Table1Config as Table1Config
from adaptgrad_jax.reproduce._table1 import Table1Result as Table1Result
from adaptgrad_jax.reproduce._table1 import released_sigma as released_sigma
from adaptgrad_jax.reproduce._table1 import table1 as table1
from adaptgrad_jax.reproduce._table1 import table1_explainers as table1_explainers
from adaptgrad_jax.reproduce._table2 import PAPER_TABLE2 as PAPER_TABLE2
from adaptgrad_jax.reproduce._table2 import QUICK_TABLE2 as QUICK_TABLE2
from adaptgrad_jax.reproduce._table2 import TABLE2_METHODS as TABLE2_METHODS
from adaptgrad_jax.reproduce._table2 import Table2Config as Table2Config
from adaptgrad_jax.reproduce._table2 import Table2Result as Table2Result
from adaptgrad_jax.reproduce._table2 import table2 as table2
from adaptgrad_jax.reproduce._table2 import table2_explainers as table2_explainers

__all__ = (
    "InherentNoiseConfig",
    "InherentNoiseResult",
    "METHODS",
    "PAPER_INHERENT_NOISE",
    "PAPER_TABLE1",
    "PAPER_TABLE2",
    "QUICK_INHERENT_NOISE",
    "QUICK_TABLE1",
    "QUICK_TABLE2",
    "TABLE2_METHODS",
    "Table1Config",
    "Table1Result",
    "Table2Config",
    "Table2Result",
    "imagenet_photo_batch",
    "inherent_noise_experiment",
    "main",
    "released_sigma",
    "table1",
    "table1_explainers",
    "table2",
    "table2_explainers",
)
