"""Our training step and 3-scale inference against the independent PyTorch implementation
(tests/torch_reference.py), side by side in one process: same architecture, same weights (the
reference's random state dict converted with `hmsa_jax.convert`), same input, same threads.

Repetitions interleave (jax, torch, jax, torch, ...) so that a change in the machine's load
hits both; the figures are medians after the warm-up calls (the first JAX call compiles).
- train: `jit_train_step` (two-scale hierarchical forward + backward, CE, SGD momentum update)
  vs the reference's `training_loss(...).backward()` + `torch.optim.SGD.step()` in train mode.
- infer: `model.apply(..., train=False, scales=(0.5, 1.0, 2.0))` returning the fused logits,
  jitted, vs the reference's `nscale()` under `torch.inference_mode()`.
Threads: torch.set_num_threads(--threads); XLA:CPU runs its default thread pool (one thread
per core) unless --xla-flags says otherwise. XLA flags are the compiler's defaults unless
--opt0 on (what runtime.cpu_fast_compile=True sets; opt0_effect.py measures its cost).

    python benchmarks/vs_reference.py                                  # hrnet48, 128x256, batch 2
    python benchmarks/vs_reference.py --model hrnet_tiny --size 32x64 --batch 1 --reps 1
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import common

TESTS_DIR = os.path.join(common.REPO_ROOT, "tests")
if TESTS_DIR not in sys.path:
    sys.path.insert(0, TESTS_DIR)  # torch_reference.py lives with the parity tests

MODELS = ("hrnet48", "hrnet_tiny")
INFER_SCALES = (0.5, 1.0, 2.0)
NUM_CLASSES = 19


def torch_model(family: str, num_classes: int):
    import torch_reference as R

    if family == "hrnet_tiny":
        return R.tiny_hrnet_ocr_mscale(num_classes)
    return R.HRNetOCRMscale(num_classes)  # the reference's defaults are HRNetV2-W48 + OCR


def shared_weights(family: str, seed: int = 20):
    """(torch module with random weights and BN statistics, our model, our variables holding
    the same values). Dropout is off in both (OCR's Dropout2d), so the first losses agree."""
    import torch_reference as R
    from hmsa_jax.convert.mapping import convert_state_dict
    from hmsa_jax.models import create_model

    reference = R.randomize_(torch_model(family, NUM_CLASSES), seed=seed)
    name = f"{family}_ocr_mscale"
    model = create_model(name, num_classes=NUM_CLASSES, ocr_dropout=0.0)
    state = {k: v.numpy() for k, v in reference.state_dict().items()}
    variables, _ = convert_state_dict(state, model, source="torch_reference", model_name=name, strict=True)
    return reference, model, variables


def synthetic_inputs(batch: int, height: int, width: int, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    images = rng.standard_normal((batch, height, width, 3), dtype=np.float32)
    labels = rng.integers(0, NUM_CLASSES + 1, (batch, height, width)).astype(np.int32)
    labels[labels == NUM_CLASSES] = 255
    return images, labels


def interleave(calls: dict, warmup: int, reps: int) -> dict:
    """{name: fn} -> {name: {"median_s", "min_s", "max_s", "first_s", "times"}}: every
    repetition calls each fn once, in turn; the first `warmup` rounds are not counted."""
    times = {name: [] for name in calls}
    for _ in range(warmup + reps):
        for name, fn in calls.items():
            started = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - started)
    out = {}
    for name, measured in times.items():
        counted = measured[warmup:]
        out[name] = {"median_s": statistics.median(counted), "min_s": min(counted),
                     "max_s": max(counted), "first_s": measured[0], "times": measured}
    return out


def synchronize(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def train_calls(reference, model, variables, images, labels, device: str = "cpu"):
    """{"jax": fn, "torch": fn}, each one training step; and a dict of their first losses."""
    import jax
    import numpy as np
    import torch
    import torch_reference as R

    from hmsa_jax import parallel
    from hmsa_jax.train.state import create_train_state

    step, tx, mesh = jax_train_step(model)
    state = parallel.replicate(create_train_state(model, tx, jax.random.key(0), images.shape, variables), mesh)
    device_batch = parallel.global_batch({"image": images, "label": labels}, mesh)
    key = jax.random.key(0)
    holder = {"state": state}
    losses = {}

    def jax_step():
        holder["state"], metrics = step(holder["state"], device_batch, key)
        loss = float(jax.block_until_ready(metrics["loss"]))
        losses.setdefault("jax", loss)

    R.train_without_dropout_(reference.to(device))
    optimizer = torch.optim.SGD(reference.parameters(), lr=1e-2, momentum=0.9, weight_decay=1e-4)
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).to(device)
    y = torch.from_numpy(labels).long().to(device)

    def torch_step():
        optimizer.zero_grad(set_to_none=True)
        loss = reference.training_loss(x, y, "ce")
        loss.backward()
        optimizer.step()
        synchronize(device)
        losses.setdefault("torch", loss.item())

    return {"jax": jax_step, "torch": torch_step}, losses


def jax_train_step(model, criterion: str = "ce"):
    """(jitted step, tx, mesh) as benchmarks/steps.build_step makes them, for a given model."""
    from hmsa_jax import parallel
    from hmsa_jax.train.optimizer import make_optimizer
    from hmsa_jax.train.step import LossConfig, StepConfig, jit_train_step

    tx = make_optimizer(learning_rate=1e-2, total_steps=1000)
    mesh = parallel.make_mesh(1)
    config = StepConfig(loss=LossConfig(criterion=criterion))
    return jit_train_step(model, tx, config, mesh), tx, mesh


def infer_calls(reference, model, variables, images, scales=INFER_SCALES, device: str = "cpu"):
    """{"jax": fn, "torch": fn}, each one 3-scale forward; and a dict of their logits."""
    import jax
    import numpy as np
    import torch

    forward = jax.jit(lambda v, x: model.apply(v, x, train=False, scales=scales)["logits"])
    device_images = jax.device_put(images)
    logits = {}

    def jax_infer():
        out = jax.block_until_ready(forward(variables, device_images))
        logits.setdefault("jax", out)

    reference.to(device).eval()
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).to(device)

    def torch_infer():
        with torch.inference_mode():
            out = reference.nscale(x, scales)["pred"]
        synchronize(device)
        logits.setdefault("torch", out)

    return {"jax": jax_infer, "torch": torch_infer}, logits


