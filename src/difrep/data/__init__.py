"""Data sets and transforms."""

from .fashion_mnist import DEBIAN_FASHION_MNIST, load_fashion_mnist, read_idx

__all__ = ["DEBIAN_FASHION_MNIST", "load_fashion_mnist", "read_idx"]
