"""Seeing what a run does (issue 13): the workdir's log.txt / scores.json / scores.txt /
init_from.txt, TensorBoard contents, `hmsa config`, `hmsa train --help`, `hmsa plot`, the
training progress (compiling, ETA, one final bar) and the console helpers."""
import io
import json
import pathlib
import re
import struct
import sys

import numpy as np
import pytest
import yaml
from PIL import Image

from hmsa_jax import cli, console
from hmsa_jax.configlib import format_config_fields
from hmsa_jax.flags import dashed_option_names
from hmsa_jax.plot import curves, plot_runs, read_metrics
from hmsa_jax.train.config import default_config
from hmsa_jax.train.progress import COMPILING, Progress, StepTimer, format_duration
from hmsa_jax.train.run_log import RunLog, log_file_name, visible_text

CONFIGS = pathlib.Path(__file__).resolve().parent.parent / "configs"
TINY = f"--config={CONFIGS / 'synthetic_demo.py'}:tiny"
STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ")


# ----------------------------------------------------------------------------- console helpers
def test_plural():
    assert [console.plural(n, "device") for n in (0, 1, 8)] == ["0 devices", "1 device", "8 devices"]
    assert console.plural(2, "process") == "2 processes" and console.plural(1, "image") == "1 image"


def test_progress_bars_are_quiet_off_a_terminal_and_with_quiet(capsys):
    assert not console.show_progress()  # pytest captures stderr: not a terminal
    assert list(console.progress_bar(range(3), total=3, desc="x")) == [0, 1, 2]
    assert capsys.readouterr().err == ""


def test_underscore_flag_spellings_read_as_the_dashed_ones():
    argv = ["--max_records=3", "--config.data.max_x=1", "--out=a_b", "--threads", "2_2", "--", "--x_y"]
    assert dashed_option_names(argv) == [
        "--max-records=3", "--config.data.max_x=1", "--out=a_b", "--threads", "2_2", "--", "--x_y"]


# ----------------------------------------------------------------------------- run log
def test_run_log_copies_finished_lines_with_times_and_restores_the_streams(tmp_path):
    stdout, stderr = sys.stdout, sys.stderr
    with RunLog("hmsa train --x") as run_log:
        print("before the file is known")
        run_log.attach(str(tmp_path / "log.txt"))
        print("a", "line")
        sys.stderr.write("\r 10%|#   | 1/10\r 20%|##  | 2/10\n")  # a progress bar's redraws
        run_log.record("file only")
        sys.stdout.write("unfinished")
        assert sys.stdout.buffer is stdout.buffer and sys.stdout.isatty() == stdout.isatty()
    assert sys.stdout is stdout and sys.stderr is stderr
    lines = (tmp_path / "log.txt").read_text().splitlines()
    assert all(STAMP.match(line) for line in lines)
    texts = [STAMP.sub("", line) for line in lines]
    assert texts[0].startswith("---- hmsa train --x (host ")
    assert texts[1:] == ["before the file is known", "a line", " 20%|##  | 2/10", "file only", "unfinished"]


def test_visible_text_and_log_names():
    assert visible_text("\rold\rnew  \r   ") == "new" and visible_text("\r  \r") == ""
    assert log_file_name(0) == "log.txt" and log_file_name(3) == "log.process3.txt"


# ----------------------------------------------------------------------------- training progress
def test_eta_starts_after_the_first_interval_which_holds_the_compile():
    timer = StepTimer()
    timer.add(10, 100.0)  # compile + 10 steps
    assert timer.eta(290) == "after the first steps"
    timer.add(10, 5.0)
    timer.add(10, 5.0)
    assert timer.eta(270) == format_duration(135.0) == "2:15"
    assert format_duration(42.4) == "42 s" and format_duration(3723) == "1:02:03"


def test_progress_without_a_bar_logs_compiling_and_eta_lines():
    lines = []
    progress = Progress(total=30, start=0, enabled=False, log=lines.append)
    progress.compiling()
    for step in (10, 20, 30):
        progress.update(step, 10, {"loss": "1.0"}, seconds=60.0 if step == 10 else 2.0)
    assert lines[0] == COMPILING
    assert lines[1] == "step 10/30 ETA=after the first steps loss=1.0"
    assert lines[2] == "step 20/30 ETA=2 s loss=1.0" and lines[3] == "step 30/30 ETA=0 s loss=1.0"


