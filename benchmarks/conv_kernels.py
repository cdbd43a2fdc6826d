"""How much of the gap to the PyTorch reference on CPU is the convolution kernels alone: every
convolution the model runs, timed one by one as XLA:CPU compiles it and as torch runs it
(oneDNN), side by side in one process, summed with their counts.

The convolutions are read from the jaxpr of the model's forward (the two-scale training forward
at the training batch, or the {0.5, 1, 2} inference forward at batch 1), with every Conv2d
traced as `lax.conv_general_dilated`: shapes, strides, padding, dilation and groups, counted per
distinct configuration. Each is then timed, jitted:
  jax         `ops.conv_general_dilated`, what the model runs (NHWC, HWIO; a 1x1 stride-1
              convolution as a `dot_general` over channels);
  jax-conv    `lax.conv_general_dilated` for every one (the model before the 1x1 dots);
  jax-no-ynn  jax-conv compiled with YNNPACK's convolution fusion removed from XLA:CPU's list
              (`xla_cpu_experimental_ynn_fusion_type`, jax 0.10), skipped where this jaxlib does
              not know the option;
  torch       `F.conv2d` in NCHW, as the reference runs it.
`fwd` is the forward; `fwd+bwd` the forward and both gradients (input and kernel) from a
random cotangent. Each round times every variant in turn, a block of calls each.

    python benchmarks/conv_kernels.py                                  # hrnet48, 128x256, batch 2
    python benchmarks/conv_kernels.py --task infer
    python benchmarks/conv_kernels.py --model hrnet_tiny_ocr_mscale --size 32x64 --reps 1
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import statistics
import time

import common

INFER_SCALES = (0.5, 1.0, 2.0)
# The one YNNPACK fusion type XLA:CPU keeps when compiled with this option: its own dots, not
# its convolutions (a compile option sets the whole list; XLA_FLAGS could remove one item).
WITHOUT_YNN_CONV = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}


def forward_fn(model, task: str):
    import jax

    if task == "train":
        return lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"],
                                        rngs={"dropout": jax.random.key(0)})
    return lambda v, x: model.apply(v, x, train=False, scales=INFER_SCALES)


def jaxpr_equations(jaxpr):
    """Every equation, recursing into the sub-jaxprs (pjit, custom_jvp, remat, cond) of its params."""
    for eqn in jaxpr.eqns:
        yield eqn
        for value in eqn.params.values():
            for item in value if isinstance(value, (tuple, list)) else (value,):  # cond's branches
                inner = getattr(item, "jaxpr", item)
                if hasattr(inner, "eqns"):
                    yield from jaxpr_equations(inner)


@contextlib.contextmanager
def every_conv_as_lax_conv():
    """The model's Conv2d layers call `lax.conv_general_dilated` directly, 1x1s included."""
    import jax

    from hmsa_jax import ops

    saved = ops.conv_general_dilated
    ops.conv_general_dilated = jax.lax.conv_general_dilated
    try:
        yield
    finally:
        ops.conv_general_dilated = saved


def model_convolutions(model_name: str, task: str, height: int, width: int, batch: int) -> collections.Counter:
    """{conv configuration: count} of one forward, from its jaxpr (no compile, no FLOP run)."""
    import jax
    import jax.numpy as jnp

    from hmsa_jax import create_model

    model = create_model(model_name, num_classes=19)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3))))
    images = jax.ShapeDtypeStruct((batch if task == "train" else 1, height, width, 3), jnp.float32)
    with every_conv_as_lax_conv():
        closed = jax.make_jaxpr(forward_fn(model, task))(variables, images)
    counts = collections.Counter()
    for eqn in jaxpr_equations(closed.jaxpr):
        if eqn.primitive.name != "conv_general_dilated":
            continue
        p = eqn.params
        if p["dimension_numbers"].lhs_spec != (0, 3, 1, 2) or p["dimension_numbers"].rhs_spec != (3, 2, 0, 1):
            raise ValueError(f"expected NHWC x HWIO convolutions, got {p['dimension_numbers']}")
        counts[(tuple(eqn.invars[0].aval.shape), tuple(eqn.invars[1].aval.shape), tuple(p["window_strides"]),
                tuple(tuple(pad) for pad in p["padding"]), tuple(p["rhs_dilation"]),
                p["feature_group_count"])] += 1
    return counts


def is_pointwise(conv) -> bool:
    """Whether the model runs this configuration as a matmul (`ops.conv_general_dilated`)."""
    from hmsa_jax import ops

    lhs, rhs, strides, padding, dilation, groups = conv
    return ops.runs_as_matmul(rhs, strides, padding, feature_group_count=groups)


