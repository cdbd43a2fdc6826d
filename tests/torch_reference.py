"""An independent PyTorch re-implementation of the reference forward pass, for parity tests.

Written from ../shared/reference/HMSA_REFERENCE.md (not from hmsa_jax), with the reference's
module names so that its state dict has the reference's keys, and parameterised by width so the
tests can run it tiny. Everything NCHW as in PyTorch.

  HRNetOCRMscale: HRNetV2 trunk + OCR + scale attention; two_scale() and nscale()
  DeepV3PlusMscale: ResNet-50 (output stride 8) + DeepLabV3+ + scale attention
  Mscale.training_loss(): the two-scale training forward and the reference's loss (CE or RMI)
"""
from __future__ import annotations

import collections

import torch
import torch.nn as nn
import torch.nn.functional as F


def bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=1e-5, momentum=0.1)


def conv(cin: int, cout: int, k: int, stride: int = 1, dilation: int = 1, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride=stride, padding=dilation * (k - 1) // 2, dilation=dilation, bias=bias)


def upsample_to(x: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def resize_by(x: torch.Tensor, scale: float) -> torch.Tensor:
    """The reference's ResizeX: floor(H*s) x floor(W*s)."""
    if scale == 1.0:
        return x
    return F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False,
                         recompute_scale_factor=True)


class BasicBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1, self.bn1 = conv(channels, channels, 3), bn(channels)
        self.conv2, self.bn2 = conv(channels, channels, 3), bn(channels)

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + x)


class Bottleneck(nn.Module):
    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1):
        super().__init__()
        out = planes * 4
        self.conv1, self.bn1 = conv(inplanes, planes, 1), bn(planes)
        self.conv2, self.bn2 = conv(planes, planes, 3, stride=stride, dilation=dilation), bn(planes)
        self.conv3, self.bn3 = conv(planes, out, 1), bn(out)
        self.downsample = (nn.Sequential(conv(inplanes, out, 1, stride=stride), bn(out))
                           if stride != 1 or inplanes != out else None)

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(y + shortcut)


# ----------------------------------------------------------------------------- HRNetV2

class HighResolutionModule(nn.Module):
    def __init__(self, widths, num_blocks: int):
        super().__init__()
        n = len(widths)
        self.branches = nn.ModuleList(
            nn.Sequential(*[BasicBlock(w) for _ in range(num_blocks)]) for w in widths)
        fuse = []
        for i in range(n):
            row = []
            for j in range(n):
                if j > i:
                    row.append(nn.Sequential(conv(widths[j], widths[i], 1), bn(widths[i])))
                elif j == i:
                    row.append(None)
                else:
                    steps = []
                    for k in range(i - j):
                        if k == i - j - 1:
                            steps.append(nn.Sequential(conv(widths[j], widths[i], 3, stride=2), bn(widths[i])))
                        else:
                            steps.append(nn.Sequential(conv(widths[j], widths[j], 3, stride=2), bn(widths[j]),
                                                       nn.ReLU()))
                    row.append(nn.Sequential(*steps))
            fuse.append(nn.ModuleList(row))
        self.fuse_layers = nn.ModuleList(fuse)

    def forward(self, xs):
        xs = [branch(x) for branch, x in zip(self.branches, xs)]
        out = []
        for i in range(len(xs)):
            y = xs[0] if i == 0 else self.fuse_layers[i][0](xs[0])
            for j in range(1, len(xs)):
                if j == i:
                    y = y + xs[j]
                elif j > i:
                    y = y + upsample_to(self.fuse_layers[i][j](xs[j]), xs[i].shape[2:])
                else:
                    y = y + self.fuse_layers[i][j](xs[j])
            out.append(F.relu(y))
        return out


def make_transition(previous, current) -> nn.ModuleList:
    layers = []
    for i, width in enumerate(current):
        if i < len(previous):
            layers.append(None if previous[i] == width else
                          nn.Sequential(conv(previous[i], width, 3), bn(width), nn.ReLU()))
        else:  # one new branch per stage, from the coarsest existing one
            layers.append(nn.Sequential(nn.Sequential(conv(previous[-1], width, 3, stride=2), bn(width), nn.ReLU())))
    return nn.ModuleList(layers)


