"""Converted weights compute what PyTorch computes.

Layer level: our layers against PyTorch's own functional ops (F.conv2d, F.batch_norm,
F.interpolate, softmax/matmul), with weights converted by `hmsa_jax.convert`: 1e-5.
End to end: tiny-width models against the independent PyTorch re-implementation of the reference
in tests/torch_reference.py, sharing one random state dict: 1e-4.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="needs torch (the `convert` extra: pip install -e '.[convert]') for the parity checks")
F = torch.nn.functional

import torch_reference as R  # noqa: E402
from hmsa_jax import multiscale, ops  # noqa: E402
from hmsa_jax.convert.mapping import ConversionReport, convert_state_dict, place_state_dict  # noqa: E402
from hmsa_jax.models import create_model  # noqa: E402
from hmsa_jax.models.heads import ScaleAttentionHead  # noqa: E402
from hmsa_jax.models.hrnet import HighResolutionModule  # noqa: E402
from hmsa_jax.models.ocr import ObjectAttention, OCRBlock, soft_object_regions  # noqa: E402

LAYER_TOL = 1e-5
MODEL_TOL = 1e-4
RNG = np.random.default_rng(0)


def nhwc(t: "torch.Tensor") -> np.ndarray:
    return t.detach().numpy().transpose(0, 2, 3, 1)


def nchw(a) -> "torch.Tensor":
    return torch.from_numpy(np.asarray(a).transpose(0, 3, 1, 2).copy())


def normal(*shape) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def converted(flax_module, state: dict, *inputs, **kwargs) -> dict:
    """The flax module's variables, every one loaded from a torch state dict (a full match)."""
    abstract = jax.eval_shape(functools.partial(flax_module.init, **kwargs), jax.random.key(0), *inputs)
    report = ConversionReport(source="test", model=type(flax_module).__name__, num_classes=0)

    def unexpected_init():
        raise AssertionError(f"not a full match: {report.summary()}")

    state = {k: (v.detach().numpy() if isinstance(v, torch.Tensor) else v) for k, v in state.items()}
    variables = place_state_dict(state, abstract, unexpected_init, report)
    assert report.full_match and not report.skipped, report.summary()
    return variables


def assert_close(ours, theirs, tol, what):
    ours, theirs = np.asarray(ours), np.asarray(theirs)
    assert ours.shape == theirs.shape, (what, ours.shape, theirs.shape)
    diff = float(np.max(np.abs(ours - theirs)))
    assert diff <= tol, f"{what}: max abs diff {diff:.3g} > {tol}"


# ----------------------------------------------------------------------------- layers

@pytest.mark.parametrize("cin,cout,kernel,stride,dilation,padding,bias", [
    (5, 7, 3, 1, 1, 1, False),     # BasicBlock
    (5, 7, 3, 2, 1, 1, False),     # stem / transition / fuse: pads (1, 1), not SAME's (0, 1)
    (5, 7, 3, 1, 2, 2, False),     # ResNet layer3 at output stride 8
    (5, 7, 3, 1, 12, 12, False),   # ASPP rate 12: the taps reach past the 13x10 input
    (5, 7, 1, 1, 1, 0, True),      # OCR's biased 1x1 convs
    (3, 8, 7, 2, 1, 3, False),     # ResNet stem
])
def test_conv_matches_torch_conv2d(cin, cout, kernel, stride, dilation, padding, bias):
    weight = torch.from_numpy(normal(cout, cin, kernel, kernel))
    state = {"weight": weight} | ({"bias": torch.from_numpy(normal(cout))} if bias else {})
    x = normal(2, 13, 10, cin)
    layer = ops.conv(cout, kernel, stride=stride, dilation=dilation, use_bias=bias, in_features=cin)
    ours = jax.jit(layer.apply)(converted(layer, state, x), x)
    theirs = F.conv2d(nchw(x), weight, state.get("bias"), stride=stride, padding=padding, dilation=dilation)
    assert_close(ours, nhwc(theirs), LAYER_TOL * kernel * np.sqrt(cin), "conv")


def test_batchnorm_in_eval_mode_matches_torch():
    c = 6
    state = {"weight": normal(c), "bias": normal(c), "running_mean": normal(c),
             "running_var": (0.5 + RNG.random(c)).astype(np.float32)}
    x = normal(2, 5, 4, c)
    layer = ops.BatchNorm(use_running_average=True)
    ours = jax.jit(layer.apply)(converted(layer, state, x), x)
    t = {k: torch.from_numpy(v) for k, v in state.items()}
    theirs = F.batch_norm(nchw(x), t["running_mean"], t["running_var"], t["weight"], t["bias"],
                          training=False, eps=1e-5)
    assert_close(ours, nhwc(theirs), LAYER_TOL, "batch norm")


