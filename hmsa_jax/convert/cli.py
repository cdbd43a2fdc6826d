"""`hmsa convert --from=torch INPUT.pth --arch=NAME --out=DIR`: a PyTorch checkpoint of the
reference implementation -> an Orbax checkpoint that eval, predict and training read.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys

from hmsa_jax.console import progress_bar
from hmsa_jax.convert.checkpoint_io import REPORT_NAME, file_sha256, save_converted
from hmsa_jax.convert.mapping import ConversionError, convert_state_dict, infer_num_classes
from hmsa_jax.convert.torch_reader import CheckpointReadError, TorchNotInstalledError, read_state_dict
from hmsa_jax.models import create_model, list_models

DEFAULT_NUM_CLASSES = 19


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hmsa convert", description=__doc__.split("\n\n")[0].replace("\n", " "),
        epilog="Every checkpoint tensor is reported as loaded, skipped, shape-mismatched or ignored, "
               "and every model variable not loaded as missing; the report is printed and saved as JSON.")
    parser.add_argument("input", type=pathlib.Path, help="the PyTorch checkpoint (.pth)")
    parser.add_argument("--from", dest="source_format", choices=("torch",), default="torch",
                        help="checkpoint format (default: torch)")
    parser.add_argument("--arch", required=True,
                        help="model name as create_model() knows it, e.g. hrnet48_ocr_mscale, hrnet48_ocr, "
                             "resnet50_deeplabv3plus_mscale (see `hmsa models`)")
    parser.add_argument("--out", required=True, type=pathlib.Path, help="output directory (Orbax checkpoint)")
    parser.add_argument("--num-classes", type=int, default=None,
                        help="classes of the converted model (default: the checkpoint's classifier rows, "
                             f"else {DEFAULT_NUM_CLASSES}); a different count leaves the classifiers at "
                             "initialisation, reported as mismatched")
    parser.add_argument("--strict", action="store_true",
                        help="fail unless every tensor is loaded and every variable is filled")
    parser.add_argument("--report", type=pathlib.Path, default=None,
                        help="where to write the JSON report (default: OUT/convert_report.json)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT directory's checkpoint")
    parser.add_argument("--seed", type=int, default=0, help="initialisation seed for variables not loaded")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress bar (there is none either when stderr is not a terminal)")
    return parser


CONVERT_STAGES = ("reading the PyTorch checkpoint", "mapping tensors to model variables", "saving the Orbax checkpoint")


def _write_report(path: pathlib.Path, report) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report.to_dict(), indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.arch not in list_models():
        print(f"hmsa convert: --arch: unknown model {args.arch!r}; expected one of "
              f"{', '.join(list_models())} (checked before reading the file)", file=sys.stderr)
        return 2
    stages = progress_bar(total=len(CONVERT_STAGES), desc=CONVERT_STAGES[0], unit="stage", quiet=args.quiet)
    try:
        return _convert(args, stages)
    finally:
        stages.close()


def _next_stage(stages, done: int) -> None:
    stages.update(1)
    if done < len(CONVERT_STAGES):
        stages.set_description(CONVERT_STAGES[done])


def _convert(args, stages) -> int:
    """The conversion, its errors written above the bar (stages.write) rather than through it."""
    try:
        state = read_state_dict(args.input)
    except TorchNotInstalledError as e:
        stages.write(f"hmsa convert: {e}", file=sys.stderr)
        return 3
    except CheckpointReadError as e:
        stages.write(f"hmsa convert: {e}", file=sys.stderr)
        return 2

    _next_stage(stages, 1)
    num_classes = args.num_classes or infer_num_classes(state.arrays) or DEFAULT_NUM_CLASSES
    try:
        model = create_model(args.arch, num_classes=num_classes)
    except ValueError as e:
        stages.write(f"hmsa convert: --arch: {e}", file=sys.stderr)
        return 2

    report_path = args.report or args.out / REPORT_NAME
    try:
        variables, report = convert_state_dict(state.arrays, model, source=str(args.input),
                                               model_name=args.arch, strict=args.strict, seed=args.seed)
    except ConversionError as e:
        stages.write(f"hmsa convert: {e}", file=sys.stderr)
        if e.report is not None:
            _write_report(report_path, e.report)
            stages.write(f"hmsa convert: report written to {report_path}; no checkpoint written", file=sys.stderr)
        return 1
    if state.stripped_prefix:
        report.notes.append("the DDP prefix 'module.' was removed from the keys")
    if state.original_dtypes:
        kinds = sorted(set(state.original_dtypes.values()))
        report.notes.append(f"{len(state.original_dtypes)} tensors stored as {', '.join(kinds)} "
                            f"were converted (floating point -> float32)")

    _next_stage(stages, 2)
    meta = {"model": args.arch, "num_classes": num_classes, "source": str(args.input.resolve()),
            "source_sha256": file_sha256(args.input), "report": report.to_dict()}
    try:
        out = save_converted(args.out, variables, meta, overwrite=args.overwrite)
    except FileExistsError as e:
        stages.write(f"hmsa convert: {e}", file=sys.stderr)
        return 2
    _next_stage(stages, 3)
    stages.close()  # the report prints below a finished bar
    if args.report is not None:
        _write_report(args.report, report)
    print(report.summary())
    print(f"wrote {out} (model {args.arch}, {num_classes} classes); report {report_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
