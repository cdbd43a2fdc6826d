"""Looking for waste: recompilation, the resize used for logits, the fuse chain's HLO, what the
jitted predict returns, and host->device copies of float32 vs uint8 batches.

1. compilations: jit lowerings while calling `make_predict_fn` with one scale set in two
   orders and repeatedly, and while running the training step for several steps (1 each).
2. resize: `ops.resize_bilinear` (two gathers + lerp per axis) against `jax.image.resize`
   (bilinear, antialias=False) for the 4x logits upsample to the output size: XLA FLOPs,
   bytes, CPU time, max difference.
3. fuse chain: hierarchical fusion over per-scale outputs at the output size, compiled; HLO
   op census (transpose / copy / gather / fusion) and bytes, fusing logits+aux vs logits only.
4. predict outputs: the inference benchmark for one scale set with every output returned (what
   make_predict_fn returns) vs only the fused logits.
5. host->device: `jax.device_put` of one batch as float32 vs uint8.

    python benchmarks/speed_checks.py                   # CPU sizes
    python benchmarks/speed_checks.py --full            # 1024x2048, hrnet48, bf16
"""
from __future__ import annotations

import argparse
import re
import statistics
import time

import common


def count_predict_compilations(model_name: str, size: str) -> dict:
    import jax
    import jax.numpy as jnp

    from hmsa_jax import create_model, make_predict_fn

    height, width = common.parse_size(size)
    model = create_model(model_name)
    variables = jax.jit(lambda k: model.init(k, jnp.zeros((1, 64, 64, 3)), train=False))(jax.random.key(0))
    images = jnp.zeros((1, height, width, 3))
    predict = make_predict_fn(model)
    with common.CompileCounter() as counter:
        for scales in [(1.0, 0.5), (0.5, 1.0), (0.5, 1.0), [1.0, 0.5]]:
            jax.block_until_ready(predict(variables, images, scales=scales)["logits"])
    return {"what": "make_predict_fn, 4 calls, scale set {0.5,1.0} in 2 orders", "calls": 4,
            "lowerings": counter.lowerings}


def count_train_step_compilations(model_name: str, size: str, steps_to_run: int = 3) -> dict:
    import jax

    import steps
    from hmsa_jax import parallel

    height, width = common.parse_size(size)
    spec = steps.StepSpec(model_name, height, width)
    step, model, tx, mesh = steps.build_step(spec)
    state = steps.concrete_state(spec, model, tx, mesh)
    with common.CompileCounter() as counter:
        for i in range(steps_to_run):
            batch = parallel.global_batch(steps.synthetic_batch(spec, seed=i), mesh)
            state, metrics = step(state, batch, jax.random.key(0))
        jax.block_until_ready(metrics)
    return {"what": f"jit_train_step, {steps_to_run} steps, fresh host batch each", "calls": steps_to_run,
            "lowerings": counter.lowerings}


def hlo_census(hlo_text: str) -> dict:
    """Instruction counts by opcode family in optimised HLO text."""
    opcodes = re.findall(r"=\s*[\w\[\]{},:\s]*?\s([a-z][a-z\-]*)\(", hlo_text)
    families = ("transpose", "copy", "gather", "fusion", "dynamic-slice", "concatenate")
    return {f: sum(1 for op in opcodes if op == f) for f in families} | {"instructions": len(opcodes)}


def analyse(fn, *args, run: bool = True, repeats: int = 3) -> dict:
    import jax

    lowered = jax.jit(fn).lower(*args)
    compiled = lowered.compile()
    row = {"lowered_flops": common.lowered_cost(lowered)["flops"],
           **common.compiled_cost_and_memory(compiled), **hlo_census(compiled.as_text())}
    if run:
        row["cpu_s" if jax.default_backend() == "cpu" else "device_s"] = \
            common.time_call(lambda: compiled(*args), warmup=1, repeats=repeats)["median_s"]
    return row


