"""Shared benchmark helpers: JAX setup, machine description, timing, XLA analyses, JSON.

Import `setup_jax` before anything imports JAX's backend: XLA_FLAGS are read once.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_DIR = os.path.join(REPO_ROOT, "benchmarks", "results")
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)  # run from a checkout without installing

# Dense per-device peak FLOP/s (no sparsity) by compute dtype. float32 on NVIDIA tensor-core
# GPUs is taken as the TF32 peak: XLA's DEFAULT precision lets f32 convs/matmuls use TF32.
# Sources: NVIDIA H100/H200 SXM and A100 SXM datasheets; Google Cloud TPU system architecture.
PEAK_FLOPS = {
    "H200": {"bfloat16": 989e12, "float32": 494e12},
    "H100": {"bfloat16": 989e12, "float32": 494e12},  # SXM; PCIe is 756e12 / 378e12
    "A100": {"bfloat16": 312e12, "float32": 156e12},
    "TPU v6": {"bfloat16": 918e12, "float32": 918e12 / 4},
    "TPU v5p": {"bfloat16": 459e12, "float32": 459e12 / 4},
    "TPU v5 lite": {"bfloat16": 197e12, "float32": 197e12 / 4},
    "TPU v5e": {"bfloat16": 197e12, "float32": 197e12 / 4},
    "TPU v4": {"bfloat16": 275e12, "float32": 275e12 / 4},
}


def add_jax_arguments(parser) -> None:
    parser.add_argument("--opt0", choices=("auto", "on", "off"), default="off",
                        help="XLA CPU --xla_backend_optimization_level=0: a third less compile time but "
                             "1.8-4x slower steps (opt0_effect.py), so off by default; auto = on unless --full")
    parser.add_argument("--no-cache", action="store_true", help="no persistent compilation cache")
    parser.add_argument("--out-dir", default=RESULTS_DIR)


def add_step_arguments(parser, model: str = "hrnet48_ocr_mscale", size: str = "128x256", batch: int = 2) -> None:
    """--model, --size HxW and --batch of the one training step a benchmark measures."""
    parser.add_argument("--model", default=model)
    parser.add_argument("--size", default=size)
    parser.add_argument("--batch", type=int, default=batch)


def setup_jax(opt0: bool, cache: bool = True) -> None:
    """XLA flags and the persistent compile cache; call before the first JAX computation."""
    if opt0 and "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   " --xla_backend_optimization_level=0").strip()
    import jax

    if cache:
        jax.config.update("jax_compilation_cache_dir", os.path.join(REPO_ROOT, ".jax_cache"))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def setup_from_args(args) -> None:
    opt0 = args.opt0 == "on" or (args.opt0 == "auto" and not getattr(args, "full", False))
    args.opt0_applied = opt0
    setup_jax(opt0, cache=not args.no_cache)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    import jax

    device = jax.devices()[0]
    return {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "device_kind": device.device_kind,
        "device_count": jax.device_count(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


def device_peak_flops(dtype_name: str) -> float | None:
    """The table's peak for this device kind, or None (CPUs, unknown devices)."""
    import jax

    kind = jax.devices()[0].device_kind
    for key, peaks in PEAK_FLOPS.items():
        if key.lower() in kind.lower():
            return peaks.get(dtype_name)
    return None


def peak_device_memory() -> int | None:
    """Peak bytes in use on device 0 since start, where the backend reports it (GPU/TPU)."""
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def time_call(fn: Callable[[], Any], warmup: int = 1, repeats: int = 5) -> dict:
    """Median wall time of `fn()` with its result blocked on; `warmup` untimed calls first."""
    import jax

    for _ in range(warmup):
        jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - started)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
            "repeats": repeats}


def _first(analysis):
    """cost_analysis() is a dict in new JAX and a one-element list in older releases."""
    if isinstance(analysis, (list, tuple)):
        return analysis[0] if analysis else {}
    return analysis or {}


def lowered_cost(lowered) -> dict:
    """FLOPs and bytes from the lowered (pre-compile, pre-fusion) module: no compile needed."""
    cost = _first(lowered.cost_analysis())
    return {"flops": float(cost.get("flops", 0.0)), "bytes_accessed": float(cost.get("bytes accessed", 0.0))}


def compiled_cost_and_memory(compiled) -> dict:
    """FLOPs/bytes after XLA's optimisation and the buffer assignment's memory figures."""
    cost = _first(compiled.cost_analysis())
    memory = compiled.memory_analysis()
    result = {"flops": float(cost.get("flops", 0.0)),
              "bytes_accessed": float(cost.get("bytes accessed", 0.0))}
    if memory is not None:
        result.update({
            "temp_bytes": int(memory.temp_size_in_bytes),
            "argument_bytes": int(memory.argument_size_in_bytes),
            "output_bytes": int(memory.output_size_in_bytes),
            "alias_bytes": int(memory.alias_size_in_bytes),
        })
    return result


class CompileCounter:
    """Counts jit lowerings (a jit cache miss: a new compilation, unless the persistent cache
    holds it) and XLA backend compile time while active."""

    LOWER_EVENT = "/jax/core/compile/jaxpr_to_mlir_module_duration"
    COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"

    def __init__(self):
        self.lowerings = 0
        self.compile_seconds = 0.0
        self._active = False
        import jax

        jax.monitoring.register_event_duration_secs_listener(self._listen)

    def _listen(self, event: str, duration: float, **_) -> None:
        if not self._active:
            return
        if event == self.LOWER_EVENT:
            self.lowerings += 1
        elif event == self.COMPILE_EVENT:
            self.compile_seconds += duration

    def __enter__(self):
        self.lowerings, self.compile_seconds, self._active = 0, 0.0, True
        return self

    def __exit__(self, *exc):
        self._active = False


def write_json(report: dict, name: str, out_dir: str = RESULTS_DIR, markdown: str | None = None) -> str:
    """`name`.json under out_dir, and `name`.md beside it when a markdown table is given."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{name}.json")
    with open(path, "w") as f:
        json.dump(report, f, indent=2, default=float)
    print(f"wrote {path}")
    if markdown is not None:
        with open(os.path.join(out_dir, f"{name}.md"), "w") as f:
            f.write(markdown)
    return path


def machine_line(machine: dict) -> str:
    """'date, cpu (n cores), jax version' for a results table's header."""
    return f"{machine['date']}, {machine['cpu']} ({machine['cpu_count']} cores), jax {machine['jax']}"


def print_table(rows: list[dict], columns: list[str]) -> None:
    """Rows as an aligned text table (numbers in 4 significant digits)."""
    def cell(value):
        if isinstance(value, float):
            return f"{value:.4g}"
        return "-" if value is None else str(value)

    cells = [[cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for r in cells:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)))


FULL_MODEL, CPU_MODEL = "hrnet48_ocr_mscale", "hrnet_tiny_ocr_mscale"


def default_model(args) -> str:
    """--model, else the paper's model with --full and the tiny width on CPU."""
    return args.model or (FULL_MODEL if args.full else CPU_MODEL)


def default_dtype(args) -> str:
    return args.dtype or ("bfloat16" if args.full else "float32")


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages, rounded: what the reports print beside a time."""
    return [round(v, 2) for v in os.getloadavg()]


def parse_size(text: str) -> tuple[int, int]:
    """'256x512' -> (256, 512)."""
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError as e:
        raise ValueError(f"size {text!r}: expected HEIGHTxWIDTH, e.g. 256x512") from e
    return height, width


def mib(n: float | None) -> float | None:
    return None if n is None else n / 2 ** 20
