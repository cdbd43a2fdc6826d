"""Random-access segmentation sources: one record = {"image", "label", "index"}.

Every source has `len()`, `load(i)` (alias `[i]`), `load_label(i)`, `name(i)`, `classes` and
`fingerprint()`; images are uint8 [H, W, 3] RGB, labels uint8 [H, W] train ids (255 ignore).
"""
from hmsa_jax.data.sources.base import ConcatSource, PairedFileSource, Source
from hmsa_jax.data.sources.cityscapes import cityscapes_source
from hmsa_jax.data.sources.folder import autolabel_source, folder_source
from hmsa_jax.data.sources.mapillary import mapillary_source
from hmsa_jax.data.sources.scale_bench import ScaleBenchScenes
from hmsa_jax.data.sources.synthetic import SyntheticScenes, synthetic_classes
from hmsa_jax.data.sources.tfds_source import TfdsSource

__all__ = [
    "ConcatSource", "PairedFileSource", "ScaleBenchScenes", "Source", "SyntheticScenes", "TfdsSource",
    "autolabel_source", "cityscapes_source", "folder_source", "mapillary_source",
    "synthetic_classes",
]
