"""What running 1x1 stride-1 convolutions as matmuls (`ops.conv_general_dilated`) does to the
whole train step and the {0.5, 1, 2} inference, side by side in one process: each compiled
twice, with the model's convolutions as they are (`matmul`) and with every one traced as
`lax.conv_general_dilated` (`conv`, the model before), then called in turns.

    python benchmarks/pointwise_matmul.py                          # HRNet-W48 + OCR + attention, 128x256, batch 2
    python benchmarks/pointwise_matmul.py --model hrnet_tiny_ocr_mscale --size 64x128 --reps 3
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import common
import steps
from conv_kernels import INFER_SCALES, every_conv_as_lax_conv, jaxpr_equations

VARIANTS = {"conv": every_conv_as_lax_conv, "matmul": contextlib.nullcontext}


def train_calls(spec: steps.StepSpec) -> tuple[dict, dict]:
    """({variant: one train step}, {variant: compile seconds})."""
    import jax

    calls, compile_s = {}, {}
    for name, traced_as in VARIANTS.items():
        with traced_as():
            compiled, _, state, batch, key, compile_s[name] = steps.compile_step(spec)
        holder = {"state": state}

        def call(compiled=compiled, holder=holder, batch=batch, key=key):
            holder["state"], metrics = compiled(holder["state"], batch, key)
            return float(jax.block_until_ready(metrics["loss"]))

        calls[name] = call
    return calls, compile_s


def infer_calls(spec: steps.StepSpec) -> tuple[dict, dict, dict]:
    """({variant: one batch-1 inference over INFER_SCALES}, {variant: compile seconds},
    {variant: convolutions in its program})."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from hmsa_jax import create_model

    model = create_model(spec.model_name, num_classes=spec.num_classes)
    variables = jax.jit(lambda key: model.init(key, jnp.zeros((1, 64, 64, 3))))(jax.random.key(0))
    images = jnp.asarray(np.random.default_rng(1).standard_normal((1, spec.height, spec.width, 3), dtype=np.float32))
    calls, compile_s, convolutions = {}, {}, {}
    for name, traced_as in VARIANTS.items():
        forward = jax.jit(lambda v, x: model.apply(v, x, train=False, scales=INFER_SCALES)["logits"])
        started = time.perf_counter()
        with traced_as():
            traced = forward.trace(variables, images)
        compiled = traced.lower().compile()
        compile_s[name] = time.perf_counter() - started
        convolutions[name] = sum(e.primitive.name == "conv_general_dilated" for e in jaxpr_equations(traced.jaxpr.jaxpr))
        calls[name] = lambda compiled=compiled: jax.block_until_ready(compiled(variables, images))
    return calls, compile_s, convolutions


def in_turns(calls: dict, reps: int) -> tuple[dict, dict]:
    """({variant: [seconds per call]}, {variant: its first call's result}): one untimed round,
    then `reps` rounds calling each in turn."""
    times, first = {name: [] for name in calls}, {}
    for round_index in range(reps + 1):
        for name, call in calls.items():
            started = time.perf_counter()
            result = call()
            if round_index:
                times[name].append(time.perf_counter() - started)
            first.setdefault(name, result)
    return times, first


def task_row(task: str, calls: dict, compile_s: dict, reps: int, convolutions: dict | None = None) -> dict:
    import numpy as np

    times, first = in_turns(calls, reps)
    medians = {name: statistics.median(t) for name, t in times.items()}
    difference = float(np.max(np.abs(np.asarray(first["matmul"]) - np.asarray(first["conv"]))))
    return {"task": task, "median_s": medians, "times": times, "compile_s": compile_s,
            "ratio_matmul_over_conv": medians["matmul"] / medians["conv"],
            "first_results_max_abs_difference": difference, "convolutions": convolutions}


def markdown(report: dict) -> str:
    c = report["config"]
    lines = [f"# 1x1 convolutions as matmuls vs as convolutions: {c['model']}, {c['size']}", "",
             f"{common.machine_line(report['machine'])}; medians of {c['reps']} calls each, in turns after one "
             f"untimed round; load {report['load_before']} -> {report['load_after']}", "",
             "| task | conv s | matmul s | matmul / conv | compile conv s | compile matmul s | max abs difference |",
             "|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        lines.append(f"| {r['task']} | {r['median_s']['conv']:.3f} | {r['median_s']['matmul']:.3f} | "
                     f"{r['ratio_matmul_over_conv']:.3f} | {r['compile_s']['conv']:.1f} | {r['compile_s']['matmul']:.1f} | "
                     f"{r['first_results_max_abs_difference']:.1e} |")
    lines += ["", "max abs difference: between the two variants' first results (train: the loss; inference: "
              "the fused logits)."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_step_arguments(parser)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--tasks", nargs="+", choices=("train", "infer"), default=["train", "infer"])
    parser.add_argument("--name", default="pointwise_matmul")
    parser.add_argument("--out-dir", default=common.RESULTS_DIR)
    args = parser.parse_args(argv)
    common.setup_jax(False, cache=False)  # both variants compiled here, none from a cache
    spec = steps.spec_from_args(args)
    load_before = common.load_average()
    rows = []
    if "train" in args.tasks:
        rows.append(task_row(f"train step (batch {args.batch})", *train_calls(spec), args.reps))
    if "infer" in args.tasks:
        calls, compile_s, convolutions = infer_calls(spec)
        rows.append(task_row(f"inference {{{','.join(f'{s:g}' for s in INFER_SCALES)}}} (batch 1)",
                             calls, compile_s, args.reps, convolutions))
    for r in rows:
        print(f"  {r['task']:<32} conv {r['median_s']['conv']:.3f} s  matmul {r['median_s']['matmul']:.3f} s  "
              f"ratio {r['ratio_matmul_over_conv']:.3f}", flush=True)
    report = {"benchmark": "pointwise_matmul", "machine": common.machine_info(),
              "config": {"model": args.model, "size": args.size, "batch": args.batch, "reps": args.reps,
                         "tasks": args.tasks},
              "rows": rows, "load_before": load_before, "load_after": common.load_average()}
    common.write_json(report, args.name, args.out_dir, markdown(report))
    return report


if __name__ == "__main__":
    main()
