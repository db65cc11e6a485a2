"""Datasets: HC18, FUSeg, ACDC, folder and NIfTI loading, splits, caching and bad input."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from PIL import Image

from seglosses.lab import data as data_module
from seglosses.lab.data import DataConfig, build_splits, split_cases
from seglosses.lab.noise import NoiseConfig, dice_agreement


def _read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_hc18_splits_by_subject_and_serves_the_contract(data_dir, tmp_path):
    config = DataConfig("hc18", root=str(data_dir / "hc18"), image_size=(48, 64), max_train=6, max_val=2, max_test=2)
    splits = build_splits(config, out_dir=tmp_path)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (6, 2, 2)
    assert (splits.num_classes, splits.in_channels, splits.spatial_dims, splits.eval_unit) == (2, 1, 2, "image")
    assert splits.class_names == ["background", "head"]
    sample = splits.train[3]
    assert set(sample) == {"image", "mask", "clean_mask", "index", "case_id", "slice_index", "spacing"}
    assert sample["image"].dtype == torch.float32 and sample["image"].shape == (1, 48, 64)
    assert sample["mask"].dtype == torch.int64 and sample["mask"].shape == (48, 64)
    assert sample["index"] == 3 and sample["slice_index"] == -1
    assert set(sample["mask"].unique().tolist()) == {0, 1}
    assert 0.0 <= sample["image"].min() and sample["image"].max() <= 1.0
    assert torch.equal(sample["mask"], sample["clean_mask"])  # no noise
    batch = torch.utils.data.default_collate([splits.train[i] for i in range(4)])
    assert batch["image"].shape == (4, 1, 48, 64) and batch["spacing"].shape == (4, 2)
    # the pixel size of pixel_size_and_hc.csv, scaled by the resize on each axis
    ref = splits.train.refs[3]
    with open(data_dir / "hc18" / "pixel_size_and_hc.csv", newline="") as handle:
        pixel_mm = next(float(r["pixel_size_mm"]) for r in csv.DictReader(handle) if r["filename"] == ref.name + ".png")
    width, height = Image.open(ref.image_path).size
    assert sample["spacing"].tolist() == pytest.approx([pixel_mm * height / 48, pixel_mm * width / 64])

    rows = _read_csv(tmp_path / "splits.csv")
    assert [r["split"] for r in rows].count("train") == 6 and len(rows) == 10
    assert not (tmp_path / "noise.csv").exists()
    for split in (splits.train, splits.val, splits.test):
        for index, ref in enumerate(split.refs):
            assert {"case_id": ref.case_id, "name": ref.name, "index": str(index)}.items() <= next(
                r for r in rows if r["name"] == ref.name).items()


def test_hc18_frames_of_one_subject_share_a_split(data_dir):
    splits = build_splits(DataConfig("hc18", root=str(data_dir / "hc18")))
    subjects = [{ref.case_id for ref in split.refs} for split in (splits.train, splits.val, splits.test)]
    assert not (subjects[0] & subjects[1] or subjects[0] & subjects[2] or subjects[1] & subjects[2])
    assert sum(len(s.refs) for s in (splits.train, splits.val, splits.test)) == 999
    multi = [ref for ref in splits.train.refs if ref.name.endswith("_2HC")]
    assert multi and all(ref.case_id == ref.name.split("_")[0] for ref in multi)
    # same seed, same split; another seed, another split
    again = build_splits(DataConfig("hc18", root=str(data_dir / "hc18")))
    other = build_splits(DataConfig("hc18", root=str(data_dir / "hc18"), split_seed=1))
    assert [r.name for r in again.test.refs] == [r.name for r in splits.test.refs]
    assert [r.name for r in other.test.refs] != [r.name for r in splits.test.refs]


def test_packaged_hc18_demo_subset():
    splits = build_splits(DataConfig("hc18_demo", image_size=(32, 48), max_train=2, max_val=1, max_test=1))
    assert "demo_data" in splits.train.refs[0].image_path and splits.class_names == ["background", "head"]
    sample = splits.test[0]
    assert sample["image"].shape == (1, 32, 48) and sample["spacing"].shape == (2,)


def test_each_image_is_resized_on_its_own(data_dir):
    # 24 HC18 images have other native sizes than 400x270; after resizing all share image_size
    config = DataConfig("hc18", root=str(data_dir / "hc18"), image_size=(40, 60))
    splits = build_splits(config)
    odd = [i for i, ref in enumerate(splits.train.refs) if Image.open(ref.image_path).size != (400, 270)][:2]
    assert odd
    for index in odd:
        sample = splits.train[index]
        assert sample["image"].shape == (1, 40, 60) and sample["mask"].shape == (40, 60)


def test_split_cases_fractions_and_determinism():
    cases = [f"c{i}" for i in range(20)]
    first = split_cases(cases, 0.1, 0.25, seed=3)
    assert list(first.values()).count("val") == 2 and list(first.values()).count("test") == 5
    assert first == split_cases(list(reversed(cases)), 0.1, 0.25, seed=3)


def test_unknown_dataset_name_suggests_the_closest():
    with pytest.raises(ValueError, match=r"`name`.*'hc18'.*did you mean 'hc18'"):
        DataConfig("hc81")


def test_fuseg_uses_its_validation_folder_as_test(data_dir):
    config = DataConfig("fuseg", root=str(data_dir / "fuseg"), image_size=(32, 32), max_train=3, max_val=2,
                        max_test=2)
    splits = build_splits(config)
    assert (splits.in_channels, splits.num_classes, splits.class_names) == (3, 2, ["background", "wound"])
    assert all("/validation/" in ref.image_path for ref in splits.test.refs)
    assert all("/train/" in ref.image_path for ref in splits.train.refs + splits.val.refs)
    sample = splits.train[0]
    assert sample["image"].shape == (3, 32, 32) and set(sample["mask"].unique().tolist()) <= {0, 1}
    full = build_splits(DataConfig("fuseg", root=str(data_dir / "fuseg")))
    assert (len(full.train) + len(full.val), len(full.test), len(full.val)) == (810, 200, 81)
    assert not {r.name for r in full.train.refs} & {r.name for r in full.val.refs}


def test_acdc_serves_validation_volumes_as_ordered_slices(data_dir):
    import h5py

    root = data_dir / "acdc"
    splits = build_splits(DataConfig("acdc", root=str(root), max_train=3, max_val=1, max_test=1))
    assert (splits.num_classes, splits.eval_unit, splits.spatial_dims) == (4, "volume", 2)
    train = splits.train[0]
    with h5py.File(splits.train.refs[0].image_path) as handle:
        assert np.array_equal(train["clean_mask"].numpy(), handle["label"][()])
        assert np.allclose(train["image"][0].numpy(), handle["image"][()])
    assert train["slice_index"] == -1 and splits.train.refs[0].name.startswith(train["case_id"] + "_slice_")
    (volume,) = {ref.case_id for ref in splits.val.refs}
    samples = [splits.val[i] for i in range(len(splits.val))]
    assert [s["slice_index"] for s in samples] == list(range(len(samples)))
    with h5py.File(root / "data" / f"{volume}.h5") as handle:
        stacked = np.stack([s["clean_mask"].numpy() for s in samples])
        assert np.array_equal(stacked, handle["label"][()])
    resized = build_splits(DataConfig("acdc", root=str(root), image_size=(64, 48), max_train=2, max_val=1, max_test=1))
    assert resized.test[0]["image"].shape == (1, 64, 48) and resized.test[0]["mask"].shape == (64, 48)


def _write_png(path, array):
    Image.fromarray(array).save(path)


def _folder_dataset(root, subjects=4, frames=2, num_classes=3, size=(20, 24)):
    """Subjects s0..s3 with two frames each; RGB PNG images, masks with values 0..num_classes-1."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    masks = {}
    for subject in range(subjects):
        for frame in range(frames):
            name = f"s{subject}_f{frame}"
            _write_png(root / "images" / f"{name}.png", rng.integers(0, 255, (*size, 3), dtype=np.uint8))
            mask = rng.integers(0, num_classes, size, dtype=np.uint8)
            _write_png(root / "masks" / f"{name}.png", mask)
            masks[name] = mask
    return masks