def test_the_bar_closes_once_at_the_last_step_and_later_messages_print_below_it(capsys):
    logged, recorded = [], []
    progress = Progress(total=4, start=0, enabled=True, log=logged.append, record=recorded.append)
    progress.compiling()
    progress.update(2, 2, {"loss": "1.0"}, seconds=9.0)
    progress.update(4, 2, {"loss": "0.5"}, seconds=1.0)
    assert progress.bar is None  # closed at 100%
    progress.write("step 4: val mIoU 10.00")
    progress.close()
    err = capsys.readouterr().err
    assert err.count("4/4") == 2  # the bar's last redraw and its final line, nothing after
    assert logged == ["step 4: val mIoU 10.00"]
    assert recorded == [COMPILING, "step 2/4 ETA=after the first steps loss=1.0", "step 4/4 ETA=0 s loss=0.5"]


# ----------------------------------------------------------------------------- hmsa train end to end
def _events(directory: pathlib.Path):
    """Every Event of the TFRecord event files in `directory`."""
    from tensorboardX.proto.event_pb2 import Event

    events = []
    for path in sorted(directory.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset:offset + 8])
            events.append(Event.FromString(data[offset + 12:offset + 12 + length]))
            offset += 12 + length + 4
    return events


def _train(workdir, *extra):
    return cli.main(["train", TINY, f"--workdir={workdir}", "--config.model.name=resnet_tiny_deeplabv3plus_mscale",
                     "--config.train.num_devices=4", "--config.train.steps=4", "--config.train.log_every=2",
                     "--config.validation.every_steps=2", *extra])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run")
    assert _train(workdir, "--stop-after=2") == 0  # the dashed spelling of --stop_after
    assert _train(workdir, "--config.validation.pictures=1", "--config.validation.picture_scales=(1.0,)") == 0
    return workdir


def test_the_workdir_keeps_a_timed_log_appended_across_resumes(trained):
    lines = (trained / "log.txt").read_text().splitlines()
    assert all(STAMP.match(line) for line in lines)
    texts = [STAMP.sub("", line) for line in lines]
    headers = [t for t in texts if t.startswith("---- hmsa train ")]
    assert len(headers) == 2 and "--stop-after=2" in headers[0]
    assert re.search(r"step 2/4 .*loss=", "\n".join(texts)) and any(t.startswith("resumed from ") for t in texts)
    assert any(t.startswith("step 4: val mIoU") for t in texts)
    assert "training summary" in texts and any(t.startswith("  pictures ") for t in texts)


def test_the_workdir_keeps_the_final_per_class_table(trained):
    report = json.loads((trained / "scores.json").read_text())
    val_lines = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()
                 if "val/miou" in line]
    assert report["step"] == 4 == val_lines[-1]["step"]
    assert report["miou"] == pytest.approx(val_lines[-1]["val/miou"])
    assert report["scales"] == [1.0] and report["fusion"] == "hierarchical"
    assert list(report["per_class"])[:3] == ["road", "sidewalk", "building"]
    text = (trained / "scores.txt").read_text().splitlines()
    assert text[0] == "validation at step 4, scales 1.0" and text[1].split() == ["class", "IoU", "acc"]
    assert text[-3].startswith("mIoU") and f"{100 * report['miou']:.2f}" in text[-3]


def test_the_validation_pictures_page_says_what_made_it(trained):
    page = (trained / "pictures" / "index.html").read_text()
    assert "hmsa train: validation pictures at step 4" in page
    assert f"<th>checkpoint</th><td>{trained / 'checkpoints' / '4'}</td>" in page
    assert "<th>scales</th><td>1x</td>" in page and "<th>fusion</th><td>hierarchical</td>" in page
    assert "</span>0 road</li>" in page and 'class="score">mIoU' in page  # legend, per-image score
    report = json.loads((trained / "scores.json").read_text())
    assert (f"<th>validation</th><td>mIoU {100 * report['miou']:.2f}% at step 4 on the whole split, "
            f"scales 1x, fusion hierarchical</td>") in page
    assert list((trained / "pictures").glob("val_*_truth.png"))  # the ground truth
    from hmsa_jax.data.sources.synthetic import synthetic_classes
    from hmsa_jax.loading import load_model

    loaded = load_model(str(trained))  # predict/eval/autolabel draw with the run's own colours
    assert loaded.meta["class_colors"] and loaded.classes.colors == synthetic_classes(loaded.num_classes).colors


