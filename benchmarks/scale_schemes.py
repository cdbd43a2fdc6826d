"""Training cost of one step per scale scheme: single scale, hierarchical (0.5 + 1.0) and
explicit attention over {0.5, 1.0, 2.0}, as ratios to single scale.

FLOPs and temporary memory come from XLA: `compiled` analysis (cost_analysis + memory_analysis
of the compiled step: needs a compile) or `lowered` analysis (cost_analysis of the lowered,
pre-optimisation module: FLOPs only, no compile; what makes full-width HRNet-W48 at 1024x2048
feasible on a CPU). The paper: hierarchical 1.25x, explicit 5.25x the single-scale compute.

    python benchmarks/scale_schemes.py                    # hrnet_tiny at 64x128, compiled
    python benchmarks/scale_schemes.py --sizes 64x128 1024x2048
    python benchmarks/scale_schemes.py --family hrnet48 --sizes 1024x2048 --analysis lowered
    python benchmarks/scale_schemes.py --full      # hrnet48, 512x1024 + 1024x2048, compiled
"""
from __future__ import annotations

import argparse
import time

import common

PAPER_FLOP_RATIOS = {"single": 1.0, "hierarchical": 1.25, "explicit": 5.25}


def measure_scheme(spec, analysis: str) -> dict:
    """One scheme's step cost: lower (and compile unless analysis == 'lowered')."""
    import steps

    step, model, tx, mesh = steps.build_step(spec)
    args = steps.abstract_args(spec, model, tx, mesh)
    started = time.perf_counter()
    lowered = step.lower(*args)
    row = {"lower_s": time.perf_counter() - started}
    if analysis == "lowered":
        row.update(common.lowered_cost(lowered))
        return row
    started = time.perf_counter()
    compiled = lowered.compile()
    row["compile_s"] = time.perf_counter() - started
    row.update(common.compiled_cost_and_memory(compiled))
    return row


def add_ratios(rows: list[dict]) -> None:
    """flops_ratio / temp_ratio against the single-scale row of the same size."""
    base = {r["size"]: r for r in rows if r["scheme"] == "single"}
    for row in rows:
        ref = base.get(row["size"])
        if ref is None:
            continue
        row["flops_ratio"] = row["flops"] / ref["flops"] if ref.get("flops") else None
        if row.get("temp_bytes") is not None and ref.get("temp_bytes"):
            row["temp_ratio"] = row["temp_bytes"] / ref["temp_bytes"]
        row["paper_flops_ratio"] = PAPER_FLOP_RATIOS[row["scheme"]]


def run(family: str, sizes: list[str], analysis: str, dtype: str = "float32", batch: int = 1,
        schemes=None) -> list[dict]:
    import steps

    rows = []
    for size in sizes:
        height, width = common.parse_size(size)
        for scheme in schemes or steps.SCHEMES:
            spec = steps.StepSpec(steps.scheme_model_name(family, scheme), height, width,
                                  batch=batch, dtype=dtype)
            row = {"scheme": scheme, "model": spec.model_name, "size": size, "batch": batch,
                   "dtype": dtype, "analysis": analysis, **measure_scheme(spec, analysis)}
            row["temp_mib"] = common.mib(row.get("temp_bytes"))
            print(f"  {scheme:<12} {size:<10} flops {row['flops']:.4g}  "
                  f"temp {row['temp_mib'] or float('nan'):.1f} MiB  lower {row['lower_s']:.1f}s"
                  + (f"  compile {row['compile_s']:.1f}s" if "compile_s" in row else ""), flush=True)
            rows.append(row)
    add_ratios(rows)
    return rows


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default=None, help="hrnet_tiny | hrnet18 | hrnet32 | hrnet48 | "
                                                       "resnet_tiny | resnet50 (default hrnet_tiny; --full: hrnet48)")
    parser.add_argument("--sizes", nargs="+", default=None, help="crops HxW (default 64x128; --full 512x1024 1024x2048)")
    parser.add_argument("--analysis", choices=("compiled", "lowered"), default="compiled")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--name", default="scale_schemes", help="JSON file name in --out-dir")
    parser.add_argument("--full", action="store_true", help="hrnet48 at 512x1024 and 1024x2048")
    common.add_jax_arguments(parser)
    args = parser.parse_args(argv)
    common.setup_from_args(args)
    family = args.family or ("hrnet48" if args.full else "hrnet_tiny")
    sizes = args.sizes or (["512x1024", "1024x2048"] if args.full else ["64x128"])
    print(f"scale schemes: {family}, {args.analysis} analysis, sizes {sizes}", flush=True)
    rows = run(family, sizes, args.analysis, args.dtype, args.batch)
    common.print_table(rows, ["scheme", "size", "flops", "flops_ratio", "paper_flops_ratio",
                              "temp_mib", "temp_ratio", "lower_s", "compile_s"])
    report = {"benchmark": "scale_schemes", "family": family, "analysis": args.analysis,
              "criterion": "ce", "machine": common.machine_info(), "rows": rows}
    common.write_json(report, args.name, args.out_dir)
    return report


if __name__ == "__main__":
    main()
