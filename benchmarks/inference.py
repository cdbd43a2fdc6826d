"""Inference latency and images/s of hierarchical fusion per scale set, with and without flip.

Each scale set is one jitted forward (`hmsa_jax.make_predict_fn`'s: `model.apply(...,
train=False, scales=...)`). `--outputs all` returns every output as make_predict_fn
does today (fused logits and aux logits, and each scale's logits/aux/attention at its input
size); `--outputs logits` returns only the fused logits, which is all an evaluation needs.
Flip = the mean of the logits of the image and of its horizontal mirror (mirrored back): two
calls of the same compiled forward, so no extra compilation.

    python benchmarks/inference.py                      # hrnet_tiny_ocr_mscale, 256x512, CPU
    python benchmarks/inference.py --full               # hrnet48_ocr_mscale, 1024x2048, bf16
    python benchmarks/inference.py --model hrnet48_ocr_mscale --size 1024x2048 --outputs logits \
        --lowered-flops --name inference_flops_w48      # FLOPs per scale set on a CPU
"""
from __future__ import annotations

import argparse
import functools
import time

import common

SCALE_SETS = ["1.0", "0.5,1.0", "0.5,1.0,2.0", "0.25,0.5,1.0,2.0"]


def parse_scales(text: str) -> tuple[float, ...]:
    return tuple(sorted(float(s) for s in text.split(",")))


def make_forward(model, scales: tuple[float, ...], outputs: str):
    """jitted (variables, images) -> outputs dict ('all') or {'logits': fused logits}: the
    forward of make_predict_fn, as a jitted function to lower."""
    import jax

    from hmsa_jax import make_predict_fn

    predict = make_predict_fn(model, None if outputs == "all" else ("logits",))
    return jax.jit(lambda variables, images: predict(variables, images, scales=scales))


def flip_average(forward, variables, images):
    """Mean of forward(x)["logits"] and mirror(forward(mirror(x))["logits"]) (mirror = width flip)."""
    logits = forward(variables, images)["logits"]
    mirrored = forward(variables, images[:, :, ::-1])["logits"]
    return _mirror_average()(logits, mirrored)


@functools.cache
def _mirror_average():
    """jitted (logits, logits of the mirror) -> their mean in the image's orientation."""
    import jax

    return jax.jit(lambda a, b: 0.5 * (a + b[:, :, ::-1]))


def measure_scale_set(model, variables, images, scales, outputs: str, warmup: int, repeats: int) -> list[dict]:
    """Rows without and with flip for one scale set (one compilation serves both)."""
    forward = make_forward(model, scales, outputs)
    started = time.perf_counter()
    compiled = forward.lower(variables, images).compile()
    compile_s = time.perf_counter() - started
    analysis = common.compiled_cost_and_memory(compiled)
    rows = []
    for flip in (False, True):
        if flip:
            call = lambda: flip_average(compiled, variables, images)
        else:
            call = lambda: compiled(variables, images)["logits"]
        timing = common.time_call(call, warmup=warmup, repeats=repeats)
        rows.append({"scales": ",".join(str(s) for s in scales), "flip": flip,
                     "latency_s": timing["median_s"], "latency_min_s": timing["min_s"],
                     "images_per_s": images.shape[0] / timing["median_s"],
                     "compile_s": compile_s, "outputs": outputs,
                     "flops": analysis["flops"] * (2 if flip else 1),
                     "temp_mib": common.mib(analysis.get("temp_bytes")),
                     "output_mib": common.mib(analysis.get("output_bytes"))})
    return rows


def add_ratios(rows: list[dict]) -> None:
    base = next((r for r in rows if r["scales"] == "1.0" and not r["flip"]), None)
    for row in rows:
        if base:
            row["latency_ratio"] = row["latency_s"] / base["latency_s"]
            row["flops_ratio"] = row["flops"] / base["flops"] if base["flops"] else None