class HRNetV2(nn.Module):
    def __init__(self, widths=(48, 96, 192, 384), stem_width=64, stage1_planes=64, stage1_blocks=4,
                 modules_per_stage=(1, 4, 3), blocks_per_branch=4):
        super().__init__()
        self.conv1, self.bn1 = conv(3, stem_width, 3, stride=2), bn(stem_width)
        self.conv2, self.bn2 = conv(stem_width, stem_width, 3, stride=2), bn(stem_width)
        blocks, inplanes = [], stem_width
        for _ in range(stage1_blocks):
            blocks.append(Bottleneck(inplanes, stage1_planes))
            inplanes = stage1_planes * 4
        self.layer1 = nn.Sequential(*blocks)
        previous = [inplanes]
        for stage, num_modules in zip((2, 3, 4), modules_per_stage):
            current = list(widths[:stage])
            setattr(self, f"transition{stage - 1}", make_transition(previous, current))
            setattr(self, f"stage{stage}", nn.ModuleList(
                HighResolutionModule(current, blocks_per_branch) for _ in range(num_modules)))
            previous = current
        self.out_channels = sum(widths)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        xs = [self.layer1(x)]
        for stage in (2, 3, 4):
            transition = getattr(self, f"transition{stage - 1}")
            xs = [(xs[i] if i < len(xs) else xs[-1]) if t is None else t(xs[i] if i < len(xs) else xs[-1])
                  for i, t in enumerate(transition)]
            for module in getattr(self, f"stage{stage}"):
                xs = module(xs)
        size = xs[0].shape[2:]
        return torch.cat([xs[0]] + [upsample_to(x, size) for x in xs[1:]], dim=1)


# ----------------------------------------------------------------------------- OCR

def bn_relu(channels: int) -> nn.Sequential:
    return nn.Sequential(bn(channels), nn.ReLU())


def spatial_gather(feats: torch.Tensor, aux_logits: torch.Tensor) -> torch.Tensor:
    """Per class, a softmax over positions weights the features: [B, C, K, 1]."""
    b, k = aux_logits.shape[:2]
    probs = F.softmax(aux_logits.reshape(b, k, -1), dim=2)                    # B x K x HW
    regions = torch.matmul(probs, feats.reshape(b, feats.shape[1], -1).permute(0, 2, 1))  # B x K x C
    return regions.permute(0, 2, 1).unsqueeze(3)


class ObjectAttentionBlock(nn.Module):
    def __init__(self, in_channels: int, key_channels: int):
        super().__init__()
        self.key_channels = key_channels
        self.f_pixel = nn.Sequential(conv(in_channels, key_channels, 1), bn_relu(key_channels),
                                     conv(key_channels, key_channels, 1), bn_relu(key_channels))
        self.f_object = nn.Sequential(conv(in_channels, key_channels, 1), bn_relu(key_channels),
                                      conv(key_channels, key_channels, 1), bn_relu(key_channels))
        self.f_down = nn.Sequential(conv(in_channels, key_channels, 1), bn_relu(key_channels))
        self.f_up = nn.Sequential(conv(key_channels, in_channels, 1), bn_relu(in_channels))

    def forward(self, x, regions):
        b, _, h, w = x.shape
        query = self.f_pixel(x).reshape(b, self.key_channels, -1).permute(0, 2, 1)
        key = self.f_object(regions).reshape(b, self.key_channels, -1)
        value = self.f_down(regions).reshape(b, self.key_channels, -1).permute(0, 2, 1)
        sim = F.softmax(torch.matmul(query, key) * self.key_channels ** -0.5, dim=-1)
        context = torch.matmul(sim, value).permute(0, 2, 1).reshape(b, self.key_channels, h, w)
        return self.f_up(context)


class SpatialOCR(nn.Module):
    def __init__(self, channels: int, key_channels: int, dropout: float = 0.05):
        super().__init__()
        self.object_context_block = ObjectAttentionBlock(channels, key_channels)
        self.conv_bn_dropout = nn.Sequential(conv(2 * channels, channels, 1), bn_relu(channels), nn.Dropout2d(dropout))

    def forward(self, feats, regions):
        context = self.object_context_block(feats, regions)
        return self.conv_bn_dropout(torch.cat([context, feats], dim=1))


class OCRBlock(nn.Module):
    def __init__(self, high_channels: int, num_classes: int, mid_channels: int = 512, key_channels: int = 256):
        super().__init__()
        self.conv3x3_ocr = nn.Sequential(conv(high_channels, mid_channels, 3, bias=True), bn_relu(mid_channels))
        self.ocr_distri_head = SpatialOCR(mid_channels, key_channels)
        self.cls_head = conv(mid_channels, num_classes, 1, bias=True)
        self.aux_head = nn.Sequential(conv(high_channels, high_channels, 1, bias=True), bn_relu(high_channels),
                                      conv(high_channels, num_classes, 1, bias=True))

    def forward(self, high):
        feats = self.conv3x3_ocr(high)
        aux = self.aux_head(high)
        ocr_feats = self.ocr_distri_head(feats, spatial_gather(feats, aux))
        return self.cls_head(ocr_feats), aux, ocr_feats


