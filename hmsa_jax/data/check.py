"""`hmsa data-check`: validate a dataset before a long run.

Reads every record of the training and evaluation splits (and auto-labels, if configured) the
way training would: unreadable or truncated images, image/label size mismatches, label values
outside the class table, missing labels and empty splits are each reported with the file and
the problem. Prints a per-class pixel histogram. Exit status 1 if anything is wrong.

    hmsa data-check --config=configs/cityscapes.py --config.data.root=/data/cityscapes
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import sys

import numpy as np

from hmsa_jax import flags
from hmsa_jax.configlib import ConfigError, load_config
from hmsa_jax.console import plural, progress_bar
from hmsa_jax.data import build
from hmsa_jax.data.errors import DataError
from hmsa_jax.data.labels import IGNORE_LABEL, ClassTable, trainids_read_as_labelids
from hmsa_jax.train.config import validate_data_config


SPLIT_ROLES = ("train", "eval", "autolabel")


@dataclasses.dataclass
class SplitReport:
    name: str
    num_records: int = 0
    num_checked: int = 0
    problems: list[str] = dataclasses.field(default_factory=list)
    histogram: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(256, np.int64))
    classes: ClassTable | None = None


def _check_record(source, index: int) -> tuple[np.ndarray | None, str | None]:
    try:
        record = source.load(index)
    except DataError as err:
        return None, str(err)
    except Exception as err:  # a bug or an unexpected format: still name the record
        return None, f"{source.name(index)}: {type(err).__name__}: {err}"
    return np.bincount(record["label"].ravel(), minlength=256), None


def check_source(source, name: str, *, max_records: int = 0, num_threads: int = 4,
                 quiet: bool = True) -> SplitReport:
    """`quiet=False`: a progress bar over the records (on a terminal)."""
    report = SplitReport(name, len(source), classes=source.classes)
    if len(source) == 0:
        report.problems.append(f"{name}: empty split")
        return report
    count = len(source) if max_records <= 0 else min(max_records, len(source))
    with concurrent.futures.ThreadPoolExecutor(max(1, num_threads)) as pool:
        checked = pool.map(lambda i: _check_record(source, i), range(count))
        for counts, problem in progress_bar(checked, total=count, desc=name, unit="record", quiet=quiet):
            report.num_checked += 1
            if problem is not None:
                report.problems.append(problem)
            else:
                report.histogram += counts
    mixup = trainids_read_as_labelids(report.histogram, getattr(source, "table_name", ""))
    if mixup is not None:
        report.problems.append(f"{name}: {mixup}")
    return report


def format_histogram(report: SplitReport) -> str:
    total = max(int(report.histogram.sum()), 1)
    names = report.classes.names if report.classes else ()
    lines = [f"  {'id':>3}  {'class':<24} {'pixels':>14} {'share':>7}"]
    for cls, name in enumerate(names):
        pixels = int(report.histogram[cls])
        flag = "  (absent)" if pixels == 0 else ""
        lines.append(f"  {cls:>3}  {name:<24} {pixels:>14,} {100 * pixels / total:>6.2f}%{flag}")
    ignored = int(report.histogram[IGNORE_LABEL])
    lines.append(f"  {IGNORE_LABEL:>3}  {'(ignore)':<24} {ignored:>14,} {100 * ignored / total:>6.2f}%")
    return "\n".join(lines)


def argument_parser():
    parser = flags.argument_parser("hmsa data-check", __doc__)
    flags.add_config_argument(parser, "the dataset (the config's data section)")
    parser.add_argument("--splits", type=flags.comma_list, default=["train", "eval"], metavar="LIST",
                        help="which of train, eval, autolabel to check (default train,eval)")
    parser.add_argument("--max-records", type=int, default=0, metavar="N",
                        help="check at most N records per split (default 0: all; --max_records too)")
    parser.add_argument("--threads", type=int, default=4, metavar="N", help="reader threads (default 4)")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress bars (none either when stderr is not a terminal)")
    return parser


def run_checks(data, splits=("train", "eval"), *, max_records: int = 0, num_threads: int = 4,
               quiet: bool = True):
    reports = []
    for role in splits:
        if role == "autolabel" and not data.autolabel.labels_dir:
            continue
        split = {"train": data.train_split, "eval": data.eval_split}.get(role, "autolabel")
        name = f"{role} ({data.dataset} {split})"
        try:
            if role == "autolabel":
                source = build.build_autolabel_source(data, build.class_table(data))
            elif role in ("train", "eval"):
                source = build.build_source(data, split, role)
            else:
                raise DataError(f"--splits entry {role!r}; expected train, eval or autolabel")
        except DataError as err:
            reports.append(SplitReport(name, problems=[str(err)]))
            continue
        reports.append(check_source(source, name, max_records=max_records, num_threads=num_threads,
                                    quiet=quiet))
    return reports


def main(argv: list[str]) -> int:
    parser = argument_parser()
    if flags.wants_help(argv):
        print(parser.format_help())
        return 0
    values, config_args = flags.parse(parser, argv)
    try:
        config, _ = load_config(config_args)
    except ConfigError as error:
        print(f"hmsa data-check: {error}", file=sys.stderr)
        return 2
    if "data" not in config:
        print("hmsa data-check: the config has no 'data' section", file=sys.stderr)
        return 2
    try:
        validate_data_config(config.data)
        unknown = [s for s in values.splits if s not in SPLIT_ROLES]
        if unknown:
            raise ConfigError(f"--splits entry {unknown[0]!r}; expected some of {', '.join(SPLIT_ROLES)}")
    except ConfigError as error:
        print(f"hmsa data-check: {error}", file=sys.stderr)
        return 2
    reports = run_checks(config.data, tuple(values.splits), max_records=values.max_records,
                         num_threads=values.threads, quiet=values.quiet)
    failed = False
    for report in reports:
        print(f"{report.name}: {report.num_checked} of {report.num_records} records checked, "
              f"{plural(len(report.problems), 'problem')}")
        if report.num_checked:
            print(format_histogram(report))
        for problem in report.problems:
            print(f"  ERROR {problem}")
        failed |= bool(report.problems)
    print("data-check: FAILED" if failed else "data-check: OK")
    return 1 if failed else 0