def describe(conv) -> str:
    lhs, rhs, strides, padding, dilation, groups = conv
    text = f"{lhs[1]}x{lhs[2]} {rhs[2]}->{rhs[3]} k{rhs[0]}"
    if strides != (1, 1):
        text += f" s{strides[0]}"
    if dilation != (1, 1):
        text += f" d{dilation[0]}"
    if groups != 1:
        text += f" g{groups}"
    return text + f" n{lhs[0]}"


def jax_calls(conv, conv_fn, compiler_options=None) -> dict:
    """{"fwd": fn, "fwd+bwd": fn} for one configuration through `conv_fn` (a function with
    `lax.conv_general_dilated`'s signature), compiled (with `compiler_options`)."""
    import jax
    import numpy as np

    lhs_shape, rhs_shape, strides, padding, dilation, groups = conv
    rng = np.random.default_rng(0)
    x = jax.device_put(rng.standard_normal(lhs_shape, dtype=np.float32))
    w = jax.device_put(rng.standard_normal(rhs_shape, dtype=np.float32) * 0.05)

    def apply(x, w):
        return conv_fn(x, w, strides, padding, rhs_dilation=dilation, dimension_numbers=("NHWC", "HWIO", "NHWC"),
                       feature_group_count=groups)

    def forward_backward(x, w, cotangent):
        y, vjp = jax.vjp(apply, x, w)
        return y, vjp(cotangent)

    cotangent = jax.device_put(rng.standard_normal(jax.eval_shape(apply, x, w).shape, dtype=np.float32))
    forward = jax.jit(apply).lower(x, w).compile(compiler_options)
    both = jax.jit(forward_backward).lower(x, w, cotangent).compile(compiler_options)
    return {"fwd": lambda: jax.block_until_ready(forward(x, w)),
            "fwd+bwd": lambda: jax.block_until_ready(both(x, w, cotangent))}


def torch_calls(conv) -> dict:
    """The same configuration as F.conv2d on NCHW tensors, as the reference runs it."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    lhs_shape, rhs_shape, strides, padding, dilation, groups = conv
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal(lhs_shape, dtype=np.float32)).permute(0, 3, 1, 2).contiguous()
    w = torch.from_numpy(rng.standard_normal(rhs_shape, dtype=np.float32) * 0.05).permute(3, 2, 0, 1).contiguous()
    (top, bottom), (left, right) = padding
    symmetric = top == bottom and left == right

    def apply(x, w):
        if not symmetric:
            x = F.pad(x, (left, right, top, bottom))
        return F.conv2d(x, w, stride=strides, padding=(top, left) if symmetric else 0,
                        dilation=dilation, groups=groups)

    with torch.no_grad():
        cotangent = torch.randn_like(apply(x, w))
    x.requires_grad_(True)
    w.requires_grad_(True)

    def forward():
        with torch.inference_mode():
            apply(x, w)

    def forward_backward():
        apply(x, w).backward(cotangent)
        x.grad = w.grad = None

    return {"fwd": forward, "fwd+bwd": forward_backward}


def ynn_option_known() -> bool:
    """Whether this jaxlib's XLA:CPU takes the YNNPACK fusion option (jax 0.10 does)."""
    import jax
    import jax.numpy as jnp

    try:
        jax.jit(jnp.sin).lower(jnp.zeros(2)).compile(WITHOUT_YNN_CONV)
    except Exception:  # noqa: BLE001 - an unknown option is an INVALID_ARGUMENT runtime error
        return False
    return True


def time_convolution(conv, passes: tuple, reps: int, rounds: int, with_ynn_variant: bool) -> dict:
    """{variant: {pass: median seconds}} for one configuration: `rounds` rounds, each running
    every variant in turn as one untimed call then `reps` timed ones."""
    import jax

    from hmsa_jax import ops

    variants = {"jax": jax_calls(conv, ops.conv_general_dilated),
                "jax-conv": jax_calls(conv, jax.lax.conv_general_dilated)}
    if with_ynn_variant:
        variants["jax-no-ynn"] = jax_calls(conv, jax.lax.conv_general_dilated, WITHOUT_YNN_CONV)
    variants["torch"] = torch_calls(conv)
    out = {}
    for pass_name in passes:
        times = collections.defaultdict(list)
        for _ in range(rounds):
            for name, fns in variants.items():
                # Blocks, not single calls, in turn: right after torch, its OpenMP threads still
                # spin on the two cores and slow the next few milliseconds of XLA's threads.
                fns[pass_name]()
                for _ in range(reps):
                    started = time.perf_counter()
                    fns[pass_name]()
                    times[name].append(time.perf_counter() - started)
        for name, measured in times.items():
            out.setdefault(name, {})[pass_name] = statistics.median(measured)
    return out


def totals(rows: list, variants: list, passes: tuple) -> dict:
    """{group: {variant: {pass: seconds summed over the group's convolutions, counts included}}}
    for all of them, the 1x1 stride-1 ones (which the model runs as matmuls) and the others."""
    groups = {"all": rows, "1x1 stride 1": [r for r in rows if r["pointwise"]],
              "other": [r for r in rows if not r["pointwise"]]}
    return {g: {v: {p: sum(r["count"] * r["seconds"][v][p] for r in members) for p in passes} for v in variants}
            for g, members in groups.items()}