def attention_head(in_channels: int, bottleneck: int = 256) -> nn.Sequential:
    return nn.Sequential(collections.OrderedDict([
        ("conv0", conv(in_channels, bottleneck, 3)), ("bn0", bn(bottleneck)), ("re0", nn.ReLU()),
        ("conv1", conv(bottleneck, bottleneck, 3)), ("bn1", bn(bottleneck)), ("re1", nn.ReLU()),
        ("conv2", conv(bottleneck, 1, 1)), ("sig", nn.Sigmoid())]))


# ----------------------------------------------------------------------------- multi-scale

def two_scale_fuse(lo: dict, hi: dict) -> dict:
    """P = U(a_lo * P_lo) + (1 - U(a_lo)) * P_hi, and the same for the aux logits."""
    size = hi["pred"].shape[2:]
    attn_up = upsample_to(lo["attn"], size)
    fuse = lambda k: upsample_to(lo["attn"] * lo[k], size) + (1 - attn_up) * hi[k]
    return {"pred": fuse("pred"), "aux": None if hi["aux"] is None else fuse("aux")}


def hierarchical_fuse(per_scale: dict) -> dict:
    """N-scale inference, scales in descending order, as the reference's nscale_forward."""
    pred = aux = None
    for s in sorted(per_scale, reverse=True):
        o = per_scale[s]
        if pred is None:
            pred, aux = o["pred"], o["aux"]
            continue
        a = o["attn"]
        if s >= 1.0:
            mix = lambda running, here: a * here + (1 - a) * upsample_to(running, here.shape[2:])
        else:
            a_up = upsample_to(a, pred.shape[2:])
            mix = lambda running, here: upsample_to(a * here, running.shape[2:]) + (1 - a_up) * running
        pred = mix(pred, o["pred"])
        aux = None if aux is None else mix(aux, o["aux"])
    return {"pred": pred, "aux": aux}


class Mscale(nn.Module):
    """The two-scale forward and N-scale hierarchical inference over `one_scale`."""

    def one_scale(self, x) -> dict:  # {"pred", "aux" (or None), "attn"}, all at the size of x
        raise NotImplementedError

    def two_scale(self, x, lo_scale: float = 0.5) -> dict:
        lo, hi = self.one_scale(resize_by(x, lo_scale)), self.one_scale(x)
        return {**two_scale_fuse(lo, hi), "per_scale": {lo_scale: lo, 1.0: hi}}

    def nscale(self, x, scales) -> dict:
        per_scale = {s: self.one_scale(resize_by(x, s)) for s in sorted(scales, reverse=True)}
        return {**hierarchical_fuse(per_scale), "per_scale": per_scale}

    def training_loss(self, x, labels, criterion: str, aux_weight: float = 0.4,
                      scale_weight: float = 0.05) -> torch.Tensor:
        """The reference's forward in training mode: the two-scale forward, then its loss
        crit_main(P) + aux_weight * crit_aux(A) + scale_weight * (crit_aux(U(P_lo)) + crit_aux(P_hi)).
        BN statistics are those of the current mode (call train() first to train)."""
        out = self.two_scale(x)
        crit_main, crit_aux = CRITERIA[criterion]
        lo, hi = out["per_scale"][min(out["per_scale"])]["pred"], out["per_scale"][1.0]["pred"]
        loss = crit_main(out["pred"], labels)
        if out["aux"] is not None:
            loss = loss + aux_weight * crit_aux(out["aux"], labels)
        return loss + scale_weight * (crit_aux(upsample_to(lo, hi.shape[2:]), labels) + crit_aux(hi, labels))


class HRNetOCRMscale(Mscale):
    def __init__(self, num_classes: int, trunk: dict | None = None, mid_channels: int = 512,
                 key_channels: int = 256, attention_channels: int = 256, attention: bool = True):
        super().__init__()
        self.backbone = HRNetV2(**(trunk or {}))
        self.ocr = OCRBlock(self.backbone.out_channels, num_classes, mid_channels, key_channels)
        if attention:
            self.scale_attn = attention_head(mid_channels, attention_channels)

    def one_scale(self, x):
        cls_out, aux_out, ocr_feats = self.ocr(self.backbone(x))
        size = x.shape[2:]
        attn = upsample_to(self.scale_attn(ocr_feats), size) if hasattr(self, "scale_attn") else None
        return {"pred": upsample_to(cls_out, size), "aux": upsample_to(aux_out, size), "attn": attn}


