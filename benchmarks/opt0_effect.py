"""What XLA:CPU's `--xla_backend_optimization_level=0` (`runtime.cpu_fast_compile=True`, which
the `hmsa` commands set on CPU until 2026-12-01) costs in step time and saves in compile time,
side by side in one process: the same train step compiled at the default level and at 0, then called in turns.

    python benchmarks/opt0_effect.py                          # HRNet-W48 + OCR + attention, 128x256, batch 2
    python benchmarks/opt0_effect.py --model hrnet_tiny_ocr_mscale --size 64x128 --reps 3
"""
from __future__ import annotations

import argparse
import statistics
import time

import common
import steps

LEVELS = {"default": None, "opt0": {"xla_backend_optimization_level": 0}}


def measure(spec: steps.StepSpec, reps: int) -> dict:
    import jax

    compiled, states, compile_s = {}, {}, {}
    for name, options in LEVELS.items():
        compiled[name], _, states[name], batch, key, compile_s[name] = steps.compile_step(spec, options)
        print(f"{name}: compiled in {compile_s[name]:.1f} s", flush=True)
    times = {name: [] for name in LEVELS}
    for _ in range(reps + 1):  # the first round warms up
        for name in LEVELS:
            started = time.perf_counter()
            states[name], metrics = compiled[name](states[name], batch, key)
            jax.block_until_ready(metrics["loss"])
            times[name].append(time.perf_counter() - started)
    rows = [{"level": name, "compile_s": compile_s[name], "step_median_s": statistics.median(times[name][1:]),
             "step_min_s": min(times[name][1:]), "times": times[name]} for name in LEVELS]
    return {"rows": rows, "step_ratio_opt0": rows[1]["step_median_s"] / rows[0]["step_median_s"],
            "compile_ratio_opt0": rows[1]["compile_s"] / rows[0]["compile_s"]}


def markdown(report: dict) -> str:
    c = report["config"]
    lines = [f"# XLA CPU opt level 0 vs default: {c['model']}, {c['size']} batch {c['batch']}, "
             f"train step ({c['reps']} timed calls each, interleaved)", "",
             f"{common.machine_line(report['machine'])}; load {report['load_before']} -> {report['load_after']}", "",
             "| level | compile s | step median s | step min s |", "|---|---|---|---|"]
    lines += [f"| {r['level']} | {r['compile_s']:.1f} | {r['step_median_s']:.3f} | {r['step_min_s']:.3f} |"
              for r in report["rows"]]
    lines += ["", f"opt0 / default: step {report['step_ratio_opt0']:.2f}x, compile {report['compile_ratio_opt0']:.2f}x"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_step_arguments(parser)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--name", default="opt0_effect")
    parser.add_argument("--out-dir", default=common.RESULTS_DIR)
    args = parser.parse_args(argv)
    common.setup_jax(False, cache=False)  # both levels compiled here, none from a cache
    spec = steps.spec_from_args(args)
    load_before = common.load_average()
    report = {"benchmark": "opt0_effect", "machine": common.machine_info(),
              "config": {"model": args.model, "size": args.size, "batch": args.batch, "reps": args.reps},
              "load_before": load_before, **measure(spec, args.reps),
              "load_after": common.load_average()}
    common.write_json(report, args.name, args.out_dir, markdown(report))
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