def lowered_flops(model_name: str, size: str, dtype: str, batch: int, scale_sets: list[str],
                  outputs: str) -> list[dict]:
    """FLOPs per scale set from the lowered forward (no compile, no parameters allocated):
    full-width HRNet-W48 at 1024x2048 on a CPU. Flip doubles them (two forwards)."""
    import jax
    import jax.numpy as jnp

    from hmsa_jax import create_model

    height, width = common.parse_size(size)
    model = create_model(model_name, dtype=jnp.dtype(dtype))
    variables = jax.eval_shape(lambda k: model.init(k, jnp.zeros((1, 64, 64, 3)), train=False),
                               jax.random.key(0))
    images = jax.ShapeDtypeStruct((batch, height, width, 3), jnp.float32)
    rows = []
    for text in scale_sets:
        started = time.perf_counter()
        lowered = make_forward(model, parse_scales(text), outputs).lower(variables, images)
        cost = common.lowered_cost(lowered)
        for flip in (False, True):
            rows.append({"scales": text, "flip": flip, "model": model_name, "size": size, "dtype": dtype,
                         "batch": batch, "outputs": outputs, "analysis": "lowered",
                         "flops": cost["flops"] * (2 if flip else 1),
                         "lower_s": time.perf_counter() - started})
        print(f"  scales {text:<18} flops {cost['flops']:.4g}", flush=True)
    base = rows[0]["flops"]
    for row in rows:
        row["flops_ratio"] = row["flops"] / base
    return rows


def run(model_name: str, size: str, dtype: str, batch: int, scale_sets: list[str], outputs: str,
        warmup: int, repeats: int) -> list[dict]:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from hmsa_jax import create_model

    height, width = common.parse_size(size)
    model = create_model(model_name, dtype=jnp.dtype(dtype))
    variables = jax.jit(lambda k: model.init(k, jnp.zeros((1, 64, 64, 3)), train=False))(jax.random.key(0))
    images = jax.device_put(np.random.default_rng(0).standard_normal((batch, height, width, 3), np.float32))
    rows = []
    for text in scale_sets:
        for row in measure_scale_set(model, variables, images, parse_scales(text), outputs, warmup, repeats):
            row.update(model=model_name, size=size, dtype=dtype, batch=batch)
            print(f"  scales {row['scales']:<18} flip={row['flip']!s:<5} {row['latency_s']:.4g}s "
                  f"{row['images_per_s']:.3g} img/s  compile {row['compile_s']:.1f}s", flush=True)
            rows.append(row)
    add_ratios(rows)
    return rows


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="default hrnet_tiny_ocr_mscale (--full hrnet48_ocr_mscale)")
    parser.add_argument("--size", default=None, help="HxW (default 256x512; --full 1024x2048)")
    parser.add_argument("--dtype", default=None, help="default float32 (--full bfloat16)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--scale-sets", nargs="+", default=SCALE_SETS)
    parser.add_argument("--outputs", choices=("all", "logits"), default="all")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=None, help="default 3 (--full 10)")
    parser.add_argument("--lowered-flops", action="store_true",
                        help="only FLOPs of the lowered forward per scale set (no compile, no run)")
    parser.add_argument("--name", default="inference")
    parser.add_argument("--full", action="store_true")
    common.add_jax_arguments(parser)
    args = parser.parse_args(argv)
    common.setup_from_args(args)
    model, dtype = common.default_model(args), common.default_dtype(args)
    size = args.size or ("1024x2048" if args.full else "256x512")
    if args.lowered_flops:
        rows = lowered_flops(model, size, dtype, args.batch, args.scale_sets, args.outputs)
        common.print_table(rows, ["scales", "flip", "flops", "flops_ratio", "lower_s"])
    else:
        rows = run(model, size, dtype, args.batch, args.scale_sets, args.outputs, args.warmup,
                   args.repeats or (10 if args.full else 3))
        common.print_table(rows, ["scales", "flip", "latency_s", "latency_ratio", "images_per_s",
                                  "flops", "flops_ratio", "temp_mib", "output_mib", "compile_s"])
    report = {"benchmark": "inference", "machine": common.machine_info(), "rows": rows}
    common.write_json(report, args.name, args.out_dir)
    return report


if __name__ == "__main__":
    main()