def test_folder_dataset_matches_by_stem_and_splits_by_subject(tmp_path):
    masks = _folder_dataset(tmp_path / "data")
    palette = Image.fromarray(masks["s1_f1"]).convert("P")  # a label PNG with a palette: indices are the labels
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
    palette.save(tmp_path / "data" / "masks" / "s1_f1.png")
    assert Image.open(tmp_path / "data" / "masks" / "s1_f1.png").mode == "P"
    config = DataConfig("folder", root=tmp_path / "data", num_classes=3, subject_regex=r"^(s\d+)_",
                        val_fraction=0.25, test_fraction=0.25)
    splits = build_splits(config, out_dir=tmp_path / "run")
    assert (splits.in_channels, splits.num_classes) == (3, 3)
    subjects = [{ref.case_id for ref in split.refs} for split in (splits.train, splits.val, splits.test)]
    assert [len(s) for s in subjects] == [2, 1, 1] and set().union(*subjects) == {"s0", "s1", "s2", "s3"}
    for index, ref in enumerate(splits.train.refs):
        assert np.array_equal(splits.train[index]["mask"].numpy(), masks[ref.name])
    assert len(_read_csv(tmp_path / "run" / "splits.csv")) == 8


def test_folder_dataset_reads_jpeg_tiff_grey_and_a_split_csv(tmp_path):
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    grey = np.arange(12 * 16, dtype=np.uint8).reshape(12, 16)
    mask = (grey > 100).astype(np.uint8) * 255
    for name, suffix in (("a", ".jpg"), ("b", ".tif"), ("c", ".png")):
        Image.fromarray(grey).save(root / "images" / f"{name}{suffix}")
        Image.fromarray(mask).save(root / "masks" / f"{name}.png")
    (root / "splits.csv").write_text("name,split\na.jpg,train\nb,val\nc,test\n")
    splits = build_splits(DataConfig("folder", root=str(root), split_csv="splits.csv"))
    assert [r.name for r in splits.train.refs] == ["a"] and [r.name for r in splits.test.refs] == ["c"]
    assert splits.in_channels == 1
    assert np.array_equal(splits.val[0]["mask"].numpy(), grey > 100)
    assert np.allclose(splits.val[0]["image"][0].numpy(), grey / 255.0)  # TIFF is lossless


