"""The paper's scale-scheme ablation (Table 1): ResNet-50 DeepLabV3+ on Cityscapes.

Presets (all train on two scales except `single`):
  single        one scale (1.0), evaluated at 1.0
  average       the model run at 0.5 and 1.0, logits averaged (no attention)
  explicit      explicit attention over 0.5 / 1.0 / 2.0 (Chen et al. 2016)
  hierarchical  the paper's hierarchical attention, trained on 0.5 / 1.0 (default)
Validation uses each scheme's own inference: single -> 1.0, average -> avg of 0.5/1.0/2.0,
explicit -> its training scales, hierarchical -> 0.5/1.0/2.0.
Cross-entropy and no class-uniform sampling keep the comparison about the scale scheme.
"""
import importlib.util
import os

PRESETS = {
    "single": dict(name="resnet50_deeplabv3plus", scale_mode="model", scales=(1.0,), fusion="avg"),
    "average": dict(name="resnet50_deeplabv3plus", scale_mode="average", scales=(0.5, 1.0, 2.0),
                    fusion="avg"),
    "explicit": dict(name="resnet50_deeplabv3plus_explicit", scale_mode="model", scales=(1.0,),
                     fusion="avg"),
    "hierarchical": dict(name="resnet50_deeplabv3plus_mscale", scale_mode="model",
                         scales=(0.5, 1.0, 2.0), fusion="hierarchical"),
}


def get_config(arg=None):
    preset = arg or "hierarchical"
    if preset not in PRESETS:
        raise ValueError(f"configs/cityscapes_ablation.py: unknown preset {preset!r}; expected "
                         f"one of {', '.join(PRESETS)}")
    recipe = PRESETS[preset]
    config = _load_sibling("cityscapes.py").get_config("default")  # the same data section
    config.data.class_uniform.fraction = 0.0
    config.model.name = recipe["name"]
    config.train.scale_mode = recipe["scale_mode"]
    config.train.criterion = "ce"
    config.train.aux_weight = 0.0  # DeepLabV3+ has no auxiliary head
    config.optim.learning_rate = 1e-2
    config.validation.scales = recipe["scales"]
    config.validation.fusion = recipe["fusion"]
    return config


def _load_sibling(filename):
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), filename)
    spec = importlib.util.spec_from_file_location(f"hmsa_config_{filename[:-3]}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
