"""Segmentation models: HRNet-OCR and ResNet-50 DeepLabV3+, with or without scale attention."""
from hmsa_jax.models.inference import make_predict_fn
from hmsa_jax.models.registry import count_params, create_model, list_models
from hmsa_jax.models.segmenter import DeepLabV3Plus, MultiScaleSegmenter, OCRNet

__all__ = ["create_model", "list_models", "count_params", "make_predict_fn", "OCRNet", "DeepLabV3Plus",
           "MultiScaleSegmenter"]