def _nifti_dataset(root, volumes=3, shape=(12, 10, 5)):
    import nibabel

    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(1)
    data = {}
    for number in range(volumes):
        image = rng.normal(100.0, 20.0, shape).astype(np.float32)
        labels = rng.integers(0, 3, shape).astype(np.uint8)
        affine = np.diag([1.5, 2.0, 3.0, 1.0])
        nibabel.save(nibabel.Nifti1Image(image, affine), root / "images" / f"case{number}.nii.gz")
        nibabel.save(nibabel.Nifti1Image(labels, np.eye(4)), root / "masks" / f"case{number}.nii.gz")
        data[f"case{number}"] = (image, labels)
    return data


def test_nifti_volumes_as_2d_slices(tmp_path):
    volumes = _nifti_dataset(tmp_path / "data")
    config = DataConfig("nifti", root=str(tmp_path / "data"), num_classes=3, val_fraction=0.34, test_fraction=0.33)
    splits = build_splits(config)
    assert (splits.spatial_dims, splits.eval_unit, splits.in_channels) == (2, "volume", 1)
    assert [len(s) for s in (splits.train, splits.val, splits.test)] == [5, 5, 5]
    samples = [splits.val[i] for i in range(5)]
    case = samples[0]["case_id"]
    assert [s["slice_index"] for s in samples] == list(range(5)) and {s["case_id"] for s in samples} == {case}
    stacked = np.stack([s["clean_mask"].numpy() for s in samples], axis=-1)
    assert np.array_equal(stacked, volumes[case][1])
    images = np.stack([s["image"][0].numpy() for s in samples], axis=-1)
    assert images.min() == 0.0 and images.max() == 1.0  # percentile-clipped, scaled per volume
    assert samples[0]["spacing"].tolist() == [1.5, 2.0]  # in-plane voxel size from the header
    assert np.corrcoef(images.ravel(), volumes[case][0].ravel())[0, 1] > 0.95


