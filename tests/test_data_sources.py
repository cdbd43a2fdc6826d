"""Sources in their published layouts: discovery, label mapping, strictness, synthetic scenes."""
import os
import pickle

import numpy as np
import pytest
from PIL import Image

from hmsa_jax.data import labels as L
from hmsa_jax.data.errors import DataError
from hmsa_jax.data.fake_layouts import (write_fake_cityscapes, write_fake_folder,
                                        write_fake_mapillary)
from hmsa_jax.data.sources import (ConcatSource, SyntheticScenes, autolabel_source,
                                   cityscapes_source, folder_source, mapillary_source)
from hmsa_jax.data.sources import synthetic as syn

# Written out by hand from the Cityscapes label definition (not derived from the package).
SYNTHETIC_TO_CITYSCAPES_TRAIN_ID = {syn.ROAD: 0, syn.SIDEWALK: 1, syn.BUILDING: 2, syn.SKY: 10,
                                    syn.VEGETATION: 8, syn.POLE: 5, syn.SIGN: 7, syn.LANE: 0,
                                    syn.TERRAIN: 9, syn.CAR: 13}


@pytest.fixture(scope="module")
def cityscapes_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("cityscapes"))
    write_fake_cityscapes(root, {"train": 4, "val": 2, "test": 1, "train_extra": 2},
                          height=48, width=96, write_train_ids=True)
    return root


def test_cityscapes_tables_match_the_benchmark_definition():
    classes = L.cityscapes_classes()
    assert classes.num_classes == 19
    assert classes.names[0] == "road" and classes.names[10] == "sky" and classes.names[18] == "bicycle"
    lut = L.cityscapes_label_id_lut()
    assert [lut[i] for i in (0, 1, 6, 7, 8, 11, 17, 20, 23, 26, 33)] == [255, 255, 255, 0, 1, 2, 5, 7, 10, 13, 18]
    assert lut[34] == L.INVALID_RAW and lut[255] == L.INVALID_RAW
    back = L.cityscapes_train_ids_to_label_ids(np.array([[0, 1, 18, 255]]))
    assert back.tolist() == [[7, 8, 33, 0]]
    assert (L.cityscapes_train_ids_to_label_ids(np.arange(19)) == np.array(
        [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33])).all()


def test_cityscapes_label_ids_become_train_ids(cityscapes_root):
    source = cityscapes_source(cityscapes_root, "train")
    assert len(source) == 4
    synthetic = SyntheticScenes(4, 48, 96, len(syn.ALL_CLASSES), 0, "train")
    for i in range(len(source)):
        stem = os.path.basename(source.name(i))
        index = int(stem.split("_")[1])  # fake files are numbered by synthetic index
        expected = np.vectorize(SYNTHETIC_TO_CITYSCAPES_TRAIN_ID.get)(synthetic.load(index)["label"])
        expected[-3:] = 255  # 'ego vehicle' rows
        record = source.load(i)
        assert record["image"].shape == (48, 96, 3) and record["image"].dtype == np.uint8
        np.testing.assert_array_equal(record["label"], expected)
        np.testing.assert_array_equal(record["image"], synthetic.load(index)["image"])


def test_cityscapes_train_id_files_read_the_same(cityscapes_root):
    by_ids = cityscapes_source(cityscapes_root, "train")
    by_train_ids = cityscapes_source(cityscapes_root, "train", label_format="trainIds")
    for i in range(len(by_ids)):
        np.testing.assert_array_equal(by_ids.load_label(i), by_train_ids.load_label(i))


def test_cityscapes_splits(cityscapes_root):
    assert len(cityscapes_source(cityscapes_root, "train+val")) == 6
    extra = cityscapes_source(cityscapes_root, "train_extra")
    assert all("gtCoarse" in label for _, label in extra.pairs)
    test = cityscapes_source(cityscapes_root, "test")
    assert (test.load(0)["label"] == 255).all()
    with pytest.raises(DataError, match="split 'bogus'"):
        cityscapes_source(cityscapes_root, "bogus")


def test_cityscapes_missing_label_names_the_file(tmp_path):
    write_fake_cityscapes(str(tmp_path), {"val": 2}, height=32, width=64)
    victim = sorted((tmp_path / "gtFine" / "val").rglob("*_labelIds.png"))[0]
    victim.unlink()
    with pytest.raises(DataError, match=f"{victim.name}: missing label"):
        cityscapes_source(str(tmp_path), "val")


