"""Datasets: MNIST from the standard files or the cache, and an embedded subset."""

from adaptgrad_jax.datasets._idx import read_idx as read_idx
from adaptgrad_jax.datasets._idx import write_idx as write_idx
from adaptgrad_jax.datasets._mnist import MNIST as MNIST
from adaptgrad_jax.datasets._mnist import cache_dir as cache_dir
from adaptgrad_jax.datasets._mnist import download_mnist as download_mnist
from adaptgrad_jax.datasets._mnist import mnist as mnist
from adaptgrad_jax.datasets._mnist import mnist_embedded as mnist_embedded

__all__ = (
    "MNIST",
    "cache_dir",
    "download_mnist",
    "mnist",
    "mnist_embedded",
    "read_idx",
    "write_idx",
)