def test_profile_switch_traces_the_chosen_steps(tmp_path, capsys):
    from hmsa_jax.train.profiling import trace_files

    assert _train(tmp_path, "--config.train.steps=3", "--config.validation.every_steps=-1",
                  "--config.train.profile_start_step=2", "--config.train.profile_steps=1") == 0
    files = trace_files(str(tmp_path / "profile"))
    assert any(f.endswith(".xplane.pb") for f in files), files  # what TensorBoard's plugin reads
    assert f"profile of steps 2-2 written to {tmp_path / 'profile'}" in capsys.readouterr().out
    assert _train(tmp_path / "off", "--config.train.steps=1", "--config.validation.every_steps=-1") == 0
    assert not (tmp_path / "off" / "profile").exists()


def test_tensorboard_holds_class_iou_config_and_pictures(trained):
    events = _events(trained / "tensorboard")
    values = [(e.step, v) for e in events for v in e.summary.value]
    tags = {v.tag for _, v in values}
    report = json.loads((trained / "scores.json").read_text())
    measured = {name: c["iou"] for name, c in report["per_class"].items() if c["iou"] is not None}
    assert {f"val/iou/{name}" for name in measured} <= tags
    last = {v.tag: v.simple_value for step, v in values if step == 4 and v.tag.startswith("val/iou/")}
    assert all(last[f"val/iou/{n}"] == pytest.approx(iou, abs=1e-6) for n, iou in measured.items())
    config_texts = [v for _, v in values if v.tag.startswith("config")]
    assert config_texts and "resnet_tiny_deeplabv3plus_mscale" in config_texts[0].tensor.string_val[0].decode()
    pictures = [v for _, v in values if v.tag.startswith("pictures/val_")]
    assert len(pictures) == len(list((trained / "pictures").glob("*.png"))) > 0
    assert pictures[0].image.height > 0 and pictures[0].image.encoded_image_string.startswith(b"\x89PNG")


def test_init_from_report_is_kept_in_the_workdir(trained, tmp_path):
    assert _train(tmp_path, f"--config.checkpoint.init_from={trained}", "--config.train.steps=1",
                  "--config.validation.every_steps=-1") == 0
    report = (tmp_path / "init_from.txt").read_text()
    assert report.startswith(f"initialised from {trained}/checkpoints/4") and "loaded: " in report
    assert "initialised from" in (tmp_path / "log.txt").read_text()