@pytest.mark.parametrize("in_hw,out_hw", [((5, 7), (20, 28)), ((13, 10), (29, 42)), ((29, 42), (14, 21)),
                                          ((8, 8), (3, 17))])
def test_bilinear_resize_matches_torch_interpolate(in_hw, out_hw):
    x = normal(2, *in_hw, 3)
    theirs = F.interpolate(nchw(x), size=out_hw, mode="bilinear", align_corners=False)
    assert_close(ops.resize_bilinear(jnp.asarray(x), out_hw), nhwc(theirs), LAYER_TOL, "resize")


@pytest.mark.parametrize("scale", [0.25, 0.5, 0.75, 1.5, 2.0])
def test_rescale_matches_torch_scale_factor(scale):
    x = normal(1, 29, 42, 3)
    theirs = F.interpolate(nchw(x), scale_factor=scale, mode="bilinear", align_corners=False,
                           recompute_scale_factor=True)
    assert_close(ops.rescale(jnp.asarray(x), scale), nhwc(theirs), LAYER_TOL, f"rescale {scale}")


def test_ocr_spatial_gather_matches_torch():
    feats, aux = normal(2, 6, 5, 8), normal(2, 6, 5, 4)
    b, k = 2, 4
    probs = F.softmax(nchw(aux).reshape(b, k, -1), dim=2)
    theirs = torch.matmul(probs, nchw(feats).reshape(b, 8, -1).permute(0, 2, 1))  # B x K x C
    assert_close(soft_object_regions(jnp.asarray(feats), jnp.asarray(aux)), theirs.numpy(), LAYER_TOL,
                 "spatial gather")


def test_ocr_object_attention_matches_torch():
    channels, key_channels = 12, 8
    reference = R.randomize_(R.ObjectAttentionBlock(channels, key_channels), seed=1)
    feats, regions = normal(2, 6, 5, channels), normal(2, 4, channels)
    layer = ObjectAttention(key_channels)
    variables = converted(layer, reference.state_dict(), feats, regions, train=False)
    ours = jax.jit(functools.partial(layer.apply, train=False))(variables, feats, regions)
    with torch.no_grad():
        theirs = reference(nchw(feats), torch.from_numpy(regions).permute(0, 2, 1).unsqueeze(3))
    assert_close(ours, nhwc(theirs), LAYER_TOL, "object attention")


def test_ocr_block_matches_torch():
    """conv3x3_ocr, aux head, gather, object attention, distributor, cls head, with their biases."""
    reference = R.randomize_(R.OCRBlock(high_channels=20, num_classes=4, mid_channels=12, key_channels=8), seed=2)
    x = normal(2, 7, 6, 20)
    block = OCRBlock(num_classes=4, mid_channels=12, key_channels=8)
    ours = jax.jit(functools.partial(block.apply, train=False))(converted(block, reference.state_dict(), x, train=False), x)
    with torch.no_grad():
        theirs = reference(nchw(x))
    for name, a, b in zip(("cls", "aux", "ocr feats"), ours, theirs):
        assert_close(a, nhwc(b), LAYER_TOL, name)


def test_scale_attention_head_matches_torch():
    reference = R.randomize_(R.attention_head(12, 8), seed=3)
    x = normal(2, 9, 7, 12)
    head = ScaleAttentionHead(bottleneck_channels=8)
    ours = jax.jit(head.apply)(converted(head, reference.state_dict(), x), x)
    with torch.no_grad():
        theirs = reference(nchw(x))
    assert_close(ours, nhwc(theirs), LAYER_TOL, "scale attention")


def test_hrnet_fuse_module_matches_torch():
    """Branches + all-to-all fuse: 1x1 + upsample from coarser, stride-2 3x3 chains from finer."""
    widths = (4, 6, 8)
    reference = R.randomize_(R.HighResolutionModule(widths, num_blocks=1), seed=4)
    xs = [normal(1, 11, 9, 4), normal(1, 6, 5, 6), normal(1, 3, 3, 8)]  # odd sizes, as from stride-2 convs
    module = HighResolutionModule(widths, num_blocks=1)
    ours = jax.jit(functools.partial(module.apply, train=False))(converted(module, reference.state_dict(), xs, train=False), xs)
    with torch.no_grad():
        theirs = reference([nchw(x) for x in xs])
    for i, (a, b) in enumerate(zip(ours, theirs)):
        assert_close(a, nhwc(b), LAYER_TOL, f"fused branch {i}")


