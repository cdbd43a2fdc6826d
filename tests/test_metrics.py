"""Confusion matrix under jit (also sharded) and the IoU tables, against numpy counting."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hmsa_jax import parallel
from hmsa_jax.metrics import confusion_matrix, format_scores, segmentation_scores

K = 4


def _numpy_confusion(pred, label, valid):
    out = np.zeros((K, K), np.int64)
    for b in range(label.shape[0]):
        if not valid[b]:
            continue
        for p, l in zip(pred[b].ravel(), label[b].ravel()):
            if 0 <= l < K:
                out[l, p] += 1
    return out


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    pred = rng.integers(0, K, size=(8, 6, 10)).astype(np.int32)
    label = rng.integers(0, K, size=(8, 6, 10)).astype(np.int32)
    label[:, 0] = 255  # ignore
    label[:, 1, :3] = K  # out of range: also not counted
    label[:, 1, 3] = -1
    valid = np.array([True] * 6 + [False] * 2)
    return pred, label, valid


def test_confusion_matches_numpy_counting(batch):
    pred, label, valid = batch
    got = jax.jit(confusion_matrix, static_argnums=2)(pred, label, K, valid)
    np.testing.assert_array_equal(np.asarray(got), _numpy_confusion(pred, label, valid))
    every = np.asarray(confusion_matrix(pred, label, K))
    np.testing.assert_array_equal(every, _numpy_confusion(pred, label, np.ones(8, bool)))


def test_confusion_sharded_over_eight_devices(batch):
    pred, label, valid = batch
    mesh = parallel.make_mesh(8)
    arrays = parallel.global_batch({"p": pred, "l": label, "v": valid}, mesh)
    fn = jax.jit(lambda a: confusion_matrix(a["p"], a["l"], K, a["v"]),
                 out_shardings=parallel.replicated(mesh))
    np.testing.assert_array_equal(np.asarray(fn(arrays)), _numpy_confusion(pred, label, valid))


def test_scores_on_a_hand_computed_matrix():
    confusion = np.array([[5, 1, 0, 0],   # class 0: tp 5, fn 1, fp 2 -> 5/8
                          [2, 3, 0, 0],   # class 1: tp 3, fn 2, fp 1 -> 3/6
                          [0, 0, 0, 0],   # class 2: absent everywhere -> nan, excluded
                          [0, 0, 0, 4]])  # class 3: 4/4
    scores = segmentation_scores(confusion)
    np.testing.assert_allclose(scores["iou"][[0, 1, 3]], [5 / 8, 3 / 6, 1.0])
    assert np.isnan(scores["iou"][2])
    assert scores["miou"] == pytest.approx((5 / 8 + 0.5 + 1.0) / 3)
    assert scores["pixel_accuracy"] == pytest.approx(12 / 15)
    assert scores["mean_class_accuracy"] == pytest.approx((5 / 6 + 3 / 5 + 1.0) / 3)
    table = format_scores(scores, ["a", "b", "c", "d"])
    assert "n/a" in table and "mIoU" in table and "70.83" in table
    with pytest.raises(ValueError, match="3 class names for 4 classes"):
        format_scores(scores, ["a", "b", "c"])


def test_shape_mismatch_is_reported():
    with pytest.raises(ValueError, match="differ in shape"):
        confusion_matrix(jnp.zeros((1, 2, 2), jnp.int32), jnp.zeros((1, 2, 3), jnp.int32), K)
