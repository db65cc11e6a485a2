"""The stateful accumulator: same numbers as the functional API, slice stacking, distributed sync."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from seglosses.metrics import (
    ALL_METRICS,
    SegmentationMetrics,
    accuracy,
    assd,
    dice_score,
    hausdorff_distance,
    hd95,
    iou_score,
    precision,
    recall,
    surface_dice,
)

NSD_TOLERANCE = [0.0, 1.0, 2.0]


def functional(pred, target, name, average, **options):
    """The functional metric behind an accumulator key."""
    overlap = {"dice": dice_score, "iou": iou_score, "precision": precision, "recall": recall}
    accuracies = {
        "pixel_accuracy": "pixel",
        "foreground_accuracy": "foreground",
        "mean_class_accuracy": "mean_class",
    }
    spacing = options.pop("spacing", None)
    if name in overlap:
        return overlap[name](pred, target, 3, average=average, **options)
    if name in accuracies:
        return accuracy(pred, target, 3, kind=accuracies[name], average=average, **options)
    options.pop("zero_division", None)
    if name == "nsd":
        options.pop("empty_hd", None)
        return surface_dice(pred, target, 3, NSD_TOLERANCE, spacing=spacing, average=average, **options)
    surface = {"hd": hausdorff_distance, "hd95": hd95, "assd": assd}
    return surface[name](pred, target, 3, spacing=spacing, average=average, **options)


@pytest.mark.parametrize("shape", [(20, 22), (10, 12, 9)])
@pytest.mark.parametrize("empty", ["strict", "transunet_compat"])
def test_batches_give_the_functional_numbers(make_pair, shape, empty, device):
    pred, target = make_pair(shape, num_classes=3, batch=5, seed=61)
    pred[1][pred[1] == 2] = 0  # an image without class 2 in the prediction
    spacing = (1.5,) + (0.75,) * (len(shape) - 1)
    metrics = SegmentationMetrics(
        3, metrics=ALL_METRICS, nsd_tolerance=NSD_TOLERANCE, spacing=spacing, empty=empty
    )
    for start, stop in ((0, 2), (2, 3), (3, 5)):
        metrics.update(pred[start:stop].to(device), target[start:stop].to(device))
    result = metrics.compute()
    assert result["units"].item() == 5
    assert metrics.unit_ids == [0, 1, 2, 3, 4]
    options = {"empty": empty, "spacing": spacing}
    surface = {"hd", "hd95", "assd", "nsd"}
    for name in ALL_METRICS:
        per_unit = functional(pred, target, name, "none", **options)
        torch.testing.assert_close(result[f"{name}/unit"], per_unit, equal_nan=True)
        assert torch.equal(result[f"{name}/undefined"], per_unit.isnan().sum(dim=0))
        macro, per_class = functional(pred, target, name, "macro", **options), None
        if per_unit.ndim == 2:
            per_class = functional(pred, target, name, "class", **options)
        if name in surface:
            # The accumulator excludes undefined units and counts them (SPEC E); a function cannot return
            # the count, so its mean is NaN wherever a unit is undefined and equal elsewhere.
            missed = per_unit.isnan().any(dim=0)
            assert torch.equal(per_class.isnan(), missed) and bool(macro.isnan()) == bool(missed.any())
            torch.testing.assert_close(result[f"{name}/class"][~missed], per_class[~missed])
            torch.testing.assert_close(result[name], torch.nanmean(torch.nanmean(per_unit, 0)))
            continue
        torch.testing.assert_close(result[name], macro, equal_nan=True)
        if per_class is not None:
            torch.testing.assert_close(result[f"{name}/class"], per_class, equal_nan=True)
        if f"{name}/micro" in result:
            torch.testing.assert_close(
                result[f"{name}/micro"], functional(pred, target, name, "micro", **options)
            )


def test_undefined_values_are_counted_not_zeroed():
    pred = torch.zeros(3, 6, 6, dtype=torch.long)
    target = torch.zeros_like(pred)
    pred[0, 1:3, 1:3] = 1
    target[0, 1:4, 1:4] = 1
    target[1, 2:4, 2:4] = 1  # prediction empty: HD95 undefined
    metrics = SegmentationMetrics(2, metrics=("dice", "hd95", "precision"))
    metrics.update(pred, target)
    result = metrics.compute()
    assert result["hd95/undefined"].tolist() == [1]
    assert result["precision/undefined"].tolist() == [1]
    assert result["hd95"].item() == pytest.approx(result["hd95/unit"][[0, 2], 0].mean().item())
    diag = SegmentationMetrics(2, metrics=("hd95",), empty_hd="diag")
    diag.update(pred, target)
    assert diag.compute()["hd95/unit"][1, 0].item() == pytest.approx(math.hypot(6, 6))


def test_volume_mode_stacks_shuffled_slices(make_pair):
    """Slices of two cases of different sizes arrive shuffled over batches; scores are per volume."""
    first_pred, first_target = make_pair((6, 16, 14), num_classes=3, batch=1, seed=71)
    second_pred, second_target = make_pair((4, 12, 18), num_classes=3, batch=1, seed=72)
    spacings = {"p1": (10.0, 1.5, 1.5), "p2": (5.0, 0.8, 0.8)}
    slices = [("p1", z, first_pred[0, z], first_target[0, z]) for z in range(6)]
    slices += [("p2", z, second_pred[0, z], second_target[0, z]) for z in range(4)]
    order = torch.randperm(len(slices), generator=torch.Generator().manual_seed(0)).tolist()
    metrics = SegmentationMetrics(3, metrics=("dice", "hd95", "assd"), unit="volume")
    for item in order:  # batches of one: shapes differ between cases
        case, z, pred_slice, target_slice = slices[item]
        metrics.update(
            pred_slice[None], target_slice[None], case_ids=[case], slice_indices=[z], spacing=spacings[case]
        )
    result = metrics.compute()
    assert result["units"].item() == 2
    by_case = dict(zip(metrics.unit_ids, range(2), strict=True))
    for case, (pred, target) in {
        "p1": (first_pred, first_target),
        "p2": (second_pred, second_target),
    }.items():
        row = by_case[case]
        torch.testing.assert_close(result["dice/unit"][row], dice_score(pred, target, 3)[0])
        torch.testing.assert_close(
            result["hd95/unit"][row], hd95(pred, target, 3, spacing=spacings[case])[0], equal_nan=True
        )
        torch.testing.assert_close(
            result["assd/unit"][row], assd(pred, target, 3, spacing=spacings[case])[0], equal_nan=True
        )


def test_reset_and_incremental_compute(make_pair):
    pred, target = make_pair((12, 12), num_classes=3, batch=2, seed=81)
    metrics = SegmentationMetrics(3, metrics=("dice",))
    metrics.update(pred[:1], target[:1])
    assert metrics.compute()["units"].item() == 1
    metrics.update(pred[1:], target[1:])
    assert metrics.compute()["units"].item() == 2
    metrics.reset()
    with pytest.raises(RuntimeError, match="Expected `update` to be called before `compute`"):
        metrics.compute()


@pytest.mark.parametrize(
    "make, error, message",
    [
        (
            lambda: SegmentationMetrics(3, metrics=("dice", "f1")),
            ValueError,
            "Expected `metrics` to be one of",
        ),
        (
            lambda: SegmentationMetrics(3, metrics="dice"),
            TypeError,
            "Expected `metrics` to be a non-empty sequence",
        ),
        (
            lambda: SegmentationMetrics(3, metrics=("nsd",)),
            ValueError,
            "Expected `nsd_tolerance` to be given",
        ),
        (lambda: SegmentationMetrics(3, unit="patient"), ValueError, "Expected `unit` to be one of"),
        (lambda: SegmentationMetrics(3, hd95_mode="min"), ValueError, "Expected `hd95_mode` to be one of"),
        (lambda: SegmentationMetrics(3, empty="loose"), ValueError, "Expected `empty` to be one of"),
        (lambda: SegmentationMetrics(1), ValueError, "Expected `num_classes` to be an integer >= 2"),
    ],
)
def test_bad_configuration_names_the_argument(make, error, message):
    with pytest.raises(error, match=message):
        make()


def test_bad_updates_name_the_argument():
    labels = torch.zeros(2, 4, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="Expected `case_ids` to be given"):
        SegmentationMetrics(2, unit="volume").update(labels, labels)
    with pytest.raises(ValueError, match="Expected `case_ids` to be None when unit='image'"):
        SegmentationMetrics(2).update(labels, labels, case_ids=["a", "b"])
    with pytest.raises(ValueError, match=r"Expected `target` to be labels in \[0, 1\]"):
        SegmentationMetrics(2).update(labels, labels + 2)
    with pytest.raises(ValueError, match=r"Expected `pred` to be labels in \[0, 1\]"):
        SegmentationMetrics(2, unit="volume").update(labels + 5, labels, case_ids=["a", "a"])


WORKER = textwrap.dedent(
    """
    import sys
    import torch
    import torch.distributed as dist
    from seglosses.metrics import SegmentationMetrics

    rank, store, data_file, out_dir = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    data = torch.load(data_file)
    images = SegmentationMetrics(3, metrics=("dice", "hd95", "pixel_accuracy"))
    images.update(data["pred"][rank::2], data["target"][rank::2])
    volumes = SegmentationMetrics(3, metrics=("dice", "hd95"), unit="volume")
    # A DistributedSampler over slices: the slices of a case land on both ranks.
    for n in range(rank, len(data["case_ids"]), 2):
        volumes.update(data["slices_pred"][n:n + 1], data["slices_target"][n:n + 1],
                       case_ids=[data["case_ids"][n]], slice_indices=[data["slice_indices"][n]])
    torch.save({"images": images.compute(), "volumes": volumes.compute(), "ids": volumes.unit_ids},
               f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()
    """
)


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_distributed_sync_gives_the_single_process_numbers(make_pair, tmp_path: Path):
    pred, target = make_pair((14, 16), num_classes=3, batch=5, seed=91)
    volume_pred, volume_target = make_pair((5, 12, 12), num_classes=3, batch=2, seed=92)
    case_ids = [f"case{b}" for b in range(2) for _ in range(5)]
    slice_indices = [z for _ in range(2) for z in range(5)]
    data = {
        "pred": pred,
        "target": target,
        "case_ids": case_ids,
        "slice_indices": slice_indices,
        "slices_pred": volume_pred.flatten(0, 1),
        "slices_target": volume_target.flatten(0, 1),
    }
    torch.save(data, tmp_path / "data.pt")
    (tmp_path / "worker.py").write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                str(tmp_path / "worker.py"),
                str(rank),
                str(tmp_path / "store"),
                str(tmp_path / "data.pt"),
                str(tmp_path),
            ],
            env=env,
            stderr=subprocess.PIPE,
        )
        for rank in range(2)
    ]
    for worker in workers:
        _, stderr = worker.communicate(timeout=120)
        assert worker.returncode == 0, stderr.decode()[-2000:]
    single_images = SegmentationMetrics(3, metrics=("dice", "hd95", "pixel_accuracy"))
    single_images.update(pred, target)
    expected_images = single_images.compute()
    single_volumes = SegmentationMetrics(3, metrics=("dice", "hd95"))
    single_volumes.update(volume_pred, volume_target)
    expected_volumes = single_volumes.compute()
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert got["ids"] == ["case0", "case1"]
        for key in ("units", "dice", "dice/class", "hd95", "hd95/class", "pixel_accuracy", "dice/micro"):
            torch.testing.assert_close(got["images"][key], expected_images[key])
        for key in ("units", "dice", "dice/unit", "hd95", "hd95/unit", "hd95/undefined"):
            torch.testing.assert_close(got["volumes"][key], expected_volumes[key], equal_nan=True)
