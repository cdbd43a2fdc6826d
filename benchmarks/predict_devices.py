"""Images/s of `Predictor` (and so `hmsa predict` / `hmsa autolabel`) on N local devices.

    python benchmarks/predict_devices.py --checkpoint=DIR --devices=8 [--images=32] [--size=128,256]

`--devices` simulates that many CPU devices (set before JAX starts); run once per count and
compare. Batches of one image per device; the first batch (compilation) is not timed.
"""
import argparse
import json
import os
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--size", default="128,256")
    parser.add_argument("--scales", default="0.5,1.0,2.0")
    args = parser.parse_args()
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={args.devices}").strip()
    import jax
    import numpy as np

    from hmsa_jax.inference import Predictor

    jax.config.update("jax_platforms", "cpu")
    predictor = Predictor.from_checkpoint(args.checkpoint, scales=args.scales)
    height, width = (int(v) for v in args.size.split(","))
    images = np.random.default_rng(0).integers(0, 256, (args.images, height, width, 3), np.uint8)
    batch = predictor.batch_size
    predictor(images[:batch])  # compile
    start = time.perf_counter()
    for k in range(0, args.images, batch):
        predictor(images[k:k + batch])
    seconds = time.perf_counter() - start
    print(json.dumps({"devices": len(jax.local_devices()), "batch": batch, "images": args.images,
                      "size": [height, width], "scales": args.scales, "seconds": round(seconds, 2),
                      "images_per_s": round(args.images / seconds, 2), "load": os.getloadavg()[0]}))


if __name__ == "__main__":
    main()
