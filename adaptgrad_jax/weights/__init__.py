"""Reading checkpoints safely (no torch, no pickle code) and fetching torchvision's pretrained weights."""

from adaptgrad_jax.weights._checkpoint import CheckpointError as CheckpointError
from adaptgrad_jax.weights._checkpoint import UnsafeCheckpointError as UnsafeCheckpointError
from adaptgrad_jax.weights._checkpoint import read_checkpoint as read_checkpoint
from adaptgrad_jax.weights._pretrained import TORCHVISION_URLS as TORCHVISION_URLS
from adaptgrad_jax.weights._pretrained import default_cache_dir as default_cache_dir
from adaptgrad_jax.weights._pretrained import pretrained as pretrained

__all__ = [
  "CheckpointError",
  "TORCHVISION_URLS",
  "UnsafeCheckpointError",
  "default_cache_dir",
  "pretrained",
  "read_checkpoint",
]
