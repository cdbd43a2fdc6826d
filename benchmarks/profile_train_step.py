"""Where the training step's CPU time goes: XLA:CPU's per-operation times from a
`jax.profiler` trace of the compiled step, grouped by what each operation computes.

Every XLA:CPU thunk (one fusion, convolution, copy, ...) is a trace event named after its HLO
instruction; the optimised HLO says what each one holds. To tell the model's parts apart,
`jax.named_scope`s are added around them while the step is traced (they only label the HLO
metadata: the computation is unchanged): `resize/` around `ops.resize_bilinear`, `batchnorm/`
around `ops.BatchNorm`, `in{H}x{W}/` around each scale's forward. Groups, first match wins:
  attention head at the largest scale (its output is unused in two-scale training; the forward
  runs for the BN running statistics the reference also updates), convolutions forward /
  backward, resize forward / backward, BatchNorm forward / backward,
  transposes and layout copies (with the producers XLA fused into them), dtype converts, loss,
  optimiser update, other.
Events of thunks running at once on different threads overlap, so the sum of operation times
can exceed the step's wall time: shares are of the sum.

Resizes to trace the step with: `ops` (hmsa_jax.ops.resize_bilinear: strided slices wherever
the sizes are integer multiples), `gather` (its version before issue 15: gathers forward,
scatter-adds backward), `matmul` (an [out, in] interpolation matrix per axis). `--resize gather
ops` compiles each step in one process and times them side by side, interleaved, before
profiling each.

    python benchmarks/profile_train_step.py                              # hrnet48, 128x256, batch 2
    python benchmarks/profile_train_step.py --model hrnet_tiny_ocr_mscale --size 64x128 --batch 1
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import glob
import json
import os
import re
import tempfile
import time

import common

GROUPS = ("attention head, largest scale (unused output)", "convolution fwd", "convolution bwd",
          "resize fwd", "resize bwd", "BatchNorm fwd", "BatchNorm bwd",
          "transpose / layout copy", "dtype convert", "loss", "optimiser update", "other fwd",
          "other bwd")


# ----------------------------------------------------------------------------- the resize prototype

@functools.lru_cache(maxsize=None)
def interpolation_matrix(in_size: int, out_size: int):
    """[out, in] float32 weights of F.interpolate(bilinear, align_corners=False) along one axis:
    row i holds 1 - w at lo[i] and w at hi[i] (their sum where lo == hi at the border)."""
    import numpy as np

    from hmsa_jax import ops

    lo, hi, hi_weight = ops._linear_taps(in_size, out_size)
    matrix = np.zeros((out_size, in_size), np.float32)
    rows = np.arange(out_size)
    np.add.at(matrix, (rows, lo), np.float32(1) - hi_weight)
    np.add.at(matrix, (rows, hi), hi_weight)
    return matrix


def _resize_axis_matmul(x, out_size: int, axis: int):
    import jax.numpy as jnp
    from jax import lax

    in_size = x.shape[axis]
    if in_size == out_size:
        return x
    matrix = jnp.asarray(interpolation_matrix(in_size, out_size), x.dtype)
    # Contract `axis` with the matrix's input dimension; the output dimension lands last.
    out = lax.dot_general(x, matrix, (((axis,), (1,)), ((), ())), precision=lax.Precision.HIGHEST)
    return jnp.moveaxis(out, -1, axis)


def resize_bilinear_matmul(x, size):
    """ops.resize_bilinear as two matmuls with [out, in] interpolation matrices (linear, so
    its transpose, the backward, is a matmul too, instead of a scatter-add)."""
    out_h, out_w = size
    return _resize_axis_matmul(_resize_axis_matmul(x, out_h, axis=1), out_w, axis=2)


def _resize_axis_gather(x, out_size: int, axis: int):
    """ops._resize_axis before issue 15: two gathers and a lerp (backward: two scatter-adds)."""
    import jax.numpy as jnp

    from hmsa_jax import ops

    in_size = x.shape[axis]
    if in_size == out_size:
        return x
    lo, hi, hi_weight = ops._linear_taps(in_size, out_size)
    weight_shape = [1] * x.ndim
    weight_shape[axis] = out_size
    hi_weight = jnp.asarray(hi_weight, x.dtype).reshape(weight_shape)
    x_lo = jnp.take(x, lo, axis=axis)
    x_hi = jnp.take(x, hi, axis=axis)
    return x_lo + hi_weight * (x_hi - x_lo)


def resize_bilinear_gather(x, size):
    out_h, out_w = size
    return _resize_axis_gather(_resize_axis_gather(x, out_h, axis=1), out_w, axis=2)


# name -> the resize to trace the step with (None: hmsa_jax.ops.resize_bilinear as it is)
RESIZES = {"ops": None, "gather": resize_bilinear_gather, "matmul": resize_bilinear_matmul}


# ----------------------------------------------------------------------------- labels

@contextlib.contextmanager
def labelled_model_code(resize: str = "ops"):
    """Named scopes around the resize, BatchNorm and each scale's forward (see the module
    docstring), and the chosen resize, while the step is traced; everything restored after."""
    import jax

    from hmsa_jax import ops
    from hmsa_jax.models import segmenter

    saved = [(ops, "resize_bilinear", ops.resize_bilinear), (ops.BatchNorm, "__call__", ops.BatchNorm.__call__)]
    resize_fn = RESIZES[resize] or ops.resize_bilinear
    bn_call = ops.BatchNorm.__call__

    def resize_bilinear(x, size):
        with jax.named_scope("resize"):
            return resize_fn(x, size)

    def batch_norm_call(self, x, *args, **kwargs):
        with jax.named_scope("batchnorm"):
            return bn_call(self, x, *args, **kwargs)

    ops.resize_bilinear = resize_bilinear
    ops.BatchNorm.__call__ = batch_norm_call
    for cls in (segmenter.OCRNet, segmenter.DeepLabV3Plus):
        one_scale = cls.one_scale
        saved.append((cls, "one_scale", one_scale))

        def scoped(self, x, train=False, _one_scale=one_scale):
            with jax.named_scope(f"in{x.shape[1]}x{x.shape[2]}"):
                return _one_scale(self, x, train)

        cls.one_scale = scoped
    try:
        yield
    finally:
        for owner, name, value in saved:
            setattr(owner, name, value)


# ----------------------------------------------------------------------------- HLO

_COMPUTATION = re.compile(r"^(?:ENTRY )?%([\w.\-]+) .*\{\s*$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = .+? ([a-z][a-z0-9\-]*)\(")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_CALLS = re.compile(r"calls=%([\w.\-]+)")


def parse_hlo(text: str) -> dict:
    """{instruction name: (opcode, op_name, [(opcode, op_name) of the computation it calls, its
    ROOT first])}."""
    computations, current, instructions = collections.defaultdict(list), None, {}
    for line in text.splitlines():
        match = _COMPUTATION.match(line)
        if match:
            current = match.group(1)
            continue
        match = _INSTRUCTION.match(line)
        if not match or current is None:
            continue
        name, opcode = match.groups()
        op_name = (_OP_NAME.search(line) or [None, ""])[1]
        calls = _CALLS.search(line)
        if line.lstrip().startswith("ROOT "):
            computations[current].insert(0, (opcode, op_name))
        else:
            computations[current].append((opcode, op_name))
        instructions[name] = (opcode, op_name, calls.group(1) if calls else None)
    return {name: (opcode, op_name, computations.get(called, []) if called else [])
            for name, (opcode, op_name, called) in instructions.items()}


_LAYOUT_OPS = {"transpose", "copy", "bitcast", "reshape", "parameter", "tuple", "get-tuple-element",
               "copy-start", "copy-done"}
# Data movement without arithmetic: with a transpose or copy in it, a fusion of these is a layout
# change (e.g. activations to [C, H, W, N] for a kernel-gradient convolution, fused with the
# slice or reverse that feeds it), whatever scope its producer came from.
_MOVEMENT_OPS = _LAYOUT_OPS | {"reverse", "slice", "pad", "concatenate", "broadcast", "constant",
                               "dynamic-slice", "dynamic-update-slice"}


def in_scope(op_name: str, scope: str) -> bool:
    """Whether `op_name` is inside the named scope (possibly wrapped, e.g. `jvp(scope)/...`)."""
    return re.search(rf"(^|[/(]){re.escape(scope)}[/)]", op_name) is not None


def classify(opcode: str, op_name: str, inner: list, largest_scale: str) -> str:
    ops_inside = [(opcode, op_name)] + list(inner)
    names = [n for _, n in ops_inside]
    opcodes = {o for o, _ in ops_inside}
    backward = any("transpose(" in n for n in names)
    direction = "bwd" if backward else "fwd"
    if any(in_scope(n, largest_scale) and "scale_attn" in n for n in names):
        return GROUPS[0]
    if "convolution" in opcodes:
        return f"convolution {direction}"
    if opcodes <= _MOVEMENT_OPS and opcodes & {"transpose", "copy"}:
        return "transpose / layout copy"
    if inner and inner[0][0] in ("copy", "transpose") and "transpose" in opcodes:
        # A fusion whose result is a transposed copy: XLA:CPU fuses the producer of an activation
        # (a resize's lerp, a BN + ReLU) into the transpose a kernel-gradient convolution needs.
        return "transpose / layout copy"
    if any(in_scope(n, "resize") for n in names):
        return "resize bwd" if backward else "resize fwd"
    if any(in_scope(n, "batchnorm") for n in names):
        return f"BatchNorm {direction}"
    if "convert" in opcodes and opcodes <= _LAYOUT_OPS | {"convert"}:
        return "dtype convert"
    if any("state.opt_state" in n or "/optax" in n or "apply_updates" in n for n in names) and not any(
            "OCRNet" in n or "DeepLab" in n for n in names):
        return "optimiser update"
    if any(("loss" in n or "take_along_axis" in n or "log_softmax" in n) and "OCRNet" not in n for n in names):
        return "loss"
    return f"other {direction}"


# ----------------------------------------------------------------------------- trace

def op_times(trace_dir: str) -> tuple[dict, float]:
    """({HLO instruction name: summed event seconds}, traced wall seconds of the python thread)."""
    from jax.profiler import ProfileData

    path = sorted(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True))[-1]
    data = ProfileData.from_file(path)
    totals = collections.Counter()
    wall = 0.0
    for plane in data.planes:
        if not plane.name.startswith("/host:CPU"):
            continue
        for line in plane.lines:
            for event in line.events:
                if line.name == "python":
                    if event.name.startswith("PjitFunction("):
                        wall = max(wall, event.duration_ns * 1e-9)
                    continue
                name = event.name.removeprefix("end: ")
                totals[name] += event.duration_ns * 1e-9
    return dict(totals), wall


def breakdown(hlo_text: str, times: dict, largest_scale: str, steps: int, top: int = 5) -> list[dict]:
    """Per group: seconds per step, share, thunk count and the `top` costliest thunks."""
    instructions = parse_hlo(hlo_text)
    members = collections.defaultdict(list)
    for name, t in times.items():
        if name not in instructions:
            continue  # executor bookkeeping events (ThunkExecutor::Execute, ...)
        opcode, op_name, inner = instructions[name]
        members[classify(opcode, op_name, inner, largest_scale)].append((t / steps, name, opcode, op_name))
    total = sum(t for group in members.values() for t, *_ in group)
    rows = []
    for g in GROUPS:
        if g not in members:
            continue
        seconds = sum(t for t, *_ in members[g])
        costliest = sorted(members[g], reverse=True)[:top]
        rows.append({"group": g, "seconds": seconds, "share": seconds / total if total else 0.0,
                     "thunks": len(members[g]),
                     "top": [{"seconds": t, "instruction": n, "opcode": o, "op_name": short_op_name(on)}
                             for t, n, o, on in costliest]})
    return rows


def short_op_name(op_name: str) -> str:
    """The op_name without the repeated model path prefix."""
    return re.sub(r"^jit\(train_step\)/", "", op_name).replace("OCRNet.two_scale/OCRNet.one_scale/", "")


# ----------------------------------------------------------------------------- run

def build(spec, resize: str):
    """(compiled step, state, batch, key, compile seconds) with the labels (and resize) in place."""
    import steps

    with labelled_model_code(resize):
        compiled, _, state, batch, key, compile_s = steps.compile_step(spec)
    return compiled, state, batch, key, compile_s


class Step:
    """One compiled step with its (donated, threaded) state, for `resize`."""

    def __init__(self, spec, resize: str):
        self.resize = resize
        self.compiled, self.state, self.batch, self.key, self.compile_s = build(spec, resize)
        self.times, self.first_loss = [], None

    def __call__(self) -> float:
        import jax

        started = time.perf_counter()
        self.state, metrics = self.compiled(self.state, self.batch, self.key)
        jax.block_until_ready(metrics)
        self.times.append(time.perf_counter() - started)
        if self.first_loss is None:
            self.first_loss = float(metrics["loss"])
        return self.times[-1]


def interleave(runs: list, reps: int) -> dict:
    """One warm-up call each, then `reps` rounds calling each step in turn; medians."""
    import statistics

    for _ in range(reps + 1):
        for run in runs:
            run()
    out = {run.resize: {"median_s": statistics.median(run.times[1:]), "times": run.times,
                        "first_loss": run.first_loss} for run in runs}
    if "gather" in out:
        out["ratio_over_gather"] = {r: out[r]["median_s"] / out["gather"]["median_s"] for r in list(out)}
    return out


def profile(run: Step, spec, steps_traced: int, raw_dir: str = "") -> dict:
    import jax

    run()  # at least one call before tracing
    with tempfile.TemporaryDirectory() as trace_dir:
        started = time.perf_counter()
        with jax.profiler.trace(trace_dir):
            for _ in range(steps_traced):
                run()
        wall = (time.perf_counter() - started) / steps_traced
        times, _ = op_times(trace_dir)
    hlo = run.compiled.as_text()
    if raw_dir:  # to regroup later without recompiling
        os.makedirs(raw_dir, exist_ok=True)
        with open(os.path.join(raw_dir, f"{run.resize}.hlo.txt"), "w") as f:
            f.write(hlo)
        with open(os.path.join(raw_dir, f"{run.resize}.times.json"), "w") as f:
            json.dump({"steps": steps_traced, "seconds": times}, f)
    rows = breakdown(hlo, times, f"in{spec.height}x{spec.width}", steps_traced)
    return {"resize": run.resize, "compile_s": run.compile_s, "step_wall_s": wall,
            "op_seconds_per_step": sum(r["seconds"] for r in rows), "first_loss": run.first_loss,
            "rows": rows}


def markdown(report: dict) -> str:
    c = report["config"]
    lines = [f"# Training step CPU profile: {c['model']} {c['size']} batch {c['batch']} float32, CE", "",
             common.machine_line(report['machine']) + (
             f", XLA_FLAGS={report['machine']['xla_flags'] or '(none)'}; "
             f"load average {report['load_before']} before, {report['load_after']} after. Per-step seconds "
             "are XLA:CPU thunk times summed over threads (they overlap), averaged over "
             f"{c['steps']} traced steps."), ""]
    for prof in report["profiles"]:
        lines += [f"## resize = {prof['resize']}: step wall {prof['step_wall_s']:.3g} s, "
                  f"op time {prof['op_seconds_per_step']:.3g} s/step, compile {prof['compile_s']:.0f} s", "",
                  "| group | s/step | share | thunks |", "| --- | --- | --- | --- |"]
        lines += [f"| {r['group']} | {r['seconds']:.3g} | {100 * r['share']:.1f}% | {r['thunks']} |"
                  for r in prof["rows"]]
        lines.append("")
    cmp = report.get("compare") or {}
    if len(cmp.get("ratio_over_gather", {})) > 1:
        lines += ["## Side by side (interleaved, medians)", "",
                  "| resize | step s | / gather | first loss |", "| --- | --- | --- | --- |"]
        lines += [f"| {r} | {cmp[r]['median_s']:.3g} | {ratio:.3f} | {cmp[r]['first_loss']:.6g} |"
                  for r, ratio in cmp["ratio_over_gather"].items()]
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="hrnet48_ocr_mscale")
    parser.add_argument("--size", default="128x256")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2, help="traced steps")
    parser.add_argument("--resize", nargs="+", choices=tuple(RESIZES), default=["ops"],
                        help="profile the step with each resize (two: also timed side by side)")
    parser.add_argument("--reps", type=int, default=3, help="interleaved timed steps of each")
    parser.add_argument("--raw-dir", default="", help="also keep each step's HLO text and per-thunk times here")
    parser.add_argument("--name", default="profile_train_step")
    parser.add_argument("--opt0", choices=("on", "off"), default="off")
    parser.add_argument("--out-dir", default=common.RESULTS_DIR)
    args = parser.parse_args(argv)
    # No persistent cache: an executable compiled earlier from the same program without the
    # labels would come back from it with metadata lacking the named scopes.
    common.setup_jax(args.opt0 == "on", cache=False)
    import steps

    spec = steps.spec_from_args(args, criterion="ce")
    load_before = common.load_average()
    runs = [Step(spec, resize) for resize in args.resize]
    compared = interleave(runs, args.reps)
    profiles = []
    for run in runs:
        prof = profile(run, spec, args.steps, args.raw_dir)
        print(f"resize={run.resize}: wall {prof['step_wall_s']:.3g}s/step, op time "
              f"{prof['op_seconds_per_step']:.3g}s, compile {prof['compile_s']:.0f}s")
        common.print_table(prof["rows"], ["group", "seconds", "share", "thunks"])
        profiles.append(prof)
    for resize, ratio in compared.get("ratio_over_gather", {}).items():
        print(f"{resize} / gather step time: {ratio:.3f}")
    report = {"benchmark": "profile_train_step", "machine": common.machine_info(),
              "config": {"model": args.model, "size": args.size, "batch": args.batch, "steps": args.steps,
                         "reps": args.reps, "opt0": args.opt0},
              "load_before": load_before, "compare": compared, "profiles": profiles}
    report["load_after"] = common.load_average()
    common.write_json(report, args.name, args.out_dir, markdown(report))
    return report


if __name__ == "__main__":
    main()
