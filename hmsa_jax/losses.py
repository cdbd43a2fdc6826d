"""Segmentation losses of the reference implementation: CE, sigmoid BCE and RMI.

All functions are pure and take
  logits: [B, H, W, K] float (any float dtype; cast to float32 first),
  labels: [B, H, W] int, where a pixel is valid iff 0 <= label < K and label != ignore_label.
Labels outside [0, K) other than `ignore_label` are treated as ignored too (PyTorch would raise;
inside `jit` we cannot, and the reference RMI loss masks `label >= K` the same way).

RMI (Region Mutual Information, Zhao et al. 2019) follows NVIDIA semantic-segmentation
`loss/rmi.py` with its defaults (radius 3, average pool 4/4 with padding 2, pos_alpha 5e-4).
The reference computes the 9x9 covariance algebra in float64; here it is float32 (see
`rmi_loss` for how the float32 version stays accurate, and WORKSPACE_NOTES.md for the measured
difference).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import jax
import jax.numpy as jnp

DEFAULT_IGNORE_LABEL = 255

# Constants of the reference RMI implementation.
RMI_CLIP_MIN = 1e-6  # added to the masked sigmoid probabilities
RMI_POS_ALPHA = 5e-4  # added to the diagonal of the covariances to keep them positive definite
RMI_LOG_EPS = 1e-8  # added to the Cholesky diagonal before the log

CRITERIA = ("rmi", "ce")


def valid_mask(labels: jax.Array, num_classes: int, ignore_label: int = DEFAULT_IGNORE_LABEL) -> jax.Array:
    """[B, H, W] bool: pixels whose label is a class in [0, num_classes) and not `ignore_label`."""
    return (labels >= 0) & (labels < num_classes) & (labels != ignore_label)


def _check_shapes(logits: jax.Array, labels: jax.Array) -> None:
    if logits.ndim != 4 or labels.shape != logits.shape[:3]:
        raise ValueError(
            f"expected logits [B, H, W, K] and labels [B, H, W]; got logits {logits.shape} and labels {labels.shape}"
        )


def cross_entropy(logits: jax.Array, labels: jax.Array, ignore_label: int = DEFAULT_IGNORE_LABEL) -> jax.Array:
    """Softmax cross-entropy averaged over valid pixels (PyTorch CrossEntropyLoss(ignore_index)).

    Args:
      logits: [B, H, W, K].
      labels: [B, H, W] int.
    Returns:
      scalar float32. When no pixel is valid the loss is 0 (PyTorch gives NaN), so a crop that is
      all ignore label contributes nothing instead of poisoning the step.
    """
    _check_shapes(logits, labels)
    logits = logits.astype(jnp.float32)
    mask = valid_mask(labels, logits.shape[-1], ignore_label)
    safe_labels = jnp.where(mask, labels, 0).astype(jnp.int32)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(log_probs, safe_labels[..., None], axis=-1)[..., 0]
    num_valid = jnp.sum(mask)
    return jnp.sum(jnp.where(mask, nll, 0.0)) / jnp.maximum(num_valid, 1).astype(jnp.float32)


def _masked_one_hot(labels: jax.Array, mask: jax.Array, num_classes: int) -> jax.Array:
    """[B, H, W, K] float32 one-hot of the labels, all zeros at invalid pixels."""
    return jax.nn.one_hot(jnp.where(mask, labels, 0), num_classes, dtype=jnp.float32) * mask[..., None]


def sigmoid_bce(logits: jax.Array, labels: jax.Array, ignore_label: int = DEFAULT_IGNORE_LABEL) -> jax.Array:
    """The BCE part of the reference RMI loss.

    Per-class sigmoid binary cross-entropy against one-hot labels, summed over valid pixels and
    all classes, divided by (number of valid pixels + 1). The class count is logits.shape[-1].

    Args:
      logits: [B, H, W, K].
      labels: [B, H, W] int.
    Returns:
      scalar float32 (0 when no pixel is valid).
    """
    _check_shapes(logits, labels)
    logits = logits.astype(jnp.float32)
    num_classes = logits.shape[-1]
    mask = valid_mask(labels, num_classes, ignore_label)
    targets = _masked_one_hot(labels, mask, num_classes)
    # Stable BCE with logits: max(x, 0) - x*t + log(1 + exp(-|x|)).
    per_element = jnp.maximum(logits, 0.0) - logits * targets + jnp.log1p(jnp.exp(-jnp.abs(logits)))
    total = jnp.sum(jnp.where(mask[..., None], per_element, 0.0))
    return total / (jnp.sum(mask).astype(jnp.float32) + 1.0)


def _avg_pool_nhwc(x: jax.Array, window: int, padding: int) -> jax.Array:
    """PyTorch F.avg_pool2d(kernel=stride=window, padding) on NHWC, count_include_pad=True.

    [B, H, W, C] -> [B, (H + 2p - window) // window + 1, (W + ...) // window + 1, C].
    """
    summed = jax.lax.reduce_window(
        x,
        0.0,
        jax.lax.add,
        window_dimensions=(1, window, window, 1),
        window_strides=(1, window, window, 1),
        padding=((0, 0), (padding, padding), (padding, padding), (0, 0)),
    )
    return summed / float(window * window)


def _region_vectors(x: jax.Array, radius: int) -> jax.Array:
    """[B, H, W, K] -> [B, K, radius**2, N]: every radius x radius neighbourhood as a vector.

    As the reference's map_get_pairs, only full neighbourhoods are used, so
    N = (H - radius + 1) * (W - radius + 1).
    """
    b, h, w, k = x.shape
    out_h, out_w = h - radius + 1, w - radius + 1
    if out_h < 1 or out_w < 1:
        raise ValueError(f"RMI needs a pooled map of at least {radius}x{radius}; got {h}x{w}")
    shifts = [x[:, dy : dy + out_h, dx : dx + out_w, :] for dy in range(radius) for dx in range(radius)]
    stacked = jnp.stack(shifts, axis=-1)  # [B, out_h, out_w, K, D]
    return jnp.transpose(stacked.reshape(b, out_h * out_w, k, radius * radius), (0, 2, 3, 1))


def _gram(a: jax.Array, b: jax.Array) -> jax.Array:
    """[..., D, N] x [..., E, N] -> [..., D, E] in full float32 (no TF32/bf16 passes on GPU)."""
    return jnp.einsum("...in,...jn->...ij", a, b, precision=jax.lax.Precision.HIGHEST)


def _rmi_log_det_per_class(label_vectors: jax.Array, prob_vectors: jax.Array, pos_alpha: float) -> jax.Array:
    """0.5 * logdet(Sigma_{Y|P} + alpha I) for each [B, K] pair of [D, N] vector sets.

    The reference forms Sigma_{Y|P} = C_yy - C_yp (C_pp + alpha I)^-1 C_py from the covariance
    matrices. For a good prediction that difference is ~alpha while the covariances are of order
    N (10^4..10^5 points), so in float32 the subtraction loses everything and the result can
    be indefinite (Cholesky -> NaN). The same matrix is computed here as

      Sigma_{Y|P} = E E^T + alpha B B^T,  B = C_yp (C_pp + alpha I)^-1,  E = Y - B P,

    an identity for that B (expand E E^T). Both terms are Gram matrices, so the result is
    positive semi-definite by construction, and E (the residual of regressing the label vectors
    on the probability vectors) is small where the cancellation happened, so it is accurate.
    One step of iterative refinement makes B accurate as well. An error in B only raises the
    value, quadratically: f(B + d) = f(B) + d (C_pp + alpha I) d^T.
    B is a stationary point of f, so the gradient needs no derivative through B (envelope
    theorem): B is held constant, which also keeps the ill-conditioned solve out of the backward
    pass.
    """
    dim = label_vectors.shape[-2]
    eye = jnp.eye(dim, dtype=jnp.float32)
    labels_c = label_vectors - jnp.mean(label_vectors, axis=-1, keepdims=True)
    probs_c = prob_vectors - jnp.mean(prob_vectors, axis=-1, keepdims=True)

    probs_sg = jax.lax.stop_gradient(probs_c)
    prob_cov_chol = jnp.linalg.cholesky(_gram(probs_sg, probs_sg) + pos_alpha * eye)

    def right_solve(rhs):  # rhs @ (C_pp + alpha I)^-1 via the Cholesky factor.
        solved = jax.scipy.linalg.cho_solve((prob_cov_chol, True), jnp.swapaxes(rhs, -1, -2))
        return jnp.swapaxes(solved, -1, -2)

    coef = right_solve(_gram(labels_c, probs_sg))
    residual = labels_c - jnp.matmul(coef, probs_sg, precision=jax.lax.Precision.HIGHEST)
    # Refinement: the gradient of f w.r.t. B is -2 (E P^T - alpha B).
    coef = coef + right_solve(_gram(residual, probs_sg) - pos_alpha * coef)
    coef = jax.lax.stop_gradient(coef)

    residual = labels_c - jnp.matmul(coef, probs_c, precision=jax.lax.Precision.HIGHEST)
    cond_cov = _gram(residual, residual) + pos_alpha * _gram(coef, coef)
    cond_cov = 0.5 * (cond_cov + jnp.swapaxes(cond_cov, -1, -2))
    chol = jnp.linalg.cholesky(cond_cov + pos_alpha * eye)
    diag = jnp.diagonal(chol, axis1=-2, axis2=-1)
    return jnp.sum(jnp.log(diag + RMI_LOG_EPS), axis=-1)  # 0.5 * 2 * sum(log diag)


def rmi_loss(
    logits: jax.Array,
    labels: jax.Array,
    ignore_label: int = DEFAULT_IGNORE_LABEL,
    *,
    radius: int = 3,
    pool_size: int = 4,
    pos_alpha: float = RMI_POS_ALPHA,
) -> jax.Array:
    """The region-mutual-information term of the reference RMI loss (without its BCE part).

    Probabilities sigmoid(logits) * valid + 1e-6 and the masked one-hot labels are average-pooled
    (kernel = stride = pool_size, padding pool_size // 2, zero padding counted), every
    radius x radius neighbourhood becomes a D = radius**2 vector, and per image and class
    0.5 * logdet(Sigma_{Y|P} + alpha I) is averaged over the batch, divided by D and summed over
    the classes.

    Args:
      logits: [B, H, W, K].
      labels: [B, H, W] int.
      radius: neighbourhood side.
      pool_size: average-pool window and stride; 1 disables pooling (as the reference).
      pos_alpha: diagonal regulariser.
    Returns:
      scalar float32. Lower is better; it is negative for good predictions.
    """
    _check_shapes(logits, labels)
    if radius < 1 or pool_size < 1:
        raise ValueError(f"rmi_loss needs radius >= 1 and pool_size >= 1; got radius={radius}, pool_size={pool_size}")
    logits = logits.astype(jnp.float32)
    num_classes = logits.shape[-1]
    mask = valid_mask(labels, num_classes, ignore_label)
    targets = _masked_one_hot(labels, mask, num_classes)
    probs = jax.nn.sigmoid(logits) * mask[..., None] + RMI_CLIP_MIN
    if pool_size > 1:
        targets = _avg_pool_nhwc(targets, pool_size, pool_size // 2)
        probs = _avg_pool_nhwc(probs, pool_size, pool_size // 2)
    half_log_det = _rmi_log_det_per_class(
        _region_vectors(targets, radius), _region_vectors(probs, radius), pos_alpha
    )  # [B, K]
    return jnp.sum(jnp.mean(half_log_det, axis=0) / float(radius * radius))


def _combined_rmi_parts(
    logits: jax.Array, labels: jax.Array, ignore_label: int, bce_weight: float
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(combined, BCE, RMI): the criterion and its two unweighted parts."""
    bce = sigmoid_bce(logits, labels, ignore_label)
    rmi = rmi_loss(logits, labels, ignore_label)
    return bce_weight * bce + (1.0 - bce_weight) * rmi, bce, rmi


def combined_rmi(
    logits: jax.Array, labels: jax.Array, ignore_label: int = DEFAULT_IGNORE_LABEL, *, bce_weight: float = 0.5
) -> jax.Array:
    """The reference's RMI criterion (lambda_way=1): bce_weight * BCE + (1 - bce_weight) * RMI."""
    return _combined_rmi_parts(logits, labels, ignore_label, bce_weight)[0]


def hmsa_training_loss(
    logits: jax.Array,
    aux_logits: jax.Array | None,
    per_scale_logits: Sequence[jax.Array] | None,
    labels: jax.Array,
    *,
    criterion: str = "rmi",
    aux_weight: float = 0.4,
    scale_supervision_weight: float = 0.05,
    ignore_label: int = DEFAULT_IGNORE_LABEL,
) -> tuple[jax.Array, Mapping[str, jax.Array]]:
    """The reference's training loss for a (multi-scale) HRNet-OCR prediction.

      total = aux_weight * crit_aux(A) + crit_main(P) + scale_supervision_weight * sum_s crit_aux(P_s)

    With criterion "ce" both criteria are cross-entropy; with "rmi", crit_main is
    0.5 * BCE + 0.5 * RMI and crit_aux is the sigmoid BCE alone.

    Args:
      logits: fused semantic logits P, [B, H, W, K] at label size.
      aux_logits: fused OCR auxiliary logits A, same shape, or None for models without an aux head.
      per_scale_logits: each scale's own logits already resized to label size (two-scale training:
        [U(P_lo), P_hi]), or None for single-scale models (no scale-supervision term).
      labels: [B, H, W] int.
    Returns:
      (total loss scalar, dict of the unweighted components "main", "aux", "scale_<i>", and for
      RMI "main_bce" and "main_rmi", plus "total").
    """
    if criterion not in CRITERIA:
        raise ValueError(f"unknown criterion {criterion!r}; expected one of {CRITERIA}")
    components: dict[str, jax.Array] = {}
    if criterion == "ce":
        crit_aux = lambda x: cross_entropy(x, labels, ignore_label)
        main = cross_entropy(logits, labels, ignore_label)
    else:
        crit_aux = lambda x: sigmoid_bce(x, labels, ignore_label)
        main, components["main_bce"], components["main_rmi"] = _combined_rmi_parts(logits, labels, ignore_label, 0.5)
    components["main"] = main
    total = main
    if aux_logits is not None:
        components["aux"] = crit_aux(aux_logits)
        total = total + aux_weight * components["aux"]
    for i, scale_logits in enumerate(per_scale_logits or ()):
        components[f"scale_{i}"] = crit_aux(scale_logits)
        total = total + scale_supervision_weight * components[f"scale_{i}"]
    components["total"] = total
    return total, components