def row(task: str, timings: dict, **extra) -> dict:
    jax_s, torch_s = timings["jax"]["median_s"], timings["torch"]["median_s"]
    return {"task": task, "jax_s": jax_s, "torch_s": torch_s, "ratio": jax_s / torch_s,
            "jax_first_s": timings["jax"]["first_s"], "torch_first_s": timings["torch"]["first_s"],
            "jax_times": timings["jax"]["times"], "torch_times": timings["torch"]["times"], **extra}


def markdown(report: dict) -> str:
    c = report["config"]
    lines = [f"# hmsa_jax vs the PyTorch reference ({c['model']}, {c['size']}, float32)", "",
             common.machine_line(report['machine']) + (
             f", torch {report['torch']}, torch threads {c['threads']}, "
             f"{'process pinned to ' + str(c['pinned_cores']) + ' core(s), ' if c.get('pinned_cores') else ''}"
             f"XLA_FLAGS={report['machine']['xla_flags'] or '(none)'}; medians of {c['reps']} interleaved "
             f"repetitions after {c['warmup']} warm-up; load average {report['load_before']} before, "
             f"{report['load_after']} after."), "",
             "| task | batch | jax s | torch s | jax / torch | jax first call s | check |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in report["rows"]:
        lines.append(f"| {r['task']} | {r['batch']} | {r['jax_s']:.3g} | {r['torch_s']:.3g} | "
                     f"{r['ratio']:.2f} | {r['jax_first_s']:.1f} | {r['check']} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=MODELS, default="hrnet48")
    parser.add_argument("--size", default="128x256", help="HxW of the training crop and the inference image")
    parser.add_argument("--batch", type=int, default=2, help="training batch (inference: batch 1)")
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions of each")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--pin", action="store_true",
                        help="pin the process to the first --threads cores (XLA's thread pool follows the "
                             "affinity): a like-for-like comparison on a loaded machine")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="torch's device (JAX runs on its default backend)")
    parser.add_argument("--tasks", nargs="+", choices=("train", "infer"), default=["train", "infer"])
    parser.add_argument("--name", default="vs_reference")
    parser.add_argument("--opt0", choices=("on", "off"), default="off",
                        help="XLA CPU --xla_backend_optimization_level=0 (what hmsa commands use on CPU)")
    parser.add_argument("--no-cache", action="store_true", help="no persistent compilation cache")
    parser.add_argument("--out-dir", default=common.RESULTS_DIR)
    args = parser.parse_args(argv)
    if args.pin:  # before JAX starts its CPU client, which sizes its thread pool by the affinity
        os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:args.threads]))
    common.setup_jax(args.opt0 == "on", cache=not args.no_cache)
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    height, width = common.parse_size(args.size)
    load_before = common.load_average()
    reference, model, variables = shared_weights(args.model)
    rows = []
    if "train" in args.tasks:
        images, labels = synthetic_inputs(args.batch, height, width)
        calls, losses = train_calls(reference, model, variables, images, labels, args.device)
        timings = interleave(calls, args.warmup, args.reps)
        check = f"first loss jax {losses['jax']:.5g} torch {losses['torch']:.5g}"
        rows.append(row("train step (2-scale, CE, SGD)", timings, batch=args.batch, check=check,
                        loss_jax=losses["jax"], loss_torch=losses["torch"]))
    if "infer" in args.tasks:
        # Fresh reference weights: the training steps above moved them.
        reference, model, variables = shared_weights(args.model)
        images, _ = synthetic_inputs(1, height, width, seed=1)
        calls, logits = infer_calls(reference, model, variables, images, device=args.device)
        timings = interleave(calls, args.warmup, args.reps)
        ours = np.asarray(logits["jax"])
        theirs = logits["torch"].cpu().numpy().transpose(0, 2, 3, 1)
        diff = float(np.abs(ours - theirs).max())
        relative = diff / float(np.abs(theirs).max())
        rows.append(row(f"inference {{{','.join(f'{s:g}' for s in INFER_SCALES)}}}", timings, batch=1,
                        check=f"max |logits diff| / max |logits| {relative:.1e}",
                        max_abs_logits_diff=diff, max_abs_logits=float(np.abs(theirs).max())))
    for r in rows:
        print(f"  {r['task']:<32} jax {r['jax_s']:.4g}s  torch {r['torch_s']:.4g}s  "
              f"ratio {r['ratio']:.2f}  ({r['check']})", flush=True)
    report = {"benchmark": "vs_reference", "machine": common.machine_info(), "torch": torch.__version__,
              "config": {"model": args.model, "size": args.size, "batch": args.batch, "reps": args.reps,
                         "warmup": args.warmup, "threads": args.threads, "opt0": args.opt0,
                         "torch_device": args.device, "pinned_cores": args.threads if args.pin else None},
              "load_before": load_before, "load_after": common.load_average(), "rows": rows}
    common.write_json(report, args.name, args.out_dir, markdown(report))
    return report


if __name__ == "__main__":
    main()
