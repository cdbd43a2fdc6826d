"""The fuse functions against the paper's equations, written out independently in NumPy."""
import numpy as np
import pytest
import jax.numpy as jnp

from hmsa_jax import multiscale
from hmsa_jax.ops import scaled_size
from tests.test_ops import torch_bilinear_reference as up_np

H, W, K = 12, 18, 4


def scale_output(rng, scale, attention=None, aux=True):
    h, w = scaled_size(H, W, scale)
    a = rng.uniform(0.05, 0.95, size=(1, h, w, 1)) if attention is None else np.full((1, h, w, 1), attention)
    return {"logits": rng.normal(size=(1, h, w, K)).astype(np.float32),
            "aux_logits": rng.normal(size=(1, h, w, K)).astype(np.float32) if aux else None,
            "attention": a.astype(np.float32)}


def as_jax(out):
    return {k: None if v is None else jnp.asarray(v) for k, v in out.items()}


def resize_np(x, like):
    return up_np(x.astype(np.float64), like.shape[1], like.shape[2])


def test_hierarchical_over_two_scales_is_two_scale_fuse_bit_for_bit():
    rng = np.random.default_rng(0)
    lo, hi = as_jax(scale_output(rng, 0.5)), as_jax(scale_output(rng, 1.0))
    two = multiscale.two_scale_fuse(lo, hi)
    fused = multiscale.hierarchical_fuse({1.0: hi, 0.5: lo})
    for key in ("logits", "aux_logits"):
        np.testing.assert_array_equal(np.asarray(two[key]), np.asarray(fused[key]))


def test_two_scale_fuse_is_paper_equation_with_product_before_upsample():
    rng = np.random.default_rng(1)
    lo, hi = scale_output(rng, 0.5), scale_output(rng, 1.0)
    expected = resize_np(lo["attention"] * lo["logits"], hi["logits"]) + \
        (1 - resize_np(lo["attention"], hi["logits"])) * hi["logits"]
    got = multiscale.two_scale_fuse(as_jax(lo), as_jax(hi))["logits"]
    np.testing.assert_allclose(np.asarray(got), expected, atol=1e-5)
    # U(a * P) is not U(a) * U(P): the order matters and the reference multiplies first.
    wrong = resize_np(lo["attention"], hi["logits"]) * resize_np(lo["logits"], hi["logits"]) + \
        (1 - resize_np(lo["attention"], hi["logits"])) * hi["logits"]
    assert not np.allclose(np.asarray(got), wrong, atol=1e-3)


def test_three_scales_follow_the_reference_recursion():
    """{0.5, 1.0, 2.0}: P = a1 * P1 + (1 - a1) * D(P2); then P = U(a.5 * P.5) + (1 - U(a.5)) * P."""
    rng = np.random.default_rng(2)
    outs = {s: scale_output(rng, s) for s in (0.5, 1.0, 2.0)}
    o5, o1, o2 = outs[0.5], outs[1.0], outs[2.0]
    p = o1["attention"] * o1["logits"] + (1 - o1["attention"]) * resize_np(o2["logits"], o1["logits"])
    p = resize_np(o5["attention"] * o5["logits"], p) + (1 - resize_np(o5["attention"], p)) * p
    # Any input order gives the same result.
    got = multiscale.hierarchical_fuse({s: as_jax(outs[s]) for s in (1.0, 0.5, 2.0)})["logits"]
    np.testing.assert_allclose(np.asarray(got), p, atol=1e-5)


@pytest.mark.parametrize("scales", [(0.5, 1.0), (0.25, 0.5, 1.0, 2.0), (1.0, 1.5, 2.0)])
def test_attention_zero_gives_the_highest_scale(scales):
    rng = np.random.default_rng(3)
    outs = {s: scale_output(rng, s, attention=0.0) for s in scales}
    fused = multiscale.hierarchical_fuse({s: as_jax(o) for s, o in outs.items()})
    # The highest scale's logits, brought down through each scale >= 1.0 in turn.
    expected = outs[max(scales)]["logits"]
    for s in sorted((s for s in scales if s >= 1.0), reverse=True)[1:]:
        expected = resize_np(expected, outs[s]["logits"])
    np.testing.assert_allclose(np.asarray(fused["logits"]), expected, atol=1e-5)


@pytest.mark.parametrize("scales", [(0.5, 1.0), (0.25, 0.5, 1.0, 2.0), (1.0, 2.0)])
def test_attention_one_gives_the_lowest_scale(scales):
    rng = np.random.default_rng(4)
    outs = {s: scale_output(rng, s, attention=1.0) for s in scales}
    fused = multiscale.hierarchical_fuse({s: as_jax(o) for s, o in outs.items()})
    expected = resize_np(outs[min(scales)]["logits"], outs[1.0]["logits"])
    np.testing.assert_allclose(np.asarray(fused["logits"]), expected, atol=1e-5)


