"""Every benchmark in one command, then the plot.

    python benchmarks/run_all.py            # CPU sizes: tiny widths, small crops (< 10 min here
                                            # with a warm compile cache; see WORKSPACE_NOTES.md)
    python benchmarks/run_all.py --full     # paper sizes on a GPU/TPU: HRNet-W48, 1024x2048

Results: benchmarks/results/<name>.json and benchmarks/results/benchmarks.png.
"""
from __future__ import annotations

import argparse
import sys
import time

import common

STAGES = ("scale_schemes", "scale_flops", "train_throughput", "inference", "inference_flops",
          "data_vs_step", "speed_checks", "plot")


def stage_argv(stage: str, full: bool, out_dir: str, skip_w48: bool) -> list[list[str]]:
    """The argv lists one stage runs (a stage may call its script more than once)."""
    base = ["--out-dir", out_dir] + (["--full"] if full else [])
    if stage == "scale_schemes":
        return [base]  # CPU: hrnet_tiny compiled at 64x128 + 1024x2048; full: hrnet48 compiled
    if stage == "scale_flops":
        if full:
            return []  # the compiled analysis of --full already has W48 FLOPs at 1024x2048
        runs = [["--out-dir", out_dir, "--family", "hrnet_tiny", "--sizes", "1024x2048",
                 "--analysis", "lowered", "--name", "scale_schemes_flops_tiny"]]
        if not skip_w48:
            runs.append(["--out-dir", out_dir, "--family", "hrnet48", "--sizes", "1024x2048",
                         "--analysis", "lowered", "--name", "scale_schemes_flops_w48"])
        return runs
    if stage == "inference_flops":
        if full or skip_w48:
            return []  # --full measures HRNet-W48 at 1024x2048 directly
        return [["--out-dir", out_dir, "--model", "hrnet48_ocr_mscale", "--size", "1024x2048",
                 "--dtype", "bfloat16", "--outputs", "logits", "--lowered-flops",
                 "--name", "inference_flops_w48"]]
    if stage == "train_throughput":
        return [base if full else base + ["--variants", "float32:none", "float32:trunk"]]
    if stage == "plot":
        return [["--results", out_dir]]
    return [base]


def stage_main(stage: str):
    import importlib

    module = {"scale_flops": "scale_schemes", "inference_flops": "inference"}.get(stage, stage)
    return importlib.import_module(module).main


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="paper sizes (accelerator)")
    parser.add_argument("--only", nargs="+", choices=STAGES, default=None)
    parser.add_argument("--skip", nargs="+", choices=STAGES, default=())
    parser.add_argument("--skip-w48-flops", action="store_true",
                        help="CPU: skip lowering full-width HRNet-W48 (train step x3, forward x4: "
                             "about 4-8 min on the shared 2-core CPU)")
    common.add_jax_arguments(parser)
    args = parser.parse_args(argv)
    common.setup_from_args(args)
    timings = {}
    for stage in args.only or STAGES:
        if stage in args.skip:
            continue
        for stage_args in stage_argv(stage, args.full, args.out_dir, args.skip_w48_flops):
            if stage != "plot" and args.opt0 != "auto":
                stage_args = stage_args + ["--opt0", args.opt0]
            print(f"\n=== {stage} {' '.join(stage_args)}", flush=True)
            started = time.perf_counter()
            stage_main(stage)(stage_args)
            timings[f"{stage} {' '.join(stage_args[2:])}".strip()] = time.perf_counter() - started
    print("\nwall time per stage:")
    for name, seconds in timings.items():
        print(f"  {seconds:7.1f}s  {name}")
    print(f"  {sum(timings.values()):7.1f}s  total")
    return 0


if __name__ == "__main__":
    sys.exit(main())
