"""The end-of-run comparison: one checkpoint at single scale and with each multi-scale fusion."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hmsa_jax.configlib import load_config
from hmsa_jax.data.build import build_source
from hmsa_jax.data.transforms import normalize_image
from hmsa_jax.loading import load_model
from hmsa_jax.train.loop import train
from hmsa_jax.train.validation import COMPARISON_SCALE_SETS, comparison_variants


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("compare")
    config = load_config(["--config=configs/scale_bench.py:tiny", "--config.validation.compare_scales=True",
                          "--config.runtime.progress=False", "--config.train.num_devices=4"])[0]
    logs = []
    summary = train(config, str(workdir), log=logs.append)
    return config, workdir, summary, logs


def test_variants_follow_the_model_kind():
    assert comparison_variants("explicit") == [((0.5, 1.0, 2.0), "explicit")]
    assert comparison_variants("none") == [(s, "avg") for s in COMPARISON_SCALE_SETS]
    hierarchical = comparison_variants("hierarchical")
    assert hierarchical[0] == ((1.0,), "hierarchical") and len(hierarchical) == 1 + 2 * 3
    assert {f for s, f in hierarchical if len(s) > 1} == {"hierarchical", "avg"}


def _miou(predictions: np.ndarray, labels: np.ndarray, k: int) -> float:
    ious = [((predictions == c) & (labels == c)).sum() / ((predictions == c) | (labels == c)).sum()
            for c in range(k) if ((predictions == c) | (labels == c)).any()]
    return float(np.mean(ious))


@pytest.mark.slow
def test_the_run_ends_with_the_table_and_its_numbers_are_the_models(run):
    config, workdir, summary, logs = run
    rows = summary["scale_comparison"]
    assert [(tuple(r["scales"]), r["fusion"]) for r in rows] == [
        ((1.0,), "single scale")] + [(s, f) for s in COMPARISON_SCALE_SETS[1:] for f in ("hierarchical", "avg")]
    assert rows[0]["miou"] == pytest.approx(summary["val_miou"])
    assert json.loads((workdir / "scale_comparison.json").read_text()) == rows
    table = (workdir / "scale_comparison.md").read_text().splitlines()
    assert len(table) == 2 + len(rows) and "| hierarchical | {0.25, 0.5, 1, 2} |" in table[-2]
    assert any("single scale and multi-scale" in line for line in logs)

    # Independently: the checkpoint's model applied to the validation scenes.
    loaded = load_model(str(workdir))
    source = build_source(config.data, "val", "eval")
    records = [source.load(i) for i in range(len(source))]
    images = normalize_image(np.stack([r["image"] for r in records]))
    labels = np.stack([r["label"] for r in records])
    # Jitted: applied op by op, three multi-scale forwards took 20 s.
    apply = jax.jit(loaded.model.apply, static_argnames=("train", "scales", "fusion"))
    for row in rows[1:4]:
        out = apply(loaded.variables, images, train=False, scales=tuple(row["scales"]), fusion=row["fusion"])
        predictions = np.asarray(jnp.argmax(out["logits"], -1))
        assert row["miou"] == pytest.approx(_miou(predictions, labels, loaded.num_classes), abs=1e-6), row
