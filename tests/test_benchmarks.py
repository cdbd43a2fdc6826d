"""Smoke tests of benchmarks/: each script's smallest configuration runs and writes the keys the
plot and WORKSPACE_NOTES rely on. Not timed assertions."""
import json
import os
import sys

import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
sys.path.insert(0, BENCH)

import common  # noqa: E402


def test_helpers():
    assert common.parse_size("64x128") == (64, 128)
    with pytest.raises(ValueError, match="HEIGHTxWIDTH"):
        common.parse_size("64")
    timing = common.time_call(lambda: 1, warmup=0, repeats=3)
    assert timing["median_s"] >= 0 and timing["repeats"] == 3
    info = common.machine_info()
    assert {"jax", "backend", "device_kind", "cpu", "date"} <= set(info)
    assert common.device_peak_flops("float32") is None  # CPUs are not in the table


def test_strip_option():
    import train_throughput

    argv = ["--size", "32x64", "--variants", "float32:none", "bfloat16:trunk", "--isolate", "--batch", "2"]
    assert train_throughput.strip_option(argv, ("--variants", "--isolate")) == ["--size", "32x64", "--batch", "2"]


def test_scale_schemes_lowered(tmp_path):
    import scale_schemes

    report = scale_schemes.main(["--family", "resnet_tiny", "--sizes", "32x64", "--analysis", "lowered",
                                 "--out-dir", str(tmp_path), "--name", "s"])
    rows = {r["scheme"]: r for r in report["rows"]}
    assert set(rows) == {"single", "hierarchical", "explicit"}
    assert all(r["flops"] > 0 for r in rows.values())
    assert rows["single"]["flops_ratio"] == 1.0
    assert 1.0 < rows["hierarchical"]["flops_ratio"] < rows["explicit"]["flops_ratio"]
    with open(tmp_path / "s.json") as f:
        assert json.load(f)["machine"]["backend"] == "cpu"


def test_resize_comparison_and_census():
    import speed_checks

    rows = speed_checks.compare_resizes((32, 64), classes=3)
    assert [r["resize"] for r in rows] == ["ops.resize_bilinear", "jax.image.resize"]
    assert all(r["flops"] > 0 and r["instructions"] > 0 for r in rows)
    assert rows[0]["max_abs_diff"] < 1e-5


def test_plot(tmp_path):
    import plot

    schemes = {"family": "hrnet_tiny", "analysis": "compiled",
               "rows": [{"scheme": s, "size": "32x64", "flops_ratio": r, "temp_mib": m,
                         "temp_ratio": m / 3.0}
                        for s, r, m in (("single", 1.0, 3.0), ("hierarchical", 1.3, 5.0), ("explicit", 5.4, 11.0))]}
    machine = {"device_kind": "cpu"}
    train = {"machine": machine, "rows": [{"model": "m", "size": "32x64", "dtype": "float32", "remat": "none",
                                           "images_per_s": 2.0, "temp_mib": 4.0}]}
    infer = {"machine": machine, "rows": [{"model": "m", "size": "32x64", "scales": "1.0", "flip": f,
                                           "images_per_s": 3.0} for f in (False, True)]}
    for name, report in (("scale_schemes", schemes), ("train_throughput", train), ("inference", infer)):
        (tmp_path / f"{name}.json").write_text(json.dumps(report))
    out = plot.main(["--results", str(tmp_path)])
    assert os.path.getsize(out) > 1000


@pytest.mark.slow
def test_inference_smallest(tmp_path):
    import inference

    report = inference.main(["--size", "32x64", "--scale-sets", "1.0", "--repeats", "1",
                             "--outputs", "logits", "--out-dir", str(tmp_path)])
    rows = report["rows"]
    assert [r["flip"] for r in rows] == [False, True]
    assert all(r["latency_s"] > 0 and r["images_per_s"] > 0 for r in rows)


