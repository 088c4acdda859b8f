"""Metrics for explanation maps: the AdaptGrad paper's and Quantus-style ones.

Sanity checks (Consistency, Invariance), Sparseness, Information Level
(XRAI's Performance Information Curves), deletion / insertion, faithfulness
correlation and localisation; robustness (Max- / Avg-Sensitivity, Local
Lipschitz Estimate, Relative Input / Output Stability), Infidelity,
Completeness, Complexity and randomisation tests (Random Logit, smooth and
efficient MPRT). Metrics on maps score ONE map; the metrics that take an
explainer ``explain_fn(key, x, ...)`` score ONE input (the MPRT family one
batch), and the paired tests one pair of batches; use ``jax.vmap`` over a
batch where the metric is a pure JAX function (sparseness, rank_correlation, deletion, insertion,
faithfulness_correlation, pointing_game, energy_localisation).

One runner, :func:`evaluate`, scores every explainer with every metric over
a dataset (maps through ``attribute``: sharded, resumable) and summarises
the per-example scores with bootstrap confidence intervals
(:func:`bootstrap_ci`) and paired sign-flip permutation tests
(:func:`paired_test`).
"""

from adaptgrad_jax.metrics._completeness import completeness as completeness
from adaptgrad_jax.metrics._complexity import complexity as complexity
from adaptgrad_jax.metrics._correlation import abs_scale as abs_scale
from adaptgrad_jax.metrics._correlation import average_ranks as average_ranks
from adaptgrad_jax.metrics._correlation import no_abs_scale as no_abs_scale
from adaptgrad_jax.metrics._correlation import rank_correlation as rank_correlation
from adaptgrad_jax.metrics._evaluate import METRIC_NAMES as METRIC_NAMES
from adaptgrad_jax.metrics._evaluate import Comparison as Comparison
from adaptgrad_jax.metrics._evaluate import Evaluation as Evaluation
from adaptgrad_jax.metrics._evaluate import ExampleSkipped as ExampleSkipped
from adaptgrad_jax.metrics._evaluate import Metric as Metric
from adaptgrad_jax.metrics._evaluate import SummaryRow as SummaryRow
from adaptgrad_jax.metrics._evaluate import evaluate as evaluate
from adaptgrad_jax.metrics._faithfulness import CurveResult as CurveResult
from adaptgrad_jax.metrics._faithfulness import deletion as deletion
from adaptgrad_jax.metrics._faithfulness import faithfulness_correlation as faithfulness_correlation
from adaptgrad_jax.metrics._faithfulness import insertion as insertion
from adaptgrad_jax.metrics._information import PAPER_THRESHOLDS as PAPER_THRESHOLDS
from adaptgrad_jax.metrics._information import XRAI_THRESHOLDS as XRAI_THRESHOLDS
from adaptgrad_jax.metrics._information import PicResult as PicResult
from adaptgrad_jax.metrics._information import PicSkipped as PicSkipped
from adaptgrad_jax.metrics._information import blurred_image as blurred_image
from adaptgrad_jax.metrics._information import estimate_image_entropy as estimate_image_entropy
from adaptgrad_jax.metrics._information import information_level as information_level
from adaptgrad_jax.metrics._information import performance_information_curve as performance_information_curve
from adaptgrad_jax.metrics._information import random_pixel_mask as random_pixel_mask
from adaptgrad_jax.metrics._invariance import invariance as invariance
from adaptgrad_jax.metrics._invariance import shift_first_layer_bias as shift_first_layer_bias
from adaptgrad_jax.metrics._localisation import energy_localisation as energy_localisation
from adaptgrad_jax.metrics._localisation import pointing_game as pointing_game
from adaptgrad_jax.metrics._localisation import region_mask as region_mask
from adaptgrad_jax.metrics._randomisation import consistency as consistency
from adaptgrad_jax.metrics._randomisation import efficient_mprt as efficient_mprt
from adaptgrad_jax.metrics._randomisation import random_logit as random_logit
from adaptgrad_jax.metrics._randomisation import smooth_mprt as smooth_mprt
from adaptgrad_jax.metrics._randomisation import ssim_1d as ssim_1d
from adaptgrad_jax.metrics._randomisation import model_parameter_randomisation as model_parameter_randomisation
from adaptgrad_jax.metrics._randomisation import randomise_layer as randomise_layer
from adaptgrad_jax.metrics._robustness import GaussianNoise as GaussianNoise
from adaptgrad_jax.metrics._robustness import UniformNoise as UniformNoise
from adaptgrad_jax.metrics._robustness import avg_sensitivity as avg_sensitivity
from adaptgrad_jax.metrics._robustness import gaussian_noise as gaussian_noise
from adaptgrad_jax.metrics._robustness import infidelity as infidelity
from adaptgrad_jax.metrics._robustness import local_lipschitz_estimate as local_lipschitz_estimate
from adaptgrad_jax.metrics._robustness import max_sensitivity as max_sensitivity
from adaptgrad_jax.metrics._robustness import relative_input_stability as relative_input_stability
from adaptgrad_jax.metrics._robustness import relative_output_stability as relative_output_stability
from adaptgrad_jax.metrics._robustness import sensitivity as sensitivity
from adaptgrad_jax.metrics._robustness import uniform_noise as uniform_noise
from adaptgrad_jax.metrics._sparseness import sparseness as sparseness
from adaptgrad_jax.metrics._statistics import ConfidenceInterval as ConfidenceInterval
from adaptgrad_jax.metrics._statistics import PairedTest as PairedTest
from adaptgrad_jax.metrics._statistics import bootstrap_ci as bootstrap_ci
from adaptgrad_jax.metrics._statistics import bootstrap_indices as bootstrap_indices
from adaptgrad_jax.metrics._statistics import paired_test as paired_test

__all__ = (
    "Comparison",
    "ConfidenceInterval",
    "CurveResult",
    "Evaluation",
    "ExampleSkipped",
    "GaussianNoise",
    "METRIC_NAMES",
    "Metric",
    "PAPER_THRESHOLDS",
    "PairedTest",
    "PicResult",
    "PicSkipped",
    "SummaryRow",
    "UniformNoise",
    "XRAI_THRESHOLDS",
    "abs_scale",
    "average_ranks",
    "avg_sensitivity",
    "blurred_image",
    "bootstrap_ci",
    "bootstrap_indices",
    "completeness",
    "complexity",
    "consistency",
    "deletion",
    "efficient_mprt",
    "energy_localisation",
    "estimate_image_entropy",
    "evaluate",
    "faithfulness_correlation",
    "gaussian_noise",
    "infidelity",
    "information_level",
    "insertion",
    "invariance",
    "local_lipschitz_estimate",
    "max_sensitivity",
    "model_parameter_randomisation",
    "no_abs_scale",
    "paired_test",
    "performance_information_curve",
    "pointing_game",
    "random_logit",
    "random_pixel_mask",
    "randomise_layer",
    "rank_correlation",
    "region_mask",
    "relative_input_stability",
    "relative_output_stability",
    "sensitivity",
    "shift_first_layer_bias",
    "smooth_mprt",
    "sparseness",
    "ssim_1d",
    "uniform_noise",
)