def test_label_ids_given_as_train_ids_are_refused(tmp_path):
    write_fake_cityscapes(str(tmp_path), {"val": 1}, height=32, width=64, write_train_ids=True)
    ids = next((tmp_path / "gtFine").rglob("*_labelIds.png"))
    train_ids = next((tmp_path / "gtFine").rglob("*_labelTrainIds.png"))
    os.replace(train_ids, ids)  # the classic mistake: trainIds where labelIds are expected
    source = cityscapes_source(str(tmp_path), "val")
    with pytest.raises(DataError, match=r"labelIds.png: label values \{.*255\}.*labelTrainIds"):
        source.load(0)


def test_mapillary_layout_classes_and_long_edge(tmp_path):
    write_fake_mapillary(str(tmp_path), {"training": 3, "validation": 1, "testing": 1}, height=60, width=90)
    source = mapillary_source(str(tmp_path), "train", long_edge=135)
    assert source.classes.num_classes == 65 and source.classes.names[13] == "Road"
    raw = np.asarray(Image.open(source.label_path(0)))
    record = source.load(0)
    assert record["image"].shape == (90, 135, 3) and record["label"].shape == (90, 135)
    # Nearest-neighbour resize only repeats stored values; Unlabeled (65) becomes ignore.
    expected_values = set(np.unique(raw)) - {65} | {255}
    assert set(np.unique(record["label"])) <= expected_values
    assert (record["label"][:, :3] == 255).all()  # the unlabeled border columns
    native = mapillary_source(str(tmp_path), "val", long_edge=None).load(0)
    assert native["image"].shape == (60, 90, 3)
    assert (mapillary_source(str(tmp_path), "test").load(0)["label"] == 255).all()


def test_folder_source_with_class_list(tmp_path):
    write_fake_folder(str(tmp_path), {"train": 3}, height=32, width=64, num_classes=6)
    source = folder_source(str(tmp_path / "images" / "train"), str(tmp_path / "masks" / "train"),
                           str(tmp_path / "classes.txt"))
    assert source.classes.names == syn.synthetic_classes(6).names
    assert source.classes.colors[0] == (128, 64, 128)
    assert len(source) == 3
    assert [source.name(i) for i in range(3)] == [os.path.join("group0", "img0000"),
                                                  os.path.join("group0", "img0002"),
                                                  os.path.join("group1", "img0001")]
    label = source.load(1)["label"]
    assert (label[:2] == 255).all() and label[2:].max() < 6


def test_folder_source_rejects_values_outside_the_class_list(tmp_path):
    write_fake_folder(str(tmp_path), {"train": 1}, height=32, width=64, num_classes=8)
    (tmp_path / "classes.txt").write_text("road\nsidewalk\nbuilding\n")  # 3 classes, no colours
    source = folder_source(str(tmp_path / "images" / "train"), str(tmp_path / "masks" / "train"),
                           str(tmp_path / "classes.txt"))
    assert len(set(source.classes.colors)) == 3
    with pytest.raises(DataError, match=r"img0000.png: label values .* not in the class list"):
        source.load(0)


def test_rgb_label_image_is_refused(tmp_path):
    write_fake_folder(str(tmp_path), {"train": 1}, height=32, width=64)
    mask = next((tmp_path / "masks").rglob("*.png"))
    Image.fromarray(np.zeros((32, 64, 3), np.uint8)).save(mask)
    source = folder_source(str(tmp_path / "images" / "train"), str(tmp_path / "masks" / "train"),
                           str(tmp_path / "classes.txt"))
    with pytest.raises(DataError, match="mode 'RGB'.*single-channel"):
        source.load(0)


def test_autolabel_source_pairs_labels_with_images_and_concatenates(cityscapes_root, tmp_path):
    images_root = os.path.join(cityscapes_root, "leftImg8bit", "train_extra")
    labels_dir = tmp_path / "auto"
    for image in sorted(os.listdir(os.path.join(images_root, "aachen"))):
        out = labels_dir / "aachen" / image
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((48, 96), 3, np.uint8)).save(out)
    fine = cityscapes_source(cityscapes_root, "train")
    auto = autolabel_source(images_root, str(labels_dir), fine.classes)
    assert len(auto) == 1 and (auto.load(0)["label"] == 3).all()
    both = ConcatSource([fine, auto])
    assert len(both) == 5 and both.load(4)["index"] == 4 and (both.load_label(4) == 3).all()
    assert both.name(4) == auto.name(0)


