"""Grain pipelines: determinism, exact resume (also through Orbax), per-process sharding, eval
padding with a validity mask, and strictness about bad data."""
import re

import grain
import numpy as np
import pytest
from PIL import Image

from hmsa_jax.data import build, pipeline, transforms
from hmsa_jax.data.class_uniform import compute_centroids
from hmsa_jax.data.config import default_data_config
from hmsa_jax.data.errors import DataError
from hmsa_jax.data.fake_layouts import write_fake_cityscapes
from hmsa_jax.data.sources import SyntheticScenes

AUGMENT = transforms.AugmentConfig(crop_size=(32, 64))


@pytest.fixture(scope="module")
def source():
    return SyntheticScenes(12, 48, 96)


def _train(source, **kwargs):
    options = dict(global_batch_size=4, seed=5, process_index=0, process_count=1)
    options.update(kwargs)
    return pipeline.train_dataset(source, AUGMENT, **options)


def _take(iterator, count):
    return [next(iterator) for _ in range(count)]


def _assert_same(batches_a, batches_b):
    assert len(batches_a) == len(batches_b)
    for a, b in zip(batches_a, batches_b):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


def test_train_batches_and_determinism(source):
    batches = _take(iter(_train(source)), 3)
    assert batches[0]["image"].shape == (4, 32, 64, 3) and batches[0]["image"].dtype == np.float32
    assert batches[0]["label"].shape == (4, 32, 64) and batches[0]["label"].dtype == np.int32
    _assert_same(batches, _take(iter(_train(source)), 3))
    other = _take(iter(_train(source, seed=6)), 1)[0]
    assert not np.array_equal(other["label"], batches[0]["label"])


def test_epochs_visit_every_record_once_without_class_uniform(source):
    sample = pipeline.TrainSample(source, AUGMENT, seed=0, epoch_size=12, num_primary=12,
                                  centroids=None, class_uniform_fraction=0.0, extra_probability=0.0)
    for epoch in range(2):
        records = [sample.spec(epoch * 12 + k)[0] for k in range(12)]
        assert sorted(records) == list(range(12))
    assert [sample.spec(k)[0] for k in range(12)] != [sample.spec(12 + k)[0] for k in range(12)]


def test_iterator_resumes_exactly(source):
    centroids = compute_centroids(source, 24)
    make = lambda: iter(_train(source, centroids=centroids, class_uniform_fraction=0.5))  # noqa: E731
    iterator = make()
    _take(iterator, 2)
    state = iterator.get_state()
    expected = _take(iterator, 4)  # crosses into the second epoch (12 samples = 3 batches)
    resumed = make()
    resumed.set_state(state)
    _assert_same(expected, _take(resumed, 4))


@pytest.mark.slow
def test_iterator_resumes_exactly_with_worker_processes(source):
    make = lambda: iter(_train(source, num_workers=2, prefetch=1))  # noqa: E731
    iterator = make()
    first = _take(iterator, 3)
    state = iterator.get_state()
    expected = _take(iterator, 3)
    iterator.close()
    _assert_same(first + expected, _take(iter(_train(source)), 6))  # workers change nothing
    resumed = make()
    resumed.set_state(state)
    _assert_same(expected, _take(resumed, 3))
    resumed.close()


def test_orbax_saves_and_restores_the_iterator(source, tmp_path):
    import orbax.checkpoint as ocp

    iterator = iter(_train(source))
    _take(iterator, 2)
    manager = ocp.CheckpointManager(str(tmp_path / "ckpt"), item_names=("data_iter",))
    manager.save(2, args=ocp.args.Composite(data_iter=grain.checkpoint.CheckpointSave(iterator)))
    manager.wait_until_finished()
    expected = _take(iterator, 2)

    fresh = iter(_train(source))
    restored = manager.restore(2, args=ocp.args.Composite(
        data_iter=grain.checkpoint.CheckpointRestore(fresh)))["data_iter"]
    _assert_same(expected, _take(restored, 2))
    manager.close()


def test_two_processes_split_each_global_batch(source):
    single = _take(iter(_train(source, global_batch_size=4)), 3)
    halves = [_take(iter(_train(source, global_batch_size=4, process_index=p, process_count=2)), 3)
              for p in range(2)]
    for step in range(3):
        for key in ("image", "label"):
            joined = np.concatenate([halves[0][step][key], halves[1][step][key]])
            np.testing.assert_array_equal(joined, single[step][key])
    with pytest.raises(DataError, match="multiple of the process count"):
        _train(source, global_batch_size=3, process_index=0, process_count=2)


def test_sample_indices_cover_each_sample_once_across_processes():
    seen = []
    for process in range(2):
        to_global = pipeline._GlobalIndex(global_batch=6, local_batch=3, process_index=process)
        seen += [to_global(k) for k in range(12)]
    assert sorted(seen) == list(range(24))