def markdown(report: dict) -> str:
    c, t = report["config"], report["totals"]
    passes, variants = c["passes"], report["variants"]
    ours = [v for v in variants if v != "torch"]
    lines = [f"# Convolution kernels alone: {c['model']} {c['task']} ({c['size']}, batch {c['batch']}), "
             "XLA:CPU vs torch", "",
             common.machine_line(report["machine"]) + f", torch {report['torch']} ({report['torch_threads']} "
             f"threads); medians of {c.get('rounds', 1)} rounds x {c['reps']} timed calls, variants in turn; load average {report['load_before']} "
             f"before, {report['load_after']} after. {report['distinct']} distinct convolutions, "
             f"{report['count']} calls in one forward.", "",
             "## Summed over the forward's convolutions", "",
             "jax and jax-conv run the same program for every convolution but the 1x1 stride-1 ones: "
             "their difference on the others is the measurement's noise.", "",
             "| convolutions | pass | " + " | ".join(f"{v} s" for v in variants) + " | "
             + " | ".join(f"{v} / torch" for v in ours) + " |",
             "| --- | --- |" + " --- |" * (len(variants) + len(ours))]
    for group, by_variant in t.items():
        for p in passes:
            cells = " | ".join(f"{by_variant[v][p]:.3g}" for v in variants)
            ratios = " | ".join(f"{by_variant[v][p] / by_variant['torch'][p]:.2f}" for v in ours)
            lines.append(f"| {group} | {p} | {cells} | {ratios} |")
    lines += ["", "## The costliest convolutions (by torch's time x count)", "",
              "| convolution | count | " + " | ".join(f"{v} {p} ms" for p in passes for v in variants) + " |",
              "| --- | --- |" + " --- |" * (len(passes) * len(variants))]
    key = passes[-1]
    for r in sorted(report["rows"], key=lambda r: -r["count"] * r["seconds"]["torch"][key])[:12]:
        cells = " | ".join(f"{r['seconds'][v][p] * 1e3:.2f}" for p in passes for v in variants)
        lines.append(f"| {r['conv']} | {r['count']} | {cells} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_step_arguments(parser)
    parser.add_argument("--task", choices=("train", "infer"), default="train",
                        help="train: the two-scale training forward, fwd and fwd+bwd; infer: the {0.5, 1, 2} "
                             "inference forward at batch 1, fwd only")
    parser.add_argument("--reps", type=int, default=5, help="timed calls per variant in each round")
    parser.add_argument("--rounds", type=int, default=2, help="rounds over the variants")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--name", default="")
    common.add_jax_arguments(parser)
    args = parser.parse_args(argv)
    common.setup_from_args(args)
    import torch

    torch.set_num_threads(args.threads)
    height, width = common.parse_size(args.size)
    passes = ("fwd", "fwd+bwd") if args.task == "train" else ("fwd",)
    load_before = common.load_average()
    counts = model_convolutions(args.model, args.task, height, width, args.batch)
    with_ynn_variant = ynn_option_known()
    rows = []
    for i, (conv, count) in enumerate(sorted(counts.items()), 1):
        seconds = time_convolution(conv, passes, args.reps, args.rounds, with_ynn_variant)
        rows.append({"conv": describe(conv), "count": count, "lhs": conv[0], "rhs": conv[1],
                     "pointwise": is_pointwise(conv), "seconds": seconds})
        print(f"  [{i}/{len(counts)}] {describe(conv):<28} x{count:<3} " + "  ".join(
            f"{v} {p} {s * 1e3:.2f} ms" for v, ps in seconds.items() for p, s in ps.items()), flush=True)
    variants = ["jax", "jax-conv"] + (["jax-no-ynn"] if with_ynn_variant else []) + ["torch"]
    report = {"benchmark": "conv_kernels", "machine": common.machine_info(), "torch": torch.__version__,
              "torch_threads": args.threads,
              "config": {"model": args.model, "task": args.task, "size": args.size,
                         "batch": args.batch if args.task == "train" else 1,
                         "reps": args.reps, "rounds": args.rounds, "passes": list(passes), "opt0": args.opt0_applied},
              "variants": variants, "distinct": len(rows), "count": sum(r["count"] for r in rows),
              "totals": totals(rows, variants, passes), "rows": rows,
              "load_before": load_before, "load_after": common.load_average()}
    for p in passes:
        print(f"  total {p}: " + "  ".join(f"{v} {report['totals']['all'][v][p]:.3f} s" for v in variants), flush=True)
    common.write_json(report, args.name or f"conv_kernels_{args.task}", args.out_dir, markdown(report))
    return report


if __name__ == "__main__":
    main()