# ----------------------------------------------------------------------------- hmsa config / train --help
def test_config_command_prints_the_resolved_config(capsys):
    assert cli.main(["config", TINY, "--config.train.steps=3"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["train"]["steps"] == 3 and printed["data"]["augment"]["crop_size"] == [32, 64]
    assert printed["model"]["name"] == "hrnet_tiny_ocr_mscale"
    assert cli.main(["config", TINY, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["train"]["steps"] == 10


@pytest.mark.parametrize("args, message", [
    (["--config.train.stepz=3"], "unknown key 'stepz' in train"),
    (["--config.model.name=nope"], "config.model.name='nope'; expected one of"),
])
def test_config_command_names_a_bad_key_or_value(capsys, args, message):
    assert cli.main(["config", TINY, *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_train_help_lists_flags_and_config_fields_with_defaults(capsys):
    assert cli.main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    words = " ".join(out.split())  # argparse wraps the options to the terminal width
    assert "--workdir DIR" in words and "--stop-after N" in words and "--stop_after too" in words
    assert "  --config.train.steps=0\n" in out and "  --config.validation.scales=(1.0,)\n" in out
    assert cli.main(["train", "--help", TINY]) == 0
    assert "  --config.train.steps=10\n" in capsys.readouterr().out


def test_config_field_listing():
    listing = format_config_fields(default_config()).splitlines()
    assert "  --config.checkpoint.init_from=''" in listing and "  --config.model.dtype=bfloat16" in listing


# ----------------------------------------------------------------------------- hmsa plot
def _metrics(path: pathlib.Path, lrs, torn: bool = False):
    records = [{"step": 2 * (k + 1), "loss": 2.0 - 0.1 * k, "learning_rate": lr, "images_per_s": 10.0 + k}
               for k, lr in enumerate(lrs)]
    records.append({"step": 2 * len(lrs), "val/miou": 0.25})
    text = "".join(json.dumps(r) + "\n" for r in records)
    path.mkdir(parents=True, exist_ok=True)
    (path / "metrics.jsonl").write_text(text + ('{"step": 9, "lo' if torn else ""))


def test_curves_keep_the_latest_value_of_a_step_logged_twice():
    records = [{"step": 4, "loss": 1.0}, {"step": 2, "loss": 3.0}, {"step": 4, "loss": 0.5, "val/miou": 0.1}]
    assert curves(records) == {"loss": ([2, 4], [3.0, 0.5]), "val/miou": ([4], [10.0])}


def test_plot_overlays_runs_in_one_png(tmp_path, capsys):
    _metrics(tmp_path / "a", [0.05, 0.04, 0.03], torn=True)  # a run still writing
    _metrics(tmp_path / "b", [0.1, 0.05])
    out = tmp_path / "curves.png"
    assert cli.main(["plot", str(tmp_path / "a"), str(tmp_path / "b" / "metrics.jsonl"), f"--out={out}"]) == 0
    assert f"wrote {out} (a, b)" in capsys.readouterr().out
    with Image.open(out) as png:
        assert png.size == (1210, 825)
        pixels = np.asarray(png.convert("RGB"))
    blue, orange = np.array([31, 119, 180]), np.array([255, 127, 14])  # matplotlib's C0 and C1
    assert (np.abs(pixels - blue).sum(-1) < 30).sum() > 100 and (np.abs(pixels - orange).sum(-1) < 30).sum() > 100
    drawn = plot_runs([str(tmp_path / "a")], str(tmp_path / "one.png"))
    assert drawn["a"]["loss"][0] == [2, 4, 6] and drawn["a"]["val/miou"] == ([6], [25.0])


def test_plot_default_output_and_bad_runs(tmp_path, capsys):
    _metrics(tmp_path / "a", [0.05])
    assert cli.main(["plot", str(tmp_path / "a")]) == 0
    assert (tmp_path / "a" / "curves.png").is_file()
    assert cli.main(["plot", str(tmp_path / "missing")]) == 2
    assert f"{tmp_path / 'missing'}: no metrics.jsonl" in capsys.readouterr().err
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "metrics.jsonl").write_text('{"step": 1, "loss": 1}\nnot json\n{"step": 2}\n')
    assert cli.main(["plot", str(tmp_path / "bad")]) == 2
    assert "metrics.jsonl: line 2 is not JSON" in capsys.readouterr().err
    assert read_metrics(str(tmp_path / "a" / "metrics.jsonl"))[0]["step"] == 2
    for out, message in ((tmp_path, "is a folder"), (tmp_path / "no" / "x.png", "does not exist")):
        assert cli.main(["plot", str(tmp_path / "a"), f"--out={out}"]) == 2
        err = capsys.readouterr().err
        assert f"--out={out}: " in err and message in err and len(err.splitlines()) == 1


def test_run_log_stream_keeps_terminal_behaviour():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    terminal = Terminal()
    stderr = sys.stderr
    sys.stderr = terminal
    try:
        with RunLog("x"):
            assert console.is_terminal() and console.show_progress() and not console.show_progress(quiet=True)
    finally:
        sys.stderr = stderr


# ----------------------------------------------------------------------------- repository hygiene
REPO = pathlib.Path(__file__).resolve().parent.parent


def _load_benchmark(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_attention_study_writes_under_runs_unless_told_otherwise():
    study = _load_benchmark("attention_study")
    assert pathlib.Path(study.DEFAULT_OUT) == REPO / "runs" / "attention_study"


@pytest.mark.skipif(not (REPO / ".git").exists(), reason="needs a git checkout")
def test_run_outputs_are_ignored_by_git():
    import subprocess

    paths = ["runs/demo/log.txt", "pictures/index.html", "runs/attention_study/attention_study.json"]
    result = subprocess.run(["git", "check-ignore", *paths], cwd=REPO, capture_output=True, text=True)
    assert result.stdout.split() == paths