def test_nifti_volumes_as_3d_patches(tmp_path):
    volumes = _nifti_dataset(tmp_path / "data")
    split_csv = tmp_path / "data" / "split.csv"
    config = DataConfig("nifti", root=str(tmp_path / "data"), num_classes=3, split_csv="split.csv",
                        patch_size=(8, 8, 4))
    split_csv.write_text("name,split\ncase0,train\ncase1,train\ncase2,test\n")
    with pytest.raises(ValueError, match="`val split`.*empty split"):
        build_splits(config)
    split_csv.write_text("name,split\ncase0,train\ncase1,val\ncase2,test\ncase0x,test\n")
    with pytest.raises(ValueError, match="rows without a file: \\['case0x'\\]"):
        build_splits(config)
    split_csv.write_text("name,split\ncase0,train\ncase1,val\ncase2,test\ncase1,test\n")
    with pytest.raises(ValueError, match="`split_csv`.*'case1'.*twice"):
        build_splits(config)
    split_csv.write_text("name,split\ncase0,train\ncase1,val\ncase2,tset\n")
    with pytest.raises(ValueError, match="`split_csv split`.*'tset'"):
        build_splits(config)
    split_csv.write_text("name,split\ncase0.nii.gz,train\ncase1,val\ncase2,test\n")
    splits = build_splits(config)
    assert (splits.spatial_dims, splits.eval_unit) == (3, "image")
    assert len(splits.train) == 2 * 2 * 2  # ceil(12/8) * ceil(10/8) * ceil(5/4)
    last = splits.train[len(splits.train) - 1]
    assert last["image"].shape == (1, 8, 8, 4) and last["mask"].shape == (8, 8, 4)
    labels = volumes["case0"][1]
    assert np.array_equal(last["clean_mask"][:4, :2, :1].numpy(), labels[8:, 8:, 4:])
    assert (last["clean_mask"][4:] == 0).all() and (last["image"][:, 4:] == 0).all()  # zero padding
    assert last["spacing"].tolist() == [1.5, 2.0, 3.0]
    with pytest.raises(ValueError, match="`image_size`.*patch_size"):
        build_splits(DataConfig("nifti", root=str(tmp_path / "data"), num_classes=3, split_csv="split.csv",
                                patch_size=(8, 8, 4), image_size=(8, 8)))


def test_decoded_arrays_are_cached_in_memory_and_on_disk(tmp_path, monkeypatch):
    _folder_dataset(tmp_path / "data", num_classes=2)
    calls = []
    original = data_module.read_image_file

    def counting(path, labels=False):
        calls.append(path)
        return original(path, labels)

    monkeypatch.setattr(data_module, "read_image_file", counting)
    config = DataConfig("folder", root=str(tmp_path / "data"), image_size=(16, 16), cache_dir=str(tmp_path / "cache"),
                        noise=NoiseConfig("moderate"))
    splits = build_splits(config, out_dir=tmp_path / "run")  # noise.csv decodes the training split once
    total = sum(len(s) for s in (splits.train, splits.val, splits.test))
    for _epoch in range(3):
        for split in (splits.train, splits.val, splits.test):
            for index in range(len(split)):
                split[index]
    assert len(calls) == 2 * total  # one image and one mask per sample, whatever the number of epochs
    again = build_splits(config)
    for split in (again.train, again.val, again.test):
        first = split[0]
        assert first["image"].shape == (3, 16, 16)
    assert len(calls) == 2 * total  # a new process (here: a new dataset) reads the .npy cache instead
    assert torch.equal(again.train[1]["mask"], splits.train[1]["mask"])