def compare_resizes(out_size: tuple[int, int], classes: int = 19, run: bool = True) -> list[dict]:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from hmsa_jax import ops

    height, width = out_size
    logits = jnp.asarray(np.random.default_rng(0).standard_normal((1, height // 4, width // 4, classes),
                                                                   np.float32))
    ours = lambda x: ops.resize_bilinear(x, out_size)
    jax_image = lambda x: jax.image.resize(x, (1, height, width, classes), "bilinear", antialias=False)
    rows = [{"resize": "ops.resize_bilinear", **analyse(ours, logits, run=run)},
            {"resize": "jax.image.resize", **analyse(jax_image, logits, run=run)}]
    if run:
        diff = float(jnp.max(jnp.abs(jax.jit(ours)(logits) - jax.jit(jax_image)(logits))))
        for row in rows:
            row["max_abs_diff"] = diff
    for row in rows:
        row["shape"] = f"{logits.shape} -> {(1, height, width, classes)}"
    return rows


def compare_fuse_outputs(out_size: tuple[int, int], scales=(0.5, 1.0, 2.0), classes: int = 19,
                         run: bool = True) -> list[dict]:
    """Hierarchical fuse of per-scale outputs (at each scale's input size, as the model
    returns them), with aux logits fused too (what the model does) and logits only."""
    import jax.numpy as jnp

    from hmsa_jax import multiscale, ops

    def per_scale_inputs(with_aux: bool):
        outs = {}
        for s in scales:
            h, w = ops.scaled_size(out_size[0], out_size[1], s)
            logits = jnp.zeros((1, h, w, classes))
            outs[s] = {"logits": logits, "aux_logits": logits + 1 if with_aux else None,
                       "attention": jnp.full((1, h, w, 1), 0.5)}
        return outs

    rows = []
    for with_aux in (True, False):
        fn = lambda p: {k: v for k, v in multiscale.hierarchical_fuse(p).items() if v is not None}
        rows.append({"fuse": f"hierarchical {scales}", "fused": "logits+aux" if with_aux else "logits",
                     **analyse(fn, per_scale_inputs(with_aux), run=run)})
    return rows


def compare_predict_outputs(model_name: str, size: str, dtype: str, scales: str, repeats: int) -> list[dict]:
    import inference

    rows = []
    for outputs in ("all", "logits"):
        rows += [r for r in inference.run(model_name, size, dtype, 1, [scales], outputs, 1, repeats)
                 if not r["flip"]]
    return rows


def compare_host_to_device(size: tuple[int, int], batch: int = 1, repeats: int = 5) -> list[dict]:
    import jax
    import numpy as np

    rows = []
    for dtype in (np.float32, np.uint8):
        host = np.ones((batch, *size, 3), dtype)
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            jax.block_until_ready(jax.device_put(host))
            times.append(time.perf_counter() - started)
        rows.append({"dtype": np.dtype(dtype).name, "mib": common.mib(host.nbytes),
                     "seconds": statistics.median(times)})
    return rows


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="default hrnet_tiny_ocr_mscale (--full hrnet48_ocr_mscale)")
    parser.add_argument("--size", default=None, help="output HxW (default 256x512; --full 1024x2048)")
    parser.add_argument("--analysis-size", default="1024x2048",
                        help="HxW for compile-only resize/fuse analysis (not run on CPU)")
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--predict-scales", default="0.5,1.0,2.0")
    parser.add_argument("--skip-compile-counts", action="store_true")
    parser.add_argument("--name", default="speed_checks")
    parser.add_argument("--full", action="store_true")
    common.add_jax_arguments(parser)
    args = parser.parse_args(argv)
    common.setup_from_args(args)
    import jax

    model, dtype = common.default_model(args), common.default_dtype(args)
    size = args.size or ("1024x2048" if args.full else "256x512")
    on_cpu = jax.default_backend() == "cpu"
    report = {"benchmark": "speed_checks", "machine": common.machine_info(), "model": model, "size": size}
    if not args.skip_compile_counts:
        report["compilations"] = [count_predict_compilations(model, "32x64" if on_cpu else size),
                                  count_train_step_compilations(model, "64x128" if on_cpu else size)]
        common.print_table(report["compilations"], ["what", "calls", "lowerings"])
    analysis_size = common.parse_size(args.analysis_size)
    report["resize"] = (compare_resizes(common.parse_size(size)) +
                        ([] if args.analysis_size == size else
                         compare_resizes(analysis_size, run=not on_cpu)))
    common.print_table(report["resize"], ["resize", "shape", "lowered_flops", "flops", "bytes_accessed",
                                          "temp_bytes", "cpu_s", "device_s", "max_abs_diff"])
    report["fuse"] = compare_fuse_outputs(analysis_size, run=not on_cpu)
    common.print_table(report["fuse"], ["fuse", "fused", "flops", "bytes_accessed", "temp_bytes",
                                        "output_bytes", "instructions", "transpose", "copy", "gather",
                                        "fusion", "device_s"])
    report["predict_outputs"] = compare_predict_outputs(model, size, dtype, args.predict_scales,
                                                        10 if args.full else 3)
    common.print_table(report["predict_outputs"], ["scales", "outputs", "latency_s", "temp_mib",
                                                   "output_mib", "flops", "compile_s"])
    report["host_to_device"] = compare_host_to_device(common.parse_size(size))
    common.print_table(report["host_to_device"], ["dtype", "mib", "seconds"])
    common.write_json(report, args.name, args.out_dir)
    return report


if __name__ == "__main__":
    main()
