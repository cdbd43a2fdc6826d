"""Model structure (counts, names, shapes) and behaviour on tiny widths, on CPU."""
import functools
import logging
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hmsa_jax
from hmsa_jax.models.torch_names import torch_state_shapes

REFERENCE = pathlib.Path(__file__).resolve().parents[2] / "shared" / "reference"
NEEDS_REFERENCE = (f"needs {REFERENCE}: the PyTorch reference's state-dict listings "
                   "(nvidia_*_state_dict.tsv, names and shapes of every tensor), kept in the "
                   "project's shared folder beside the checkout, not in git")


def abstract_variables(model, hw=(64, 64)):
    images = jax.ShapeDtypeStruct((1, *hw, 3), jnp.float32)
    return jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), images)


def reference_shapes(filename):
    shapes = {}
    for line in (REFERENCE / filename).read_text().splitlines():
        key, shape, _ = line.split("\t")
        if not key.endswith("num_batches_tracked"):
            shapes[key] = tuple(int(d) for d in shape.strip("()").split(",") if d.strip())
    return shapes


def test_hrnet48_ocr_mscale_parameter_counts():
    counts = hmsa_jax.count_params(hmsa_jax.create_model("hrnet48_ocr_mscale", num_classes=19))
    assert counts == {"backbone": 65_325_120, "ocr": 5_047_558, "scale_attn": 1_770_752, "total": 72_143_430}


def test_resnet50_deeplab_mscale_parameter_count():
    counts = hmsa_jax.count_params(hmsa_jax.create_model("resnet50_deeplabv3plus_mscale", num_classes=19))
    assert counts["total"] == 41_642_560


@pytest.mark.skipif(not REFERENCE.is_dir(), reason=NEEDS_REFERENCE)
@pytest.mark.parametrize("name,listing", [("hrnet48_ocr_mscale", "nvidia_hrnet_ocr_mscale_state_dict.tsv"),
                                          ("resnet50_deeplabv3plus_mscale", "nvidia_deepv3r50_mscale_state_dict.tsv")])
def test_variables_map_one_to_one_onto_reference_state_dict(name, listing):
    ours = torch_state_shapes(abstract_variables(hmsa_jax.create_model(name, num_classes=19)))
    reference = reference_shapes(listing)
    assert sorted(set(reference) - set(ours)) == []
    assert sorted(set(ours) - set(reference)) == []
    assert {k: v for k, v in ours.items() if reference[k] != v} == {}


@pytest.mark.parametrize("width,channels", [(18, 270), (32, 480), (48, 720)])
def test_hrnet_widths_build(width, channels):
    from hmsa_jax.models.hrnet import HRNet, hrnet_spec
    trunk = HRNet(hrnet_spec(width))
    out = jax.eval_shape(lambda x: trunk.init_with_output(jax.random.key(0), x)[0],
                         jax.ShapeDtypeStruct((1, 64, 96, 3), jnp.float32))
    assert out.shape == (1, 16, 24, channels)


def test_every_registered_model_builds():
    # Full-size tracing costs seconds per model: the full widths are covered above, so trace
    # the tiny variant of every family/attention mode and only construct the others.
    names = hmsa_jax.list_models()
    assert {"hrnet48_ocr_mscale", "hrnet48_ocr", "resnet50_deeplabv3plus_mscale"} <= set(names)
    for name in names:
        model = hmsa_jax.create_model(name, num_classes=7)
        if "tiny" in name:
            counts = hmsa_jax.count_params(model)
            assert ("scale_attn" in counts) == name.endswith("_mscale"), name
            assert ("explicit_attn" in counts) == name.endswith("_explicit"), name


@pytest.mark.parametrize("kwargs,message", [
    (dict(name="hrnet64_ocr_mscale"), "unknown model 'hrnet64_ocr_mscale'"),
    (dict(name="hrnet48_ocr_mscale", num_classes=1), "num_classes must be an integer >= 2, got 1"),
    (dict(name="hrnet48_ocr_mscale", lo_scale=1.5), "lo_scale must be in"),
    (dict(name="hrnet48_ocr_explicit", explicit_scales=(0.5, 2.0)), "must contain 1.0"),
    (dict(name="hrnet48_ocr_explicit", explicit_scales=(-1.0, 1.0)), "must be positive"),
    (dict(name="hrnet48_ocr_mscale", trunk_init="xavier"), "trunk_init must be one of"),
])
def test_bad_configuration_is_refused_at_creation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        hmsa_jax.create_model(**kwargs)


def test_unknown_width_is_refused():
    from hmsa_jax.models.hrnet import hrnet_spec
    with pytest.raises(ValueError, match="unknown HRNet width 40"):
        hrnet_spec(40)


# ---------------------------------------------------------------------------- tiny, computed

IMAGES = np.random.default_rng(0).normal(size=(2, 40, 56, 3)).astype(np.float32)
NUM_CLASSES = 5


@pytest.fixture(scope="module")
def tiny_ocr():
    model = hmsa_jax.create_model("hrnet_tiny_ocr_mscale", num_classes=NUM_CLASSES)
    variables = jax.jit(functools.partial(model.init, train=False))(jax.random.key(0), IMAGES)
    return model, variables


