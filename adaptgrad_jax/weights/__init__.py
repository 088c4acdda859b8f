"""Reading checkpoints safely and fetching torchvision's pretrained weights.

`read_checkpoint` reads PyTorch, safetensors and NumPy files without torch and
without running any code, in memory and time bounded by the file's size and
the tensors it declares; `pretrained` downloads verified files into a cache
that concurrent callers cannot corrupt.
"""

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