def test_synthetic_is_deterministic_and_picklable():
    a, b = SyntheticScenes(8, seed=3), SyntheticScenes(8, seed=3)
    for i in (0, 5):
        np.testing.assert_array_equal(a.load(i)["image"], b.load(i)["image"])
        np.testing.assert_array_equal(a.load(i)["label"], b.load(i)["label"])
        np.testing.assert_array_equal(a.load_label(i), a.load(i)["label"])
    assert not np.array_equal(a.load(0)["image"], a.load(1)["image"])
    assert not np.array_equal(a.load(0)["label"], SyntheticScenes(8, seed=4).load(0)["label"])
    assert not np.array_equal(a.load(0)["label"], SyntheticScenes(8, seed=3, split="val").load(0)["label"])
    c = pickle.loads(pickle.dumps(a))
    np.testing.assert_array_equal(c.load(2)["image"], a.load(2)["image"])
    record = a.load(0)
    assert record["image"].shape == (128, 256, 3) and record["label"].shape == (128, 256)
    assert record["label"].max() < 8
    assert SyntheticScenes(2, 64, 96, num_classes=5).load(1)["label"].max() < 5
    with pytest.raises(DataError):
        SyntheticScenes(2, num_classes=11)


def _statistics(images, labels, cls):
    pixels = np.concatenate([im[lb == cls] for im, lb in zip(images, labels)]).astype(np.float64)
    return pixels.mean(0), pixels.std(0)


def _longest_horizontal_run(mask):
    longest = 0
    for row in mask.astype(np.int8):
        edges = np.diff(np.concatenate([[0], row, [0]]))
        starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
        if len(starts):
            longest = max(longest, int((ends - starts).max()))
    return longest


def test_synthetic_scenes_make_scale_matter():
    source = SyntheticScenes(24, num_classes=10)
    records = [source.load(i) for i in range(len(source))]
    images, labels = [r["image"] for r in records], [r["label"] for r in records]
    # Every class occurs.
    assert set(np.unique(np.concatenate([l.ravel() for l in labels]))) == set(range(10))
    # Context-only pairs: same colour statistics, so texture alone cannot separate them.
    for first, second in ((syn.ROAD, syn.SIDEWALK), (syn.VEGETATION, syn.TERRAIN)):
        mean_a, std_a = _statistics(images, labels, first)
        mean_b, std_b = _statistics(images, labels, second)
        assert np.abs(mean_a - mean_b).max() < 0.25 * std_a.min(), (first, second, mean_a, mean_b)
    # Thin structures: poles and lane lines at most 2 px wide at 128x256, and they lose far more
    # than the 4x area factor when the label is halved (nearest), unlike large regions.
    for label in labels:
        for cls in (syn.POLE, syn.LANE):
            assert _longest_horizontal_run(label == cls) <= 2
    def pure_at_half_resolution(cls):
        """Share of the 2x2 blocks touching `cls` that are entirely `cls`: the pixels that stay
        unmixed with their surroundings when the image is halved."""
        touching = pure = 0
        for label in labels:
            blocks = (label == cls).reshape(label.shape[0] // 2, 2, label.shape[1] // 2, 2).sum((1, 3))
            touching += (blocks > 0).sum()
            pure += (blocks == 4).sum()
        return pure / touching
    for large in (syn.ROAD, syn.BUILDING, syn.SKY):
        assert pure_at_half_resolution(large) > 0.85
    for thin in (syn.POLE, syn.LANE, syn.SIGN):
        assert pure_at_half_resolution(thin) < 0.5, thin


def test_tfds_array_record_copy_reads_like_the_folders(cityscapes_root, tmp_path):
    from hmsa_jax.data.sources import TfdsSource
    from hmsa_jax.data.tfds_prepare import prepare_cityscapes_tfds

    name = prepare_cityscapes_tfds(cityscapes_root, str(tmp_path), splits=("val",))
    tfds_source = TfdsSource(name, "val", str(tmp_path))
    folders = cityscapes_source(cityscapes_root, "val")
    assert len(tfds_source) == len(folders) == 2
    by_name = {os.path.basename(folders.name(i)).replace("_leftImg8bit", ""): i for i in range(2)}
    for i in range(2):
        expected = folders.load(by_name[tfds_source.name(i)])
        record = pickle.loads(pickle.dumps(tfds_source)).load(i)  # as a Grain worker gets it
        np.testing.assert_array_equal(record["image"], expected["image"])
        np.testing.assert_array_equal(record["label"], expected["label"])
    with pytest.raises(DataError, match="cannot open"):
        TfdsSource("no_such_dataset", "val", str(tmp_path))