@pytest.mark.slow
def test_scale_study_trains_evaluates_and_reuses_finished_runs(tmp_path):
    import scale_study

    argv = ["--config", "configs/scale_bench.py:tiny", "--methods", "hierarchical", "--seeds", "0",
            "--steps", "2", "--workdir", str(tmp_path / "runs"), "--out", str(tmp_path / "out"),
            "--override=--config.train.num_devices=4"]
    assert scale_study.main(argv) == 0
    result = tmp_path / "runs" / "resnet" / "hierarchical" / "seed0" / "result.json"
    written = result.stat().st_mtime_ns
    assert scale_study.main(argv) == 0 and result.stat().st_mtime_ns == written  # reused, not retrained
    cell = json.loads((tmp_path / "out" / "scale_study.json").read_text())["summary"]["resnet"]["hierarchical"]
    assert set(cell["miou"]) == {"0.25x", "0.5x", "1x", "2x", "{0.5,1}", "{0.5,1,2}", "{0.25,0.5,1,2}"}
    assert set(cell["attention"]) == {"a0.5 vs 1x", "a1 vs 2x", "w0.5x", "w1x", "w2x"}
    weights = [cell["attention"][f"w{s}x"]["thin"][0] for s in ("0.5", "1", "2")]
    assert sum(weights) == pytest.approx(1.0, abs=1e-4)  # effective weights of the 3-scale fuse
    assert all(0 <= v[0] <= 100 and v[2] == 1 for v in cell["miou"].values())
    table = (tmp_path / "out" / "scale_study.md").read_text()
    assert "| hierarchical (n=1) | {0.5,1,2} |" in table and "| hierarchical (n=1) | 1x |" in table


def test_scale_study_aggregates_mean_and_sample_spread():
    import scale_study

    runs = [{"family": "resnet", "method": "single", "seed": s, "train_seconds": 10.0,
             "miou": {"1x": m}, "iou": {"1x": {"a": m}}, "attention": {}} for s, m in ((0, 0.5), (1, 0.7))]
    cell = scale_study.aggregate(runs)["resnet"]["single"]
    assert cell["miou"]["1x"] == pytest.approx([60.0, 14.1421356, 2])
    assert cell["seeds"] == [0, 1]


@pytest.mark.slow
def test_opt0_effect_times_both_levels_in_one_process(tmp_path):
    import opt0_effect

    report = opt0_effect.main(["--model", "resnet_tiny_deeplabv3plus", "--size", "32x32",
                               "--batch", "1", "--reps", "1", "--out-dir", str(tmp_path)])
    rows = {r["level"]: r for r in report["rows"]}
    assert set(rows) == {"default", "opt0"}
    assert all(r["compile_s"] > 0 and len(r["times"]) == 2 and r["step_median_s"] > 0 for r in rows.values())
    assert report["step_ratio_opt0"] == pytest.approx(rows["opt0"]["step_median_s"] / rows["default"]["step_median_s"])
    assert "| opt0 |" in (tmp_path / "opt0_effect.md").read_text()


def test_vs_reference_smallest(tmp_path):
    pytest.importorskip("torch", reason="compares against the PyTorch reference")
    import vs_reference

    report = vs_reference.main(["--model", "hrnet_tiny", "--size", "64x128", "--batch", "1", "--reps", "1",
                                "--warmup", "0", "--opt0", "on", "--out-dir", str(tmp_path)])
    with open(tmp_path / "vs_reference.json") as f:
        rows = json.load(f)["rows"]
    assert [r["task"].split()[0] for r in rows] == ["train", "inference"]
    assert all(r["jax_s"] > 0 and r["torch_s"] > 0 and r["ratio"] == pytest.approx(r["jax_s"] / r["torch_s"])
               for r in rows)
    assert rows[0]["loss_jax"] == pytest.approx(rows[0]["loss_torch"], rel=1e-4)  # same weights, same batch
    assert "| jax / torch |" in (tmp_path / "vs_reference.md").read_text()
    assert report["load_before"] and report["load_after"]


def test_profile_groups_a_labelled_resize():
    import jax
    import jax.numpy as jnp

    import profile_train_step as P
    from hmsa_jax import ops

    original = ops.resize_bilinear
    with P.labelled_model_code("gather"):
        compiled = jax.jit(jax.grad(lambda x: jnp.sum(ops.resize_bilinear(x, (12, 16)) ** 2))).lower(
            jnp.ones((1, 6, 8, 3))).compile()
    instructions = P.parse_hlo(compiled.as_text())
    groups = {P.classify(*instruction, largest_scale="in6x8") for instruction in instructions.values()}
    assert {"resize fwd", "resize bwd"} <= groups
    assert ops.resize_bilinear is original  # restored


