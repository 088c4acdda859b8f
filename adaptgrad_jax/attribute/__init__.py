"""Batch attribution of whole datasets over devices and hosts, streamed to disk.

``attribute`` explains every example of an array or an iterable of batches on
a ``jax.sharding.Mesh`` of this process's devices and writes resumable,
checksummed ``.npy`` shards (one process per output directory, a lock says
so; a resume with another explanation or other settings is refused);
``attribute_multihost`` spreads the examples over the processes of a
multi-host job (TPU pods, multi-GPU clusters).
"""

from adaptgrad_jax.attribute._attribute import attribute as attribute
from adaptgrad_jax.attribute._attribute import local_mesh as local_mesh
from adaptgrad_jax.attribute._attribute import sample_mean as sample_mean
from adaptgrad_jax.attribute._attribute import SampleMean as SampleMean
from adaptgrad_jax.attribute._multihost import attribute_multihost as attribute_multihost
from adaptgrad_jax.attribute._multihost import initialize_distributed as initialize_distributed
from adaptgrad_jax.attribute._multihost import merge_process_outputs as merge_process_outputs
from adaptgrad_jax.attribute._multihost import process_range as process_range
from adaptgrad_jax.attribute._shards import AttributionResult as AttributionResult
from adaptgrad_jax.attribute._shards import load_attributions as load_attributions

__all__ = (
    "AttributionResult",
    "SampleMean",
    "attribute",
    "attribute_multihost",
    "initialize_distributed",
    "load_attributions",
    "local_mesh",
    "merge_process_outputs",
    "process_range",
    "sample_mean",
)