TINY_HRNET = dict(widths=(8, 16, 32, 64), stem_width=16, stage1_planes=8, stage1_blocks=1,
                  modules_per_stage=(1, 1, 1), blocks_per_branch=1)


def tiny_hrnet_ocr_mscale(num_classes: int, attention: bool = True) -> HRNetOCRMscale:
    """The counterpart of create_model('hrnet_tiny_ocr_mscale') as the registry defines it."""
    return HRNetOCRMscale(num_classes, TINY_HRNET, mid_channels=32, key_channels=16,
                          attention_channels=16, attention=attention)


# ----------------------------------------------------------------------------- ResNet-50 DeepLabV3+

class ResNetOS8(nn.Module):
    def __init__(self, blocks=(3, 4, 6, 3), planes=(64, 128, 256, 512), stem_width=64):
        super().__init__()
        self.layer0 = nn.Sequential(nn.Conv2d(3, stem_width, 7, stride=2, padding=3, bias=False), bn(stem_width),
                                    nn.ReLU(), nn.MaxPool2d(3, stride=2, padding=1))
        inplanes = stem_width
        for layer, (n, p, (stride, dilation)) in enumerate(
                zip(blocks, planes, ((1, 1), (2, 1), (1, 2), (1, 4))), start=1):
            layers = []
            for k in range(n):
                layers.append(Bottleneck(inplanes, p, stride=stride if k == 0 else 1, dilation=dilation))
                inplanes = p * 4
            setattr(self, f"layer{layer}", nn.Sequential(*layers))
        self.low_channels, self.high_channels = planes[0] * 4, planes[3] * 4

    def forward(self, x):
        low = self.layer1(self.layer0(x))
        return low, self.layer4(self.layer3(self.layer2(low)))


class ASPP(nn.Module):
    def __init__(self, in_channels: int, channels: int = 256, rates=(12, 24, 36)):
        super().__init__()
        self.img_conv = nn.Sequential(conv(in_channels, channels, 1), bn(channels), nn.ReLU())
        self.features = nn.ModuleList(
            [nn.Sequential(conv(in_channels, channels, 1), bn(channels), nn.ReLU())] +
            [nn.Sequential(conv(in_channels, channels, 3, dilation=r), bn(channels), nn.ReLU()) for r in rates])

    def forward(self, x):
        pooled = self.img_conv(F.adaptive_avg_pool2d(x, 1))
        return torch.cat([upsample_to(pooled, x.shape[2:])] + [f(x) for f in self.features], dim=1)


class DeepV3PlusMscale(Mscale):
    def __init__(self, num_classes: int, trunk: dict | None = None, aspp_channels: int = 256,
                 low_level_channels: int = 48, decoder_channels: int = 256, attention_channels: int = 256):
        super().__init__()
        self.backbone = ResNetOS8(**(trunk or {}))
        self.aspp = ASPP(self.backbone.high_channels, aspp_channels)
        self.bot_fine = conv(self.backbone.low_channels, low_level_channels, 1)
        self.bot_aspp = conv(5 * aspp_channels, aspp_channels, 1)
        cat = aspp_channels + low_level_channels
        self.final = nn.Sequential(conv(cat, decoder_channels, 3), bn(decoder_channels), nn.ReLU(),
                                   conv(decoder_channels, decoder_channels, 3), bn(decoder_channels), nn.ReLU(),
                                   conv(decoder_channels, num_classes, 1))
        self.scale_attn = attention_head(cat, attention_channels)

    def one_scale(self, x):
        low, high = self.backbone(x)
        conv_aspp = self.bot_aspp(self.aspp(high))
        conv_s2 = self.bot_fine(low)
        cat = torch.cat([conv_s2, upsample_to(conv_aspp, low.shape[2:])], dim=1)
        size = x.shape[2:]
        return {"pred": upsample_to(self.final(cat), size), "aux": None,
                "attn": upsample_to(self.scale_attn(cat), size)}


def tiny_deeplab_mscale(num_classes: int) -> DeepV3PlusMscale:
    """The counterpart of create_model('resnet_tiny_deeplabv3plus_mscale')."""
    return DeepV3PlusMscale(num_classes, dict(blocks=(1, 1, 1, 1), planes=(8, 16, 32, 64), stem_width=8),
                            aspp_channels=16, low_level_channels=8, decoder_channels=16, attention_channels=16)