def test_noise_only_on_the_training_split_and_recorded(data_dir, tmp_path):
    config = DataConfig("hc18", root=str(data_dir / "hc18"), image_size=(64, 64), max_train=6, max_val=2, max_test=2,
                        noise=NoiseConfig("severe", seed=4))
    splits = build_splits(config, out_dir=tmp_path)
    rows = _read_csv(tmp_path / "noise.csv")
    assert [int(r["index"]) for r in rows] == list(range(6))
    assert list(rows[0]) == ["index", "case_id", "name", "operations", "dice_noisy_clean"]
    changed = 0
    for row in rows:
        sample = splits.train[int(row["index"])]
        assert row["case_id"] == sample["case_id"]
        dice = dice_agreement(sample["mask"].numpy(), sample["clean_mask"].numpy(), 2)
        assert float(row["dice_noisy_clean"]) == pytest.approx(dice, abs=1e-6)
        changed += not torch.equal(sample["mask"], sample["clean_mask"])
        assert row["operations"] != "none" or dice == 1.0
    assert changed >= 5
    for split in (splits.val, splits.test):
        assert all(torch.equal(split[i]["mask"], split[i]["clean_mask"]) for i in range(len(split)))
    again = build_splits(config)
    assert torch.equal(again.train[2]["mask"], splits.train[2]["mask"])


def test_multiclass_noise_on_acdc_training_slices(data_dir, tmp_path):
    config = DataConfig("acdc", root=str(data_dir / "acdc"), image_size=(64, 64), max_train=8, max_val=1, max_test=1,
                        noise=NoiseConfig("severe", swap_probability=0.5, seed=2))
    splits = build_splits(config, out_dir=tmp_path)
    rows = _read_csv(tmp_path / "noise.csv")
    assert len(rows) == 8 and any("swap(" in row["operations"] for row in rows)
    for row in rows:
        sample = splits.train[int(row["index"])]
        assert sample["mask"].dtype == torch.int64 and int(sample["mask"].max()) <= 3
        assert float(row["dice_noisy_clean"]) == pytest.approx(
            dice_agreement(sample["mask"].numpy(), sample["clean_mask"].numpy(), 4), abs=1e-6)
    assert all(torch.equal(splits.val[i]["mask"], splits.val[i]["clean_mask"]) for i in range(len(splits.val)))


def test_homogenisation_alters_images_of_every_split(data_dir):
    base = dict(root=str(data_dir / "hc18"), image_size=(48, 48), max_train=2, max_val=1, max_test=1)
    plain = build_splits(DataConfig("hc18", **base))
    smooth = build_splits(DataConfig("hc18", **base, noise=NoiseConfig(homogenise_sigma=0.5)))
    for split in ("train", "val", "test"):
        before, after = getattr(plain, split)[0], getattr(smooth, split)[0]
        inside = before["clean_mask"].bool()
        assert torch.equal(before["image"][:, ~inside], after["image"][:, ~inside])
        assert after["image"][:, inside].std() < before["image"][:, inside].std()
        assert torch.equal(after["mask"], after["clean_mask"])


# ------------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------------


def test_missing_mask_names_the_image(tmp_path):
    _folder_dataset(tmp_path / "data", num_classes=2)
    (tmp_path / "data" / "masks" / "s1_f0.png").unlink()
    with pytest.raises(ValueError, match=r"`mask file`.*'s1_f0'.*s1_f0\.png"):
        build_splits(DataConfig("folder", root=str(tmp_path / "data")))