def test_single_scale_fuse_is_identity():
    out = as_jax(scale_output(np.random.default_rng(5), 1.0))
    np.testing.assert_array_equal(np.asarray(multiscale.hierarchical_fuse({1.0: out})["logits"]),
                                  np.asarray(out["logits"]))


def test_average_and_max_baselines():
    rng = np.random.default_rng(6)
    outs = {s: scale_output(rng, s) for s in (0.5, 1.0, 2.0)}
    resized = np.stack([resize_np(o["logits"], outs[1.0]["logits"]) for o in outs.values()])
    per_scale = {s: as_jax(o) for s, o in outs.items()}
    np.testing.assert_allclose(np.asarray(multiscale.average_fuse(per_scale)["logits"]), resized.mean(0), atol=1e-5)
    np.testing.assert_allclose(np.asarray(multiscale.max_fuse(per_scale)["logits"]), resized.max(0), atol=1e-5)
    # The aux logits are pooled the same way (the baselines train OCR's aux head on them).
    resized_aux = np.stack([resize_np(o["aux_logits"], outs[1.0]["logits"]) for o in outs.values()])
    np.testing.assert_allclose(np.asarray(multiscale.average_fuse(per_scale)["aux_logits"]),
                               resized_aux.mean(0), atol=1e-5)
    np.testing.assert_allclose(np.asarray(multiscale.max_fuse(per_scale)["aux_logits"]),
                               resized_aux.max(0), atol=1e-5)
    without_aux = {s: as_jax(scale_output(rng, s, aux=s != 2.0)) for s in (0.5, 1.0, 2.0)}
    assert multiscale.average_fuse(without_aux)["aux_logits"] is None


def test_average_and_max_take_scales_without_one_at_the_input_size():
    rng = np.random.default_rng(7)
    outs = {s: scale_output(rng, s) for s in (0.5, 1.5, 2.0)}
    like = np.zeros((1, H, W, K))
    resized = np.stack([resize_np(o["logits"], like) for o in outs.values()])
    per_scale = {s: as_jax(o) for s, o in outs.items()}
    average = np.asarray(multiscale.average_fuse(per_scale, size=(H, W))["logits"])
    assert average.shape == (1, H, W, K)
    np.testing.assert_allclose(average, resized.mean(0), atol=1e-5)
    np.testing.assert_allclose(np.asarray(multiscale.max_fuse(per_scale, size=(H, W))["logits"]),
                               resized.max(0), atol=1e-5)
    assert multiscale.validate_scales((0.5, 2.0), require_one=False) == (0.5, 2.0)
    with pytest.raises(ValueError, match="must contain 1.0 for hierarchical fusion.*avg and max"):
        multiscale.validate_scales((0.5, 2.0))


def test_model_avg_fusion_without_one_returns_the_input_size():
    import jax

    from hmsa_jax import create_model

    model = create_model("resnet_tiny_deeplabv3plus_mscale", num_classes=3)
    images = jnp.zeros((1, 32, 48, 3))
    variables = jax.jit(lambda k: model.init(k, images, train=False))(jax.random.key(0))
    out = jax.jit(lambda v, x: model.apply(v, x, train=False, scales=(0.5, 2.0), fusion="avg"))(variables, images)
    assert out["logits"].shape == (1, 32, 48, 3) and sorted(out["per_scale"]) == [0.5, 2.0]
    with pytest.raises(ValueError, match="must contain 1.0 for hierarchical"):
        model.apply(variables, images, train=False, scales=(0.5, 2.0), fusion="hierarchical")


def test_explicit_fuse_weights_each_scale():
    rng = np.random.default_rng(7)
    scales = (0.5, 1.0, 2.0)
    outs = {s: scale_output(rng, s) for s in scales}
    raw = rng.normal(size=(1, H, W, 3))
    weights = np.exp(raw) / np.exp(raw).sum(-1, keepdims=True)
    expected = sum(weights[..., i:i + 1] * resize_np(outs[s]["logits"], outs[1.0]["logits"])
                   for i, s in enumerate(scales))
    got = multiscale.explicit_fuse({s: as_jax(o) for s, o in outs.items()}, jnp.asarray(weights, jnp.float32), scales)
    np.testing.assert_allclose(np.asarray(got["logits"]), expected, atol=1e-5)
    expected_aux = sum(weights[..., i:i + 1] * resize_np(outs[s]["aux_logits"], outs[1.0]["logits"])
                       for i, s in enumerate(scales))
    np.testing.assert_allclose(np.asarray(got["aux_logits"]), expected_aux, atol=1e-5)


@pytest.mark.parametrize("scales,message", [
    ((0.5, 2.0), "must contain 1.0"),
    ((0.0, 1.0), "must be positive"),
    ((-0.5, 1.0), "must be positive"),
    ((1.0, 1.0), "must not repeat"),
    (("a", 1.0), "list of numbers"),
])
def test_bad_scale_lists_are_refused(scales, message):
    with pytest.raises(ValueError, match=message):
        multiscale.validate_scales(scales)