# ----------------------------------------------------------------------------- losses

IGNORE_LABEL = 255
RMI_RADIUS, RMI_POOL, RMI_ALPHA, RMI_CLIP_MIN = 3, 4, 5e-4, 1e-6


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, labels, ignore_index=IGNORE_LABEL)


def _valid_one_hot(logits: torch.Tensor, labels: torch.Tensor):
    """(mask [B, 1, H, W], one-hot [B, K, H, W] zero at ignored pixels), in the logits' dtype."""
    k = logits.shape[1]
    mask = (labels < k).to(logits.dtype)
    one_hot = F.one_hot(labels * (labels < k).long(), k).permute(0, 3, 1, 2).to(logits.dtype) * mask[:, None]
    return mask[:, None], one_hot


def sigmoid_bce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sigmoid BCE against the one-hot labels, summed over valid pixels, / (valid pixels + 1)."""
    mask, one_hot = _valid_one_hot(logits, labels)
    summed = F.binary_cross_entropy_with_logits(logits, one_hot, weight=mask.expand_as(one_hot), reduction="sum")
    return summed / (mask.sum() + 1.0)


def _neighbourhoods(x: torch.Tensor, radius: int) -> torch.Tensor:
    """[B, K, H, W] -> [B, K, radius**2, N]: every full radius x radius window as a vector."""
    h, w = x.shape[2] - radius + 1, x.shape[3] - radius + 1
    shifted = [x[:, :, dy:dy + h, dx:dx + w] for dy in range(radius) for dx in range(radius)]
    return torch.stack(shifted, dim=2).flatten(3)


def rmi_lower_bound(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """RMI: pooled one-hot labels and masked probabilities, 9-vectors, float64 covariances,
    0.5 * logdet(C_yy - C_yp (C_pp + aI)^-1 C_py + aI) by Cholesky; mean over the batch, / 9,
    summed over the classes."""
    mask, one_hot = _valid_one_hot(logits, labels)
    probs = torch.sigmoid(logits) * mask + RMI_CLIP_MIN
    pool = lambda t: F.avg_pool2d(t, RMI_POOL, RMI_POOL, RMI_POOL // 2)
    la = _neighbourhoods(pool(one_hot), RMI_RADIUS).double()
    pr = _neighbourhoods(pool(probs), RMI_RADIUS).double()
    la = la - la.mean(dim=3, keepdim=True)
    pr = pr - pr.mean(dim=3, keepdim=True)
    eye = torch.eye(RMI_RADIUS ** 2, dtype=torch.float64)
    la_pr = la @ pr.transpose(2, 3)
    pr_cov_inv = torch.inverse(pr @ pr.transpose(2, 3) + RMI_ALPHA * eye)
    cond = la @ la.transpose(2, 3) - la_pr @ pr_cov_inv @ la_pr.transpose(2, 3)
    chol = torch.linalg.cholesky(cond + RMI_ALPHA * eye)
    half_log_det = torch.log(torch.diagonal(chol, dim1=-2, dim2=-1) + 1e-8).sum(-1)  # [B, K]
    return (half_log_det.mean(dim=0).to(logits.dtype) / RMI_RADIUS ** 2).sum()


def rmi_criterion(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return 0.5 * sigmoid_bce(logits, labels) + 0.5 * rmi_lower_bound(logits, labels)


# criterion -> (crit_main, crit_aux): with RMI the aux and per-scale terms are the BCE part alone.
CRITERIA = {"ce": (cross_entropy, cross_entropy), "rmi": (rmi_criterion, sigmoid_bce)}


def train_without_dropout_(model: nn.Module) -> nn.Module:
    """Training mode (BN on batch statistics, running stats updated) with every dropout off."""
    model.train()
    for m in model.modules():
        if isinstance(m, (nn.Dropout, nn.Dropout2d)):
            m.eval()
    return model


# ----------------------------------------------------------------------------- random weights

def randomize_(model: nn.Module, seed: int) -> nn.Module:
    """Random, well-scaled weights and BN statistics in every tensor (so misplacements show)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                t.fill_(7)
            elif name.endswith("running_var") or (name.endswith("weight") and t.ndim == 1):
                t.copy_(0.5 + torch.rand(t.shape, generator=gen))
            elif name.endswith("weight"):
                fan_in = t[0].numel()
                t.copy_(torch.randn(t.shape, generator=gen) * fan_in ** -0.5)
            else:  # biases, running means
                t.copy_(0.2 * torch.randn(t.shape, generator=gen))
    return model.eval()
