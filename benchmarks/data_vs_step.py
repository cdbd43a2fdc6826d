"""Data pipeline throughput against the training step's consumption rate, and both together.

Three figures at one crop and batch: (1) the Grain training pipeline alone (full augmentation
on a fake Cityscapes folder, benchmarks/data_pipeline.py's helpers), (2) the jitted training
step alone on a batch already on the device, (3) the loop a training run executes (next batch
-> global array -> step). If (3) is near min(1, 2) and (1) < (2), the pipeline starves the step.
Also the host->device copy of one batch as float32 (normalised on the host, the default) and as
uint8 (`data.augment.normalize=False`, normalised on the device by `ops.prepare_images`).

    python benchmarks/data_vs_step.py                 # tiny model, 128x256 images, 64x128 crops
    python benchmarks/data_vs_step.py --full          # hrnet48_ocr_mscale, 1024x2048, bf16
"""
from __future__ import annotations

import argparse
import statistics
import time

import common


def time_training_loop(compiled, state, iterator, mesh, key, steps: int, warmup: int = 1) -> float:
    """images/s of next(iterator) -> global_batch -> step, blocked on each step's metrics."""
    import jax

    from hmsa_jax import parallel

    def one(state):
        batch = parallel.global_batch(next(iterator), mesh)
        state, metrics = compiled(state, batch, key)
        jax.block_until_ready(metrics)
        return state, batch["image"].shape[0]

    for _ in range(warmup):
        state, _ = one(state)
    started, images = time.perf_counter(), 0
    for _ in range(steps):
        state, count = one(state)
        images += count
    return images / (time.perf_counter() - started)


def time_host_to_device(batch: dict, repeats: int = 5) -> dict:
    """Median seconds of jax.device_put of the image array, with its size."""
    import jax

    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        jax.block_until_ready(jax.device_put(batch["image"]))
        times.append(time.perf_counter() - started)
    return {"seconds": statistics.median(times), "mib": common.mib(batch["image"].nbytes),
            "dtype": str(batch["image"].dtype)}


def run(model_name, image_size, crop, batch, dtype, workers, steps, data_dir, images) -> dict:
    import jax
    import numpy as np

    import data_pipeline
    import steps as steps_lib
    from hmsa_jax import parallel

    root = data_pipeline.ensure_fake_cityscapes(data_dir, images, *image_size)
    data = data_pipeline.training_data_config(root, crop, batch, read_threads=2)
    data_rate, sample = data_pipeline.measure_pipeline(data, workers, warmup=2, batches=steps)
    uint8_sample = {"image": np.zeros(sample["image"].shape, np.uint8)}  # what normalize=False ships
    copies = {"float32": time_host_to_device(sample), "uint8": time_host_to_device(uint8_sample)}

    spec = steps_lib.StepSpec(model_name, crop[0], crop[1], batch=batch, dtype=dtype)
    step, model, tx, mesh = steps_lib.build_step(spec)
    state = steps_lib.concrete_state(spec, model, tx, mesh)
    device_batch = parallel.global_batch(steps_lib.synthetic_batch(spec), mesh)
    key = jax.random.key(0)
    compiled = step.lower(state, device_batch, key).compile()
    step_timing = {"times": []}
    for i in range(steps + 1):
        started = time.perf_counter()
        state, metrics = compiled(state, device_batch, key)
        jax.block_until_ready(metrics)
        if i:  # the first call is a warm-up
            step_timing["times"].append(time.perf_counter() - started)
    step_rate = batch / statistics.median(step_timing["times"])

    data.loader.num_workers = workers
    from hmsa_jax.data import build

    dataset, _ = build.make_train_dataset(data, process_index=0, process_count=1)
    iterator = iter(dataset)
    loop_rate = time_training_loop(compiled, state, iterator, mesh, key, steps)
    if hasattr(iterator, "close"):
        iterator.close()
    return {"model": model_name, "crop": list(crop), "image_size": list(image_size), "batch": batch,
            "dtype": dtype, "workers": workers, "steps": steps,
            "data_images_per_s": data_rate, "step_images_per_s": step_rate,
            "loop_images_per_s": loop_rate, "data_to_step_ratio": data_rate / step_rate,
            "data_starves_step": data_rate < step_rate,
            "loop_vs_bound": loop_rate / min(data_rate, step_rate),
            "host_to_device": copies}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="default hrnet_tiny_ocr_mscale (--full hrnet48_ocr_mscale)")
    parser.add_argument("--image-size", default=None, help="fake images HxW (default 128x256; --full 1024x2048)")
    parser.add_argument("--crop", default=None, help="HxW (default 64x128; --full 1024x2048)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--dtype", default=None, help="default float32 (--full bfloat16)")
    parser.add_argument("--workers", type=int, default=None, help="Grain workers (default 0; --full 8)")
    parser.add_argument("--steps", type=int, default=None, help="timed batches/steps (default 6; --full 20)")
    parser.add_argument("--images", type=int, default=8, help="images in the fake dataset")
    parser.add_argument("--data-dir", default="", help="reuse/keep the fake dataset here")
    parser.add_argument("--name", default="data_vs_step")
    parser.add_argument("--full", action="store_true")
    common.add_jax_arguments(parser)
    args = parser.parse_args(argv)
    common.setup_from_args(args)
    from absl import flags

    flags.FLAGS.mark_as_parsed()
    full = args.full
    row = run(common.default_model(args),
              common.parse_size(args.image_size or ("1024x2048" if full else "128x256")),
              common.parse_size(args.crop or ("1024x2048" if full else "64x128")),
              args.batch, common.default_dtype(args),
              args.workers if args.workers is not None else (8 if full else 0),
              args.steps or (20 if full else 6), args.data_dir, args.images)
    common.print_table([row], ["model", "batch", "workers", "data_images_per_s", "step_images_per_s",
                               "loop_images_per_s", "data_to_step_ratio", "loop_vs_bound"])
    for kind, copy in row["host_to_device"].items():
        print(f"  host->device {kind}: {copy['mib']:.2f} MiB in {copy['seconds'] * 1e3:.2f} ms")
    report = {"benchmark": "data_vs_step", "machine": common.machine_info(), "rows": [row]}
    common.write_json(report, args.name, args.out_dir)
    return report


if __name__ == "__main__":
    main()
