"""Data: sources (Cityscapes, Mapillary, TFDS, folders, synthetic), transforms, class-uniform
sampling, and Grain pipelines for training and evaluation. See pipeline.py for the entry points.
"""
from hmsa_jax.data.errors import DataError
from hmsa_jax.data.labels import IGNORE_LABEL, IMAGENET_MEAN, IMAGENET_STD, ClassTable

__all__ = ["DataError", "IGNORE_LABEL", "IMAGENET_MEAN", "IMAGENET_STD", "ClassTable"]
