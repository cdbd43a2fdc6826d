"""Compile times of what every command compiles first: model initialisation, the training step
and 3-scale inference, each split into trace + lower (Python, JAX) and XLA compile, with a
fresh persistent compilation cache (an empty directory) and then warm (the same directory,
jax_persistent_cache_min_compile_time_secs=0, in a new process).

Initialisation variants: `jax.eval_shape(model.init)` (shapes only: nothing compiled);
`jax.jit(init_variables)` at the training crop (what `hmsa train` does) and at a tiny 64x64
image (parameter shapes do not depend on the image size); and the tiny one compiled at XLA
optimisation level 0 (as `hmsa convert` does).

Each phase runs in its own process (a fresh JAX), so in-memory caches do not carry over.

    python benchmarks/compile_time.py                                  # hrnet48, 128x256 batch 2
    python benchmarks/compile_time.py --model hrnet_tiny_ocr_mscale --size 64x128 --batch 1
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import common

TINY_INIT_SHAPE = (1, 64, 64, 3)
INFER_SCALES = (0.5, 1.0, 2.0)
TASKS = ("init_eval_shape", "init_crop", "init_tiny", "init_tiny_opt0", "train_step", "infer_3scale")


def timed(fn):
    started = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - started


def lower_compile_run(jitted, args, compiler_options=None) -> dict:
    """Seconds to trace + lower, to compile (a cache hit when warm) and to run once."""
    import jax

    with common.CompileCounter() as counter:
        lowered, lower_s = timed(lambda: jitted.lower(*args))
        compiled, compile_s = timed(lambda: lowered.compile(compiler_options=compiler_options))
    _, run_s = timed(lambda: jax.block_until_ready(compiled(*args)))
    return {"lower_s": lower_s, "compile_s": compile_s, "run_s": run_s,
            "total_s": lower_s + compile_s + run_s, "xla_compile_s": counter.compile_seconds}


def measure(task: str, spec) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    import steps
    from hmsa_jax import create_model, parallel
    from hmsa_jax.train.state import init_variables

    key = jax.random.key(0)
    if task == "train_step":
        step, model, tx, mesh = steps.build_step(spec)
        state = steps.concrete_state(spec, model, tx, mesh)
        batch = parallel.global_batch(steps.synthetic_batch(spec), mesh)
        return lower_compile_run(step, (state, batch, key))
    model = create_model(spec.model_name)
    if task == "init_eval_shape":
        _, seconds = timed(lambda: jax.eval_shape(lambda k: init_variables(model, k, TINY_INIT_SHAPE), key))
        return {"lower_s": seconds, "compile_s": 0.0, "run_s": 0.0, "total_s": seconds}
    if task.startswith("init_"):
        shape = (1, spec.height, spec.width, 3) if task == "init_crop" else TINY_INIT_SHAPE
        options = {"xla_backend_optimization_level": 0} if task.endswith("opt0") else None
        return lower_compile_run(jax.jit(lambda k: init_variables(model, k, shape)), (key,), options)
    if task == "infer_3scale":
        variables = jax.jit(lambda k: init_variables(model, k, TINY_INIT_SHAPE))(key)
        images = jnp.asarray(np.zeros((1, spec.height, spec.width, 3), np.float32))
        forward = jax.jit(lambda v, x: model.apply(v, x, train=False, scales=INFER_SCALES)["logits"])
        return lower_compile_run(forward, (variables, images))
    raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")


def worker(args) -> None:
    """One phase in this process: every task, one JSON line per task on stdout."""
    common.setup_jax(args.opt0 == "on", cache=False)
    import jax

    jax.config.update("jax_compilation_cache_dir", args.cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    import steps

    spec = steps.spec_from_args(args, criterion="ce")
    for task in args.tasks:
        row = {"task": task, **measure(task, spec), "load": common.load_average()}
        print("ROW " + json.dumps(row), flush=True)


def run_phase(argv_base: list[str], cache_dir: str, phase: str) -> list[dict]:
    cmd = [sys.executable, os.path.abspath(__file__), *argv_base, "--worker", "--cache-dir", cache_dir]
    print(f"[{phase}] {' '.join(cmd[1:])}", flush=True)
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    rows = [json.loads(line[4:]) for line in out.stdout.splitlines() if line.startswith("ROW ")]
    for row in rows:
        row["cache"] = phase
        print(f"  {phase:<5} {row['task']:<16} lower {row['lower_s']:.1f}s  compile {row['compile_s']:.1f}s  "
              f"run {row['run_s']:.1f}s", flush=True)
    return rows


def markdown(report: dict) -> str:
    c = report["config"]
    lines = [f"# Compile times: {c['model']}, {c['size']} batch {c['batch']}, XLA opt0={c['opt0']}", "",
             common.machine_line(report['machine']) + (
             ". Seconds; 'cold' = empty persistent cache, 'warm' = the same "
             "cache in a new process. Load average per row."), "",
             "| task | cache | trace+lower s | compile s | first run s | total s | load |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in report["rows"]:
        lines.append(f"| {r['task']} | {r['cache']} | {r['lower_s']:.1f} | {r['compile_s']:.1f} | "
                     f"{r['run_s']:.1f} | {r['total_s']:.1f} | {r['load'][0]} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_step_arguments(parser)
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    parser.add_argument("--opt0", choices=("on", "off"), default="off",
                        help="XLA CPU --xla_backend_optimization_level=0 for every compile (runtime.cpu_fast_compile=True)")
    parser.add_argument("--phases", nargs="+", choices=("cold", "warm"), default=["cold", "warm"])
    parser.add_argument("--name", default="compile_time")
    parser.add_argument("--out-dir", default=common.RESULTS_DIR)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", help=argparse.SUPPRESS)
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return {}
    base = [a for a in argv if a != "--worker"]
    rows = []
    with tempfile.TemporaryDirectory(prefix="jax_cache_") as cache_dir:
        for phase in args.phases:
            rows += run_phase(base, cache_dir, phase)
    common.setup_jax(False, cache=False)
    report = {"benchmark": "compile_time", "machine": common.machine_info(),
              "config": {"model": args.model, "size": args.size, "batch": args.batch, "opt0": args.opt0},
              "rows": rows}
    common.write_json(report, args.name, args.out_dir, markdown(report))
    return report


if __name__ == "__main__":
    main()
