"""adaptgrad-jax: AdaptGrad and other gradient-smoothing explanations as JAX transforms.

The core is a handful of function transforms in the style of ``jax.grad``:
``adapt_smooth(jax.grad(f), c, n, bounds=(x_min, x_max))`` returns
``smoothed(key, x)``.
"""

from adaptgrad_jax._attribution import completeness_gap as completeness_gap
from adaptgrad_jax._attribution import gradient_x_input as gradient_x_input
from adaptgrad_jax._attribution import integrated_gradients as integrated_gradients
from adaptgrad_jax._bounds import check_bounds as check_bounds
from adaptgrad_jax._ig_family import blur_integrated_gradients as blur_integrated_gradients
from adaptgrad_jax._ig_family import expected_gradients as expected_gradients
from adaptgrad_jax._ig_family import gaussian_blur as gaussian_blur
from adaptgrad_jax._ig_family import guided_integrated_gradients as guided_integrated_gradients
from adaptgrad_jax._ig_family import idgi as idgi
from adaptgrad_jax._memory import AutoBatchSize as AutoBatchSize
from adaptgrad_jax._monte_carlo import Estimate as Estimate
from adaptgrad_jax._monte_carlo import relative_error as relative_error
from adaptgrad_jax._memory import auto_batch_size as auto_batch_size
from adaptgrad_jax._noisegrad import noise_grad as noise_grad
from adaptgrad_jax._inherent_noise import OutOfRange as OutOfRange
from adaptgrad_jax._sigma import adaptive_sigma as adaptive_sigma
from adaptgrad_jax._inherent_noise import inherent_noise as inherent_noise
from adaptgrad_jax._inherent_noise import out_of_range_rate as out_of_range_rate
from adaptgrad_jax._sigma import smoothgrad_sigma as smoothgrad_sigma
from adaptgrad_jax._smoothing import adapt_smooth as adapt_smooth
from adaptgrad_jax._smoothing import gaussian_smooth as gaussian_smooth
from adaptgrad_jax._smoothing import smooth_grad as smooth_grad
from adaptgrad_jax._smooth_diff import moment_smooth as moment_smooth
from adaptgrad_jax._smooth_diff import smooth_diff as smooth_diff
from adaptgrad_jax._wrapping import is_stochastic as is_stochastic
from adaptgrad_jax._wrapping import stochastic as stochastic
from adaptgrad_jax import cpu as cpu

__version__ = "0.2.0"

__all__ = (
    "blur_integrated_gradients",
    "expected_gradients",
    "gaussian_blur",
    "guided_integrated_gradients",
    "idgi",
    "AutoBatchSize",
    "Estimate",
    "OutOfRange",
    "adapt_smooth",
    "adaptive_sigma",
    "auto_batch_size",
    "check_bounds",
    "cpu",
    "completeness_gap",
    "gaussian_smooth",
    "gradient_x_input",
    "inherent_noise",
    "integrated_gradients",
    "is_stochastic",
    "moment_smooth",
    "noise_grad",
    "out_of_range_rate",
    "relative_error",
    "smooth_diff",
    "smooth_grad",
    "smoothgrad_sigma",
    "stochastic",
)
