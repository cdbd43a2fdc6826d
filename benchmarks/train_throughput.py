"""Training throughput of the HMSA recipe (two-scale hierarchical attention, SGD, one device):
images/s, step time, peak device memory and model FLOPs utilisation, per compute dtype and
rematerialisation mode.

Model FLOPs per step are those of the step without rematerialisation (XLA's cost analysis of
the lowered step), so remat's recomputation does not count as useful work; `hw_flops` is the
compiled step's own count. MFU = model FLOPs / step time / the device's peak for the dtype
(table in common.PEAK_FLOPS; none for CPUs). Peak device memory comes from
`jax.devices()[0].memory_stats()` where the backend has it (GPU/TPU); each variant then runs in
its own process (--isolate, default with --full) so that peaks do not carry over.

    python benchmarks/train_throughput.py                      # hrnet_tiny_ocr_mscale 64x128, CPU
    python benchmarks/train_throughput.py --full               # hrnet48_ocr_mscale 1024x2048
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import common

DEFAULT_VARIANTS = ["float32:none", "float32:trunk", "bfloat16:none", "bfloat16:trunk"]


def time_steps(compiled, state, batch, key, warmup: int, repeats: int):
    """Median step time, threading the (donated) state through the steps."""
    import jax

    for _ in range(warmup):
        state, metrics = compiled(state, batch, key)
    jax.block_until_ready(metrics)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        state, metrics = compiled(state, batch, key)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - started)
    return statistics.median(times), min(times), float(metrics["loss"])


def model_flops_per_step(spec) -> float:
    """FLOPs of the step without remat, from the lowered module (no compile)."""
    import dataclasses

    return _lowered_flops(dataclasses.replace(spec, remat="none"))


@functools.lru_cache(maxsize=None)
def _lowered_flops(plain) -> float:
    import steps

    step, model, tx, mesh = steps.build_step(plain)
    return common.lowered_cost(step.lower(*steps.abstract_args(plain, model, tx, mesh)))["flops"]


def measure_variant(spec, warmup: int, repeats: int) -> dict:
    import steps

    compiled, model, state, batch, key, compile_s = steps.compile_step(spec)
    analysis = common.compiled_cost_and_memory(compiled)
    median_s, min_s, loss = time_steps(compiled, state, batch, key, warmup, repeats)
    flops = model_flops_per_step(spec)
    peak = common.device_peak_flops(spec.dtype)
    return {
        "model": spec.model_name, "size": f"{spec.height}x{spec.width}", "batch": spec.batch,
        "dtype": spec.dtype, "remat": spec.remat, "criterion": spec.criterion,
        "compile_s": compile_s, "step_s": median_s, "step_min_s": min_s,
        "images_per_s": spec.batch / median_s, "loss": loss,
        "model_flops": flops, "hw_flops": analysis["flops"],
        "achieved_tflops": flops / median_s / 1e12,
        "mfu": flops / median_s / peak if peak else None,
        "peak_device_flops": peak,
        "temp_mib": common.mib(analysis.get("temp_bytes")),
        "argument_mib": common.mib(analysis.get("argument_bytes")),
        "peak_memory_mib": common.mib(common.peak_device_memory()),
    }


def run_isolated(argv_base: list[str], variant: str) -> dict:
    """One variant in a fresh process (its own peak-memory counter); returns its row."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, os.path.abspath(__file__), *argv_base, "--variants", variant,
               "--no-isolate", "--out-dir", tmp, "--name", "row"]
        subprocess.run(cmd, check=True)
        with open(os.path.join(tmp, "row.json")) as f:
            return json.load(f)["rows"][0]


def strip_option(argv: list[str], names: tuple[str, ...]) -> list[str]:
    """argv without the given options and their values (values run up to the next --flag)."""
    out, skipping = [], False
    for item in argv:
        if item.startswith("--"):
            skipping = item.split("=")[0] in names
            if skipping:
                continue
        elif skipping:
            continue
        out.append(item)
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="default hrnet_tiny_ocr_mscale (--full: hrnet48_ocr_mscale)")
    parser.add_argument("--size", default=None, help="crop HxW (default 64x128; --full 1024x2048)")
    parser.add_argument("--batch", type=int, default=1, help="images per device")
    parser.add_argument("--criterion", default=None, help="ce | rmi (default ce; --full rmi as the recipe)")
    parser.add_argument("--image-dtype", default="float32", choices=("float32", "uint8"))
    parser.add_argument("--variants", nargs="+", default=None,
                        help=f"dtype:remat pairs (default {' '.join(DEFAULT_VARIANTS)})")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=None, help="timed steps (default 3; --full 10)")
    parser.add_argument("--isolate", dest="isolate", action="store_true", default=None)
    parser.add_argument("--no-isolate", dest="isolate", action="store_false")
    parser.add_argument("--name", default="train_throughput")
    parser.add_argument("--full", action="store_true")
    common.add_jax_arguments(parser)
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    variants = args.variants or DEFAULT_VARIANTS
    isolate = args.full if args.isolate is None else args.isolate
    if isolate and len(variants) > 1:
        base = strip_option(argv, ("--variants", "--isolate", "--no-isolate", "--out-dir", "--name"))
        rows = [run_isolated(base, v) for v in variants]
        common.setup_from_args(args)
    else:
        common.setup_from_args(args)
        import steps

        rows = []
        for variant in variants:
            dtype, remat = variant.split(":")
            height, width = common.parse_size(args.size or ("1024x2048" if args.full else "64x128"))
            spec = steps.StepSpec(
                common.default_model(args),
                height, width, batch=args.batch, dtype=dtype, remat=remat,
                criterion=args.criterion or ("rmi" if args.full else "ce"),
                image_dtype=args.image_dtype)
            row = measure_variant(spec, args.warmup, args.repeats or (10 if args.full else 3))
            print(f"  {variant:<16} {row['images_per_s']:.3g} img/s  step {row['step_s']:.3g}s  "
                  f"compile {row['compile_s']:.1f}s", flush=True)
            rows.append(row)
    common.print_table(rows, ["model", "size", "dtype", "remat", "step_s", "images_per_s",
                              "achieved_tflops", "mfu", "temp_mib", "peak_memory_mib", "compile_s"])
    report = {"benchmark": "train_throughput", "machine": common.machine_info(), "rows": rows}
    common.write_json(report, args.name, args.out_dir)
    return report


if __name__ == "__main__":
    main()
