"""Training-pipeline throughput at Cityscapes resolution, by worker count.

Writes a fake Cityscapes folder (synthetic scenes as 1024x2048 PNGs with labelIds), then times
the full training augmentation (PNG decode, labelId mapping, random scale 0.5-2.0 bicubic,
pad, crop 1024x2048, flip, colour jitter, normalisation, class-uniform sampling) through the
Grain pipeline for each worker count. Results go to a JSON file.

    python benchmarks/data_pipeline.py --workers 0 1 2 --batches 12 --out benchmarks/results/data_pipeline.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout


def ensure_fake_cityscapes(root: str, images: int, height: int, width: int) -> str:
    """A fake Cityscapes folder at `root` (a new temporary one if empty); written once."""
    from hmsa_jax.data.fake_layouts import write_fake_cityscapes

    root = root or tempfile.mkdtemp(prefix="hmsa_bench_cityscapes_")
    if not os.path.isdir(os.path.join(root, "leftImg8bit", "train")):
        started = time.perf_counter()
        write_fake_cityscapes(root, {"train": images}, height=height, width=width)
        print(f"wrote {images} fake {height}x{width} images in "
              f"{time.perf_counter() - started:.1f}s to {root}")
    return root


def training_data_config(root: str, crop: tuple[int, int], batch: int, read_threads: int,
                         normalize: bool = True):
    """The training recipe's data config on the fake Cityscapes folder."""
    from hmsa_jax.data.config import default_data_config

    data = default_data_config()
    data.dataset, data.root = "cityscapes", root
    data.augment.crop_size = tuple(crop)
    data.augment.normalize = normalize
    data.class_uniform.update(fraction=0.5, tile_size=1024, cache_dir=os.path.join(root, "cache"))
    data.loader.update(batch_size=batch, read_threads=read_threads, prefetch=2)
    return data


def measure_pipeline(data, workers: int, warmup: int, batches: int) -> tuple[float, dict]:
    """(images/s over `batches` batches after `warmup` untimed ones, the last batch)."""
    from hmsa_jax.data import build

    data.loader.num_workers = workers
    dataset, _ = build.make_train_dataset(data, process_index=0, process_count=1)
    iterator = iter(dataset)
    for _ in range(warmup):
        next(iterator)
    started = time.perf_counter()
    for _ in range(batches):
        batch = next(iterator)
    seconds = time.perf_counter() - started
    if hasattr(iterator, "close"):
        iterator.close()
    return batches * data.loader.batch_size / seconds, batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--images", type=int, default=8, help="images in the fake dataset")
    parser.add_argument("--batch", type=int, default=2, help="images per batch")
    parser.add_argument("--batches", type=int, default=12, help="timed batches per setting")
    parser.add_argument("--warmup", type=int, default=2, help="untimed batches first")
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--read-threads", type=int, default=2)
    parser.add_argument("--data-dir", default="", help="reuse/keep the fake dataset here")
    parser.add_argument("--out", default="benchmarks/results/data_pipeline.json")
    args = parser.parse_args()

    from absl import flags

    flags.FLAGS.mark_as_parsed()
    root = ensure_fake_cityscapes(args.data_dir, args.images, args.height, args.width)
    data = training_data_config(root, (args.height, args.width), args.batch, args.read_threads)
    results = []
    for workers in args.workers:
        rate, batch = measure_pipeline(data, workers, args.warmup, args.batches)
        print(f"workers={workers} read_threads={args.read_threads}: {rate:.2f} images/s "
              f"({args.batch / rate:.2f} s per batch of {args.batch}), "
              f"batch image {batch['image'].shape} {batch['image'].dtype}")
        results.append({"workers": workers, "read_threads": args.read_threads,
                        "images_per_s": round(rate, 3), "batches": args.batches,
                        "batch_size": args.batch})
    report = {"benchmark": "data_pipeline", "resolution": [args.height, args.width],
              "augmentation": "scale 0.5-2.0 bicubic, pad, crop, flip, jitter 0.25, normalise, "
                              "class-uniform 0.5, PNG decode + labelId mapping",
              "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
              "date": time.strftime("%Y-%m-%d"), "results": results}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