@pytest.mark.parametrize("num_records,global_batch,processes", [(7, 4, 2), (5, 6, 3), (8, 4, 1)])
def test_eval_scores_every_record_exactly_once(num_records, global_batch, processes):
    source = SyntheticScenes(num_records, 32, 64, split="val")
    valid_indices, batch_counts = [], []
    for process in range(processes):
        dataset, num_batches = pipeline.eval_dataset(source, global_batch_size=global_batch,
                                                     process_index=process, process_count=processes)
        batches = list(dataset)
        batch_counts.append(len(batches))
        assert len(batches) == num_batches == -(-num_records // global_batch)
        for batch in batches:
            assert batch["image"].shape == (global_batch // processes, 32, 64, 3)
            assert batch["valid"].dtype == np.bool_
            valid_indices += batch["index"][batch["valid"]].tolist()
            assert (batch["label"][~batch["valid"]] == 255).all()
    assert len(set(batch_counts)) == 1  # every process runs the same number of steps
    assert sorted(valid_indices) == list(range(num_records))
    # Full resolution, unaugmented: the label is the record's own.
    dataset, _ = pipeline.eval_dataset(source, global_batch_size=global_batch, process_index=0,
                                       process_count=processes)
    first = next(iter(dataset))
    np.testing.assert_array_equal(first["label"][0], source.load(int(first["index"][0]))["label"])


def test_eval_pads_unequal_sizes_or_names_the_problem(tmp_path):
    from hmsa_jax.data.fake_layouts import write_fake_mapillary
    from hmsa_jax.data.sources import mapillary_source

    write_fake_mapillary(str(tmp_path), {"validation": 2}, height=40, width=60)
    portrait = sorted((tmp_path / "validation" / "images").glob("*.jpg"))[1]
    label = tmp_path / "validation" / "labels" / (portrait.stem + ".png")
    Image.fromarray(np.asarray(Image.open(portrait)).transpose(1, 0, 2).copy()).save(portrait)
    rotated = Image.open(label)
    rotated.transpose(Image.Transpose.TRANSPOSE).save(label)
    source = mapillary_source(str(tmp_path), "val", long_edge=None)
    dataset, _ = pipeline.eval_dataset(source, global_batch_size=2, process_index=0, process_count=1)
    with pytest.raises(DataError, match="mixes image sizes.*pad_to"):
        next(iter(dataset))
    dataset, _ = pipeline.eval_dataset(source, global_batch_size=2, process_index=0,
                                       process_count=1, pad_to=(60, 60))
    batch = next(iter(dataset))
    assert batch["image"].shape == (2, 60, 60, 3)
    assert (batch["label"][0, 40:] == 255).all() and (batch["label"][1, :, 40:] == 255).all()


def test_training_refuses_bad_labels_naming_the_file(tmp_path):
    write_fake_cityscapes(str(tmp_path), {"train": 2}, height=32, width=64)
    bad = sorted((tmp_path / "gtFine" / "train").rglob("*_labelIds.png"))[0]
    Image.fromarray(np.full((32, 64), 40, np.uint8)).save(bad)
    data = default_data_config()
    data.dataset, data.root = "cityscapes", str(tmp_path)
    data.augment.crop_size = (32, 64)
    data.class_uniform.fraction = 0.0
    data.loader.batch_size = 2
    dataset, info = build.make_train_dataset(data, process_index=0, process_count=1)
    assert info.classes.num_classes == 19 and info.steps_per_epoch == 1
    with pytest.raises(DataError, match=re.escape(f"{bad.name}: label values {{40}}")):
        next(iter(dataset))


def test_config_builds_synthetic_train_and_eval_with_class_uniform():
    data = default_data_config()
    data.synthetic.update(num_train=16, num_eval=3, height=48, width=96)
    data.augment.crop_size = (48, 96)
    data.class_uniform.update(tile_size=24, cache_dir="")
    data.loader.batch_size = 4
    data.eval.batch_size = 2
    dataset, info = build.make_train_dataset(data, process_index=0, process_count=1)
    assert info.steps_per_epoch == 4 and info.num_centroids > 16 and info.classes.num_classes == 8
    batch = next(iter(dataset))
    assert batch["image"].shape == (4, 48, 96, 3)
    eval_ds, num_batches, eval_source = build.make_eval_dataset(data, process_index=0, process_count=1)
    assert num_batches == 2 and len(eval_source) == 3
    assert sum(int(b["valid"].sum()) for b in eval_ds) == 3


def test_autolabel_mix_draws_extras_at_the_configured_rate(tmp_path):
    write_fake_cityscapes(str(tmp_path), {"train": 4, "train_extra": 4}, height=32, width=64)
    images_root = tmp_path / "leftImg8bit" / "train_extra"
    for image in images_root.rglob("*.png"):
        out = tmp_path / "auto" / image.relative_to(images_root)
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((32, 64), 255, np.uint8)).save(out)
    data = default_data_config()
    data.dataset, data.root = "cityscapes", str(tmp_path)
    data.autolabel.update(images_root=str(images_root), labels_dir=str(tmp_path / "auto"), probability=0.5)
    data.augment.crop_size = (32, 64)
    data.class_uniform.fraction = 0.0
    data.loader.update(batch_size=4, epoch_size=400)
    dataset, info = build.make_train_dataset(data, process_index=0, process_count=1)
    assert info.num_records == 4 and info.num_extra == 4
    batches = _take(iter(dataset), 25)  # all-ignore auto-labels mark the extra samples
    share = np.mean([(b["label"][k] == 255).all() for b in batches for k in range(4)])
    assert 0.3 < share < 0.7
