"""From the `data` config section to sources and Grain pipelines: what the training loop calls.

    train_ds, info = make_train_dataset(config.data)         # endless, this process's batches
    iterator = iter(train_ds)                                 # a grain DatasetIterator
    eval_ds, num_batches = make_eval_dataset(config.data)     # one pass, padded, `valid` mask
"""
from __future__ import annotations

import dataclasses
import os

import grain

from hmsa_jax.data import labels as label_tables
from hmsa_jax.data import pipeline, transforms
from hmsa_jax.data.class_uniform import load_or_compute_centroids
from hmsa_jax.data.config import DATASETS
from hmsa_jax.data.errors import DataError
from hmsa_jax.data.labels import ClassTable
from hmsa_jax.data.sources import (ConcatSource, ScaleBenchScenes, Source, SyntheticScenes,
                                   TfdsSource, autolabel_source, cityscapes_source, folder_source,
                                   mapillary_source, synthetic_classes)


def _root(data) -> str:
    if not data.root:
        raise DataError(f"data.root is empty; dataset {data.dataset!r} needs its root folder")
    return os.path.expanduser(data.root)


def build_source(data, split: str, role: str = "train") -> Source:
    """The source for `split` of data.dataset (`role` picks the synthetic split's size/seed)."""
    name = data.dataset
    if name == "synthetic":
        s = data.synthetic
        return SyntheticScenes(s.num_train if role == "train" else s.num_eval, s.height, s.width,
                               s.num_classes, s.seed, split)
    if name == "scale_bench":
        s = data.scale_bench
        return ScaleBenchScenes(s.num_train if role == "train" else s.num_eval, s.height, s.width,
                                s.seed, split, s.distractor)
    if name == "cityscapes":
        return cityscapes_source(_root(data), split, data.cityscapes.label_kind,
                                 data.cityscapes.label_format)
    if name == "cityscapes_tfds":
        t = data.tfds
        lut = (label_tables.cityscapes_label_id_lut() if t.label_format == "labelIds"
               else label_tables.cityscapes_train_id_lut())
        return TfdsSource(t.name, split, t.data_dir or None, t.image_key, t.label_key,
                          t.id_key or None, lut=lut, table_name=f"Cityscapes {t.label_format}")
    if name == "mapillary":
        return mapillary_source(_root(data), split, data.mapillary.long_edge or None)
    if name == "folder":
        root, f = _root(data), data.folder
        return folder_source(os.path.join(root, f.images.format(split=split)),
                             os.path.join(root, f.masks.format(split=split)),
                             os.path.join(root, f.classes_file), f.ignore_value)
    raise DataError(f"data.dataset={name!r}; expected one of {DATASETS}")


def build_autolabel_source(data, classes: ClassTable) -> Source | None:
    a = data.autolabel
    if not a.labels_dir:
        return None
    if not a.images_root:
        raise DataError("data.autolabel.labels_dir is set but data.autolabel.images_root is empty")
    return autolabel_source(os.path.expanduser(a.images_root), os.path.expanduser(a.labels_dir), classes)


def augment_config(data) -> transforms.AugmentConfig:
    a = data.augment
    return transforms.AugmentConfig(
        crop_size=tuple(int(v) for v in a.crop_size), scale_range=(a.scale_min, a.scale_max),
        flip_prob=a.flip_prob, brightness=a.brightness, contrast=a.contrast,
        saturation=a.saturation, hue=a.hue, blur_prob=a.blur_prob,
        blur_sigma=(a.blur_sigma_min, a.blur_sigma_max), normalize=a.normalize)


@dataclasses.dataclass(frozen=True)
class TrainInfo:
    classes: ClassTable
    num_records: int  # fine records (an epoch's default size)
    num_extra: int  # auto-labelled records
    epoch_size: int
    steps_per_epoch: int  # global batches per epoch
    num_centroids: int


def make_train_dataset(data, *, process_index: int | None = None,
                       process_count: int | None = None) -> tuple[grain.IterDataset, TrainInfo]:
    fine = build_source(data, data.train_split, "train")
    extra = build_autolabel_source(data, fine.classes)
    source = fine if extra is None else ConcatSource([fine, extra])
    centroids = None
    if data.class_uniform.fraction > 0:
        centroids = load_or_compute_centroids(source, data.class_uniform.tile_size,
                                              data.class_uniform.cache_dir or None,
                                              data.class_uniform.num_workers)
    epoch_size = data.loader.epoch_size or len(fine)
    dataset = pipeline.train_dataset(
        source, augment_config(data), global_batch_size=data.loader.batch_size, seed=data.seed,
        epoch_size=epoch_size, num_primary=len(fine), centroids=centroids,
        class_uniform_fraction=data.class_uniform.fraction,
        extra_probability=data.autolabel.probability if extra is not None else 0.0,
        process_index=process_index, process_count=process_count,
        num_workers=data.loader.num_workers, read_threads=data.loader.read_threads,
        prefetch=data.loader.prefetch)
    info = TrainInfo(fine.classes, len(fine), 0 if extra is None else len(extra), epoch_size,
                     max(1, epoch_size // data.loader.batch_size),
                     0 if centroids is None else len(centroids))
    return dataset, info


def make_eval_dataset(data, *, split: str | None = None, process_index: int | None = None,
                      process_count: int | None = None) -> tuple[grain.IterDataset, int, Source]:
    """(this process's eval batches, batches per process, the source for names/classes)."""
    source = build_source(data, split or data.eval_split, "eval")
    pad_to = tuple(int(v) for v in data.eval.pad_to)
    dataset, batches = pipeline.eval_dataset(
        source, global_batch_size=data.eval.batch_size, process_index=process_index,
        process_count=process_count, pad_to=pad_to if all(pad_to) else None,
        normalize=data.augment.normalize, num_workers=data.eval.num_workers,
        read_threads=data.eval.read_threads)
    return dataset, batches, source


def class_table(data) -> ClassTable:
    if data.dataset == "synthetic":
        return synthetic_classes(data.synthetic.num_classes)
    if data.dataset == "scale_bench":
        return ScaleBenchScenes.classes
    return build_source(data, data.eval_split, "eval").classes


__all__ = ["TrainInfo", "augment_config", "build_source", "build_autolabel_source",
           "class_table", "make_eval_dataset", "make_train_dataset"]