def test_tiny_forward_backward_under_jit(tiny_ocr):
    model, variables = tiny_ocr

    def loss_fn(params, batch_stats):
        out, state = model.apply({"params": params, "batch_stats": batch_stats}, IMAGES, train=True,
                                 mutable=["batch_stats"], rngs={"dropout": jax.random.key(1)})
        return jnp.mean(jnp.square(out["logits"])), (out, state)

    (loss, (out, state)), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(
        variables["params"], variables["batch_stats"])
    assert np.isfinite(float(loss))
    assert out["logits"].shape == (2, 40, 56, NUM_CLASSES) and out["logits"].dtype == jnp.float32
    assert out["per_scale"][0.5]["logits"].shape == (2, 20, 28, NUM_CLASSES)
    assert out["per_scale"][0.5]["attention"].shape == (2, 20, 28, 1)
    grad_norms = jax.tree_util.tree_map(lambda g: float(jnp.abs(g).max()), grads)
    assert grad_norms["scale_attn"]["conv2"]["kernel"] > 0  # the attention head learns from the fused loss
    assert grad_norms["backbone"]["conv1"]["kernel"] > 0
    # Each BN saw two batches (0.5x, then 1.0x): its running mean moved away from the init.
    assert not np.allclose(state["batch_stats"]["backbone"]["bn1"]["mean"], 0.0)


def test_two_scale_equals_fuse_over_half_and_one_bit_for_bit(tiny_ocr):
    model, variables = tiny_ocr
    two = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, IMAGES)
    fused = jax.jit(lambda v, x: model.apply(v, x, scales=(0.5, 1.0)))(variables, IMAGES)
    np.testing.assert_array_equal(np.asarray(two["logits"]), np.asarray(fused["logits"]))
    np.testing.assert_array_equal(np.asarray(two["aux_logits"]), np.asarray(fused["aux_logits"]))


def test_outputs_match_input_size_for_odd_sizes(tiny_ocr):
    model, variables = tiny_ocr
    images = np.random.default_rng(1).normal(size=(1, 45, 67, 3)).astype(np.float32)
    out = jax.jit(lambda v, x: model.apply(v, x, scales=(0.5, 1.0, 2.0)))(variables, images)
    assert out["logits"].shape == (1, 45, 67, NUM_CLASSES)
    assert {s: o["logits"].shape[1:3] for s, o in out["per_scale"].items()} == \
        {0.5: (22, 33), 1.0: (45, 67), 2.0: (90, 134)}
    attention = np.asarray(out["per_scale"][0.5]["attention"])
    assert attention.min() > 0 and attention.max() < 1


def test_predict_fn_compiles_once_per_scale_set_and_shape(tiny_ocr, caplog):
    model, variables = tiny_ocr
    predict = hmsa_jax.make_predict_fn(model)
    with caplog.at_level(logging.INFO, logger="hmsa_jax.models.inference"):
        a = predict(variables, IMAGES, scales=(1.0, 0.5))
        b = predict(variables, IMAGES, scales=[0.5, 1.0])
        predict(variables, IMAGES[:1], scales=(0.5, 1.0))
    compiles = [r for r in caplog.records if "compiling" in r.getMessage()]
    assert len(compiles) == 2  # two input shapes, one scale set
    np.testing.assert_array_equal(np.asarray(a["logits"]), np.asarray(b["logits"]))
    with pytest.raises(ValueError, match="must contain 1.0"):
        predict(variables, IMAGES, scales=(0.5, 2.0))
    logits_only = hmsa_jax.make_predict_fn(model, outputs=("logits",))(variables, IMAGES, scales=(0.5, 1.0))
    assert set(logits_only) == {"logits"}
    np.testing.assert_array_equal(np.asarray(logits_only["logits"]), np.asarray(a["logits"]))


def test_single_scale_model_refuses_hierarchical_fusion():
    model = hmsa_jax.create_model("resnet_tiny_deeplabv3plus", num_classes=NUM_CLASSES)
    variables = abstract_variables(model, (40, 56))
    with pytest.raises(ValueError, match="fusion='hierarchical' needs a model with attention"):
        jax.eval_shape(lambda v, x: model.apply(v, x, scales=(0.5, 1.0)), variables, IMAGES)
    out = jax.eval_shape(lambda v, x: model.apply(v, x, scales=(0.5, 1.0), fusion="avg"), variables, IMAGES)
    assert out["logits"].shape == (2, 40, 56, NUM_CLASSES)


def test_bf16_compute_gives_float32_outputs_and_params():
    model = hmsa_jax.create_model("resnet_tiny_deeplabv3plus_mscale", num_classes=NUM_CLASSES, dtype=jnp.bfloat16)
    variables = jax.jit(functools.partial(model.init, train=False))(jax.random.key(0), IMAGES)
    assert {x.dtype for x in jax.tree_util.tree_leaves(variables)} == {jnp.dtype(jnp.float32)}
    out = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, IMAGES)
    assert out["logits"].dtype == jnp.float32
    assert out["per_scale"][0.5]["attention"].dtype == jnp.float32
    f32 = hmsa_jax.create_model("resnet_tiny_deeplabv3plus_mscale", num_classes=NUM_CLASSES)
    out32 = jax.jit(lambda v, x: f32.apply(v, x, train=False))(variables, IMAGES)
    # Same weights, bf16 compute: close to float32, but not identical (it really ran in bf16).
    diff = np.abs(np.asarray(out["logits"]) - np.asarray(out32["logits"]))
    scale = np.abs(np.asarray(out32["logits"])).max()
    assert 0 < diff.max() < 0.1 * scale