def test_resize_prototypes_match_ops_resize():
    import jax
    import jax.numpy as jnp
    import numpy as np

    import profile_train_step as P
    from hmsa_jax import ops

    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 7, 10, 3)), jnp.float32)
    prototypes = (P.resize_bilinear_gather, P.resize_bilinear_matmul)
    for size in ((14, 20), (3, 5), (13, 4), (28, 30)):
        expected = ops.resize_bilinear(x, size)
        grad = jax.grad(lambda v: jnp.sum(jnp.sin(ops.resize_bilinear(v, size))))(x)
        for resize in prototypes:
            np.testing.assert_allclose(resize(x, size), expected, atol=2e-6)
            np.testing.assert_allclose(jax.grad(lambda v: jnp.sum(jnp.sin(resize(v, size))))(x), grad, atol=2e-6)


def test_conv_kernels_counts_every_convolution_once_per_scale(tmp_path):
    pytest.importorskip("torch", reason="compares against the PyTorch reference")
    import jax
    import jax.numpy as jnp

    import conv_kernels
    from hmsa_jax import create_model

    model = "resnet_tiny_deeplabv3plus_mscale"
    report = conv_kernels.main(["--model", model, "--size", "32x32", "--batch", "1", "--reps", "1",
                                "--rounds", "1", "--out-dir", str(tmp_path)])
    params = jax.eval_shape(lambda: create_model(model, num_classes=19).init(
        jax.random.key(0), jnp.zeros((1, 64, 64, 3))))["params"]
    kernels = [leaf for leaf in jax.tree_util.tree_leaves(params) if leaf.ndim == 4]
    # The two-scale training forward applies every Conv2d once per scale, the 1x1s included.
    assert report["count"] == 2 * len(kernels)
    one_by_one = [r for r in report["rows"] if tuple(r["rhs"][:2]) == (1, 1)]
    assert sum(r["count"] for r in one_by_one) == 2 * sum(k.shape[:2] == (1, 1) for k in kernels)
    # The stride-2 1x1 of a downsampling shortcut stays a convolution.
    assert {r["conv"] for r in one_by_one if not r["pointwise"]} == {r["conv"] for r in one_by_one if " s2" in r["conv"]}
    totals = report["totals"]
    for variant in report["variants"]:
        for p in ("fwd", "fwd+bwd"):
            assert totals["all"][variant][p] == pytest.approx(
                totals["1x1 stride 1"][variant][p] + totals["other"][variant][p])
            assert totals["all"][variant][p] > 0
    assert "| 1x1 stride 1 | fwd+bwd |" in (tmp_path / "conv_kernels_train.md").read_text()


def test_pointwise_matmul_compares_both_programs_in_one_process(tmp_path):
    import pointwise_matmul

    # Inference only: the train step goes through the same two tracings and costs four times the compile.
    report = pointwise_matmul.main(["--model", "resnet_tiny_deeplabv3plus_mscale", "--size", "32x32",
                                    "--tasks", "infer", "--reps", "1", "--out-dir", str(tmp_path)])
    assert [r["task"].split()[0] for r in report["rows"]] == ["inference"]
    for r in report["rows"]:
        assert set(r["median_s"]) == {"conv", "matmul"} and all(len(t) == 1 for t in r["times"].values())
        assert r["ratio_matmul_over_conv"] == pytest.approx(r["median_s"]["matmul"] / r["median_s"]["conv"])
        assert r["first_results_max_abs_difference"] < 1e-4  # the same model, the same weights and input
    assert "| matmul / conv |" in (tmp_path / "pointwise_matmul.md").read_text()
    # The two programs differ by exactly the 1x1 stride-1 convolutions of the census.
    import conv_kernels

    census = conv_kernels.model_convolutions("resnet_tiny_deeplabv3plus_mscale", "infer", 32, 32, 1)
    convolutions = report["rows"][0]["convolutions"]
    assert convolutions["conv"] == sum(census.values())
    assert convolutions["matmul"] == sum(n for conv, n in census.items() if not conv_kernels.is_pointwise(conv))
    assert convolutions["matmul"] < convolutions["conv"]
