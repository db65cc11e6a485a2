"""Datasets: HC18, FUSeg, ACDC, folder and NIfTI loading, splits, caching and bad input."""

from __future__ import annotations

import csv

import pytest
import torch
from PIL import Image

from seglosses.lab.data import DataConfig, build_splits, split_cases


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
    assert set(sample) == {"image", "mask", "clean_mask", "index", "case_id", "slice_index"}
    assert sample["image"].dtype == torch.float32 and sample["image"].shape == (1, 48, 64)
    assert sample["mask"].dtype == torch.int64 and sample["mask"].shape == (48, 64)
    assert sample["index"] == 3 and sample["slice_index"] == -1
    assert set(sample["mask"].unique().tolist()) == {0, 1}
    assert 0.0 <= sample["image"].min() and sample["image"].max() <= 1.0
    assert torch.equal(sample["mask"], sample["clean_mask"])  # no noise
    batch = torch.utils.data.default_collate([splits.train[i] for i in range(4)])
    assert batch["image"].shape == (4, 1, 48, 64)

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