def test_explicit_attention_weights_sum_to_one():
    model = hmsa_jax.create_model("resnet_tiny_deeplabv3plus_explicit", num_classes=NUM_CLASSES)
    variables = jax.jit(functools.partial(model.init, train=False))(jax.random.key(0), IMAGES)
    out = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, IMAGES)
    weights = np.asarray(out["scale_weights"])
    assert weights.shape == (2, 40, 56, 3)
    np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-5)
    assert sorted(out["per_scale"]) == [0.5, 1.0, 2.0]


def test_initialisation_follows_the_reference(tiny_ocr):
    _, variables = tiny_ocr
    params = variables["params"]
    # HRNet trunk: N(0, 0.001).
    trunk_kernels = np.concatenate([np.ravel(k) for path, k in jax.tree_util.tree_flatten_with_path(
        params["backbone"])[0] if path[-1].key == "kernel"])
    assert abs(trunk_kernels.std() - 0.001) < 1e-4
    # OCR convs: PyTorch defaults, U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias.
    conv = params["ocr"]["conv3x3_ocr_0"]
    bound = 1 / np.sqrt(np.prod(conv["kernel"].shape[:3]))
    for leaf in (conv["kernel"], conv["bias"]):
        assert np.abs(leaf).max() <= bound and np.abs(leaf).max() > 0.8 * bound
    bn = params["ocr"]["conv3x3_ocr_1_0"]
    assert np.all(bn["scale"] == 1) and np.all(bn["bias"] == 0)
    assert np.all(variables["batch_stats"]["ocr"]["conv3x3_ocr_1_0"]["var"] == 1)


def test_initialising_on_a_small_image_gives_the_crop_sized_variables(tiny_ocr):
    """train() initialises on init_image_shape(crop) images, not crop-sized ones: the variables
    are the same, value for value."""
    from hmsa_jax.train.state import init_image_shape, init_variables

    model, _ = tiny_ocr
    crop = (96, 160)
    small = init_image_shape(crop)
    assert small == (1, 64, 64, 3) and init_image_shape((32, 48)) == (1, 32, 48, 3)
    assert init_image_shape(crop, lo_scale=1 / 80) == (1, 80, 80, 3)  # 0.0125x must leave a pixel
    init = lambda shape: jax.jit(lambda key: init_variables(model, key, shape))(jax.random.key(3))
    on_crop, on_small = init((1, *crop, 3)), init(small)
    assert jax.tree_util.tree_structure(on_crop) == jax.tree_util.tree_structure(on_small)
    for a, b in zip(jax.tree_util.tree_leaves(on_crop), jax.tree_util.tree_leaves(on_small)):
        np.testing.assert_array_equal(a, b)


def test_he_trunk_init_changes_only_the_trunk_kernels(tiny_ocr):
    """trunk_init="he": every trunk conv ~ N(0, 2 / fan_out); everything else as the reference."""
    model, reference = tiny_ocr
    he = jax.jit(functools.partial(model.clone(trunk_init="he").init, train=False))(jax.random.key(0), IMAGES)
    trunk_kernels = [(path, k) for path, k in jax.tree_util.tree_flatten_with_path(
        he["params"]["backbone"])[0] if path[-1].key == "kernel"]
    assert len(trunk_kernels) > 20
    for path, kernel in trunk_kernels:
        height, width, _, out = kernel.shape
        expected = np.sqrt(2.0 / (height * width * out))
        assert abs(np.std(kernel) / expected - 1) < 0.35 or kernel.size < 200, jax.tree_util.keystr(path)
    pooled = np.concatenate([np.ravel(k) / np.sqrt(2.0 / np.prod(np.shape(k)[:2]) / np.shape(k)[3])
                             for _, k in trunk_kernels])
    assert abs(pooled.std() - 1) < 0.02
    same = jax.tree_util.tree_map(np.array_equal, {**he["params"], "backbone": None},
                                  {**reference["params"], "backbone": None})
    assert all(jax.tree_util.tree_leaves(same))
    assert jax.tree_util.tree_structure(he) == jax.tree_util.tree_structure(reference)


def test_trunk_rematerialisation_keeps_the_names():
    """The full HRNet-W48 tree is unchanged by remat (abstractly, nothing computed). That a remat
    step updates exactly as a plain one is tests/test_train_options.py's."""
    hrnet = hmsa_jax.create_model("hrnet48_ocr_mscale")
    assert jax.tree_util.tree_structure(abstract_variables(hrnet)) == \
        jax.tree_util.tree_structure(abstract_variables(hrnet.clone(remat_trunk=True)))