def test_missing_image_file_names_it(data_dir, tmp_path):
    splits = build_splits(DataConfig("hc18", root=str(data_dir / "hc18"), max_train=1, max_val=1, max_test=1))
    ref = splits.train.refs[0]
    splits.train.refs[0] = type(ref)(ref.name, ref.case_id, str(tmp_path / "gone.png"), ref.mask_path)
    with pytest.raises(ValueError, match=r"`image file`.*gone\.png.*not found"):
        splits.train[0]


def test_corrupt_image_names_the_file(tmp_path):
    _folder_dataset(tmp_path / "data", num_classes=2)
    (tmp_path / "data" / "images" / "s2_f1.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    splits = build_splits(DataConfig("folder", root=str(tmp_path / "data"), val_fraction=0.25, test_fraction=0.25))
    split = next(s for s in (splits.train, splits.val, splits.test) if any(r.name == "s2_f1" for r in s.refs))
    index = next(i for i, r in enumerate(split.refs) if r.name == "s2_f1")
    with pytest.raises(ValueError, match=r"`image file`.*readable.*s2_f1\.png"):
        split[index]


def test_corrupt_hdf5_and_nifti_name_the_file(tmp_path):
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"`HDF5 file`.*bad\.h5"):
        data_module.read_hdf5(bad)
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"`NIfTI file`.*bad\.nii\.gz"):
        data_module.read_nifti(bad)


def test_mask_values_outside_the_label_set_name_file_and_values(tmp_path):
    _folder_dataset(tmp_path / "data", num_classes=2)
    _write_png(tmp_path / "data" / "masks" / "s0_f0.png", np.array([[0, 7], [128, 255]], np.uint8).repeat(10, 0)
               .repeat(12, 1))
    splits = build_splits(DataConfig("folder", root=str(tmp_path / "data"), test_fraction=0.25, val_fraction=0.25))
    split = next(s for s in (splits.train, splits.val, splits.test) if any(r.name == "s0_f0" for r in s.refs))
    index = next(i for i, r in enumerate(split.refs) if r.name == "s0_f0")
    with pytest.raises(ValueError, match=r"`mask values`.*\[0, 1, 255\].*\[7, 128\].*s0_f0\.png"):
        split[index]


def test_image_and_mask_sizes_must_match(tmp_path):
    _folder_dataset(tmp_path / "data", num_classes=2, subjects=1, frames=1)
    _write_png(tmp_path / "data" / "masks" / "s0_f0.png", np.zeros((5, 6), np.uint8))
    dataset = data_module.SegmentationDataset(
        [data_module.SampleRef("s0_f0", "s0", str(tmp_path / "data/images/s0_f0.png"),
                               str(tmp_path / "data/masks/s0_f0.png"))],
        data_module.PairedFileReader(2, 3), 2)
    with pytest.raises(ValueError, match=r"`image and mask sizes`.*\(20, 24\).*\(5, 6\)"):
        dataset[0]


def test_empty_dataset_and_empty_split(tmp_path):
    (tmp_path / "data" / "images").mkdir(parents=True)
    (tmp_path / "data" / "masks").mkdir()
    with pytest.raises(ValueError, match=r"`dataset`.*none \(empty dataset\)"):
        build_splits(DataConfig("folder", root=str(tmp_path / "data")))
    _folder_dataset(tmp_path / "other", num_classes=2, subjects=2, frames=1)
    with pytest.raises(ValueError, match=r"`test split`.*empty split"):
        build_splits(DataConfig("folder", root=str(tmp_path / "other"), test_fraction=0.0, val_fraction=0.5))
    with pytest.raises(ValueError, match="`root`"):
        build_splits(DataConfig("folder", root=str(tmp_path / "nowhere")))
    with pytest.raises(ValueError, match="`max_train`"):
        DataConfig(max_train=0)