def _scale_outputs(size_1x, scales, k=3):
    """Random per-scale outputs at floor(H*s) x floor(W*s), attention in (0, 1)."""
    outs = {}
    for s in scales:
        h, w = ops.scaled_size(*size_1x, s)
        outs[s] = {"logits": normal(1, h, w, k), "aux_logits": normal(1, h, w, k),
                   "attention": 1 / (1 + np.exp(-normal(1, h, w, 1)))}
    as_torch = {s: {"pred": nchw(o["logits"]), "aux": nchw(o["aux_logits"]), "attn": nchw(o["attention"])}
                for s, o in outs.items()}
    return outs, as_torch


def test_two_scale_fuse_matches_torch():
    ours, theirs = _scale_outputs((21, 30), (0.5, 1.0))
    fused = jax.jit(multiscale.two_scale_fuse)(ours[0.5], ours[1.0])
    expected = R.two_scale_fuse(theirs[0.5], theirs[1.0])
    assert_close(fused["logits"], nhwc(expected["pred"]), LAYER_TOL, "two-scale logits")
    assert_close(fused["aux_logits"], nhwc(expected["aux"]), LAYER_TOL, "two-scale aux")


@pytest.mark.parametrize("scales", [(0.5, 1.0, 2.0), (0.25, 0.5, 1.0, 2.0), (0.5, 1.0, 1.5, 2.0)])
def test_hierarchical_fuse_matches_torch(scales):
    ours, theirs = _scale_outputs((21, 30), scales)
    fused = jax.jit(multiscale.hierarchical_fuse)(ours)
    expected = R.hierarchical_fuse(theirs)
    assert_close(fused["logits"], nhwc(expected["pred"]), LAYER_TOL, f"{scales} logits")
    assert_close(fused["aux_logits"], nhwc(expected["aux"]), LAYER_TOL, f"{scales} aux")


# ----------------------------------------------------------------------------- whole models

def converted_model(reference, model_name: str, num_classes: int):
    """Our model and the reference's weights, converted strictly (every tensor placed)."""
    model = create_model(model_name, num_classes=num_classes)
    variables, _ = convert_state_dict({n: t.numpy() for n, t in reference.state_dict().items()}, model,
                                      source="torch_reference", model_name=model_name, strict=True)
    return model, variables


@pytest.mark.slow
def test_tiny_hrnet_ocr_mscale_matches_the_torch_reference_at_three_scales():
    k = 5
    reference = R.randomize_(R.tiny_hrnet_ocr_mscale(k), seed=10)
    model, variables = converted_model(reference, "hrnet_tiny_ocr_mscale", k)
    images = normal(1, 29, 42, 3)   # odd sizes: every resize and stride-2 conv sees an odd edge
    ours = jax.jit(lambda v, x: model.apply(v, x, scales=(0.5, 1.0, 2.0)))(variables, images)
    with torch.no_grad():
        theirs = reference.nscale(nchw(images), (0.5, 1.0, 2.0))

    assert_close(ours["logits"], nhwc(theirs["pred"]), MODEL_TOL, "fused logits")
    assert_close(ours["aux_logits"], nhwc(theirs["aux"]), MODEL_TOL, "fused aux logits")
    for s in (0.5, 1.0, 2.0):
        assert_close(ours["per_scale"][s]["logits"], nhwc(theirs["per_scale"][s]["pred"]), MODEL_TOL, f"logits {s}")
        assert_close(ours["per_scale"][s]["attention"], nhwc(theirs["per_scale"][s]["attn"]), MODEL_TOL,
                     f"attention {s}")
    # The comparison is informative: the outputs are not constant, and attention is not saturated.
    assert np.std(np.asarray(ours["logits"])) > 0.1
    assert 0.05 < float(np.min(ours["per_scale"][0.5]["attention"])) < float(
        np.max(ours["per_scale"][0.5]["attention"])) < 0.95


@pytest.mark.slow
def test_tiny_deeplab_mscale_two_scale_forward_matches_the_torch_reference():
    k = 4
    reference = R.randomize_(R.tiny_deeplab_mscale(k), seed=11)
    model, variables = converted_model(reference, "resnet_tiny_deeplabv3plus_mscale", k)
    images = normal(1, 33, 41, 3)
    ours = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, images)
    with torch.no_grad():
        theirs = reference.two_scale(nchw(images))

    assert_close(ours["logits"], nhwc(theirs["pred"]), MODEL_TOL, "fused logits")
    assert_close(ours["per_scale"][0.5]["attention"], nhwc(theirs["per_scale"][0.5]["attn"]), MODEL_TOL,
                 "attention 0.5")
    assert np.std(np.asarray(ours["logits"])) > 0.1
