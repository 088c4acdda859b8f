"""Metrics for explanation maps: the AdaptGrad paper's and Quantus-style ones.

Sanity checks (Consistency, Invariance), Sparseness, Information Level
(XRAI's Performance Information Curves), deletion / insertion, faithfulness
correlation and localisation. Every metric scores ONE map (or one pair of
batches for the paired tests); use ``jax.vmap`` over a batch where the metric
is a pure JAX function (sparseness, rank_correlation, deletion, insertion,
faithfulness_correlation, pointing_game, energy_localisation).
"""

from adaptgrad_jax.metrics._correlation import abs_scale as abs_scale
from adaptgrad_jax.metrics._correlation import average_ranks as average_ranks
from adaptgrad_jax.metrics._correlation import no_abs_scale as no_abs_scale
from adaptgrad_jax.metrics._correlation import rank_correlation as rank_correlation
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
from adaptgrad_jax.metrics._randomisation import model_parameter_randomisation as model_parameter_randomisation
from adaptgrad_jax.metrics._randomisation import randomise_layer as randomise_layer
from adaptgrad_jax.metrics._sparseness import sparseness as sparseness

__all__ = (
    "CurveResult",
    "PAPER_THRESHOLDS",
    "PicResult",
    "PicSkipped",
    "XRAI_THRESHOLDS",
    "abs_scale",
    "average_ranks",
    "blurred_image",
    "consistency",
    "deletion",
    "energy_localisation",
    "estimate_image_entropy",
    "faithfulness_correlation",
    "information_level",
    "insertion",
    "invariance",
    "model_parameter_randomisation",
    "no_abs_scale",
    "performance_information_curve",
    "pointing_game",
    "random_pixel_mask",
    "randomise_layer",
    "rank_correlation",
    "region_mask",
    "shift_first_layer_bias",
    "sparseness",
)
