"""The training loop on a tiny synthetic dataset that follows the sample contract: the run folder,
exact resume after Ctrl-C / SIGTERM, refused resumes, a full disk, losses that cannot serve the
data, augmentation and the schedule."""

from __future__ import annotations

import csv
import errno
import importlib
import importlib.util
import json
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

import seglosses
from seglosses.lab.config import AugmentConfig, RunConfig, apply_overrides, config_from_dict
from seglosses.lab.train import (
    augment_batch,
    build_criterion,
    evaluate,
    load_checkpoint,
    load_run,
    lr_factor,
    train,
)
from tests.lab.synthetic import disc_splits

train_module = importlib.import_module("seglosses.lab.train")
TINY_MODEL = {"name": "basic_unet", "options": {"features": [4, 4, 8, 8, 16, 4]}}


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convolutions are slower with threads on a shared machine
    yield
    torch.set_num_threads(threads)


def tiny_config(out_dir, **sections) -> RunConfig:
    values = {"model": TINY_MODEL, "loss": {"name": "dice_ce"},
              "train": {"epochs": 2, "batch_size": 3, "progress": False, "out_dir": str(out_dir)}}
    for name, section in sections.items():
        values[name] = section if section is None or name == "envelope" else {**values.get(name, {}), **section}
    return config_from_dict(values)


# Interrupt a run at a chosen training step, as Ctrl-C or SIGTERM would (augmentation runs once per step).
CALLS = {"count": 0, "stop_at": None, "signal": signal.SIGINT}
augment_once = train_module.augment_batch


def augment_and_interrupt(*args, **kwargs):
    CALLS["count"] += 1
    if CALLS["count"] == CALLS["stop_at"]:
        signal.raise_signal(CALLS["signal"])
    return augment_once(*args, **kwargs)


@pytest.fixture(autouse=True)
def interruptible(monkeypatch):
    monkeypatch.setattr(train_module, "augment_batch", augment_and_interrupt)


def run(config, stop_at=None, sig=signal.SIGINT, **kwargs):
    CALLS.update(count=0, stop_at=stop_at, signal=sig)
    try:
        return train(config, splits=disc_splits(), **kwargs)
    finally:
        CALLS.update(stop_at=None)


def parameters(path):
    return load_checkpoint(path)["model"]


def test_a_run_writes_its_folder(tmp_path):
    config = tiny_config(tmp_path / "run", envelope={"preset": "paper_best"}, train={"val_every": 1})
    result = run(config)
    out = tmp_path / "run"
    for name in ("config.yaml", "log.csv", "last.pt", "best.pt", "results.json", "per_image.csv",
                 "envelope/epoch_001.npz", "envelope/epoch_002.npz"):
        assert (out / name).is_file(), name
    assert not result.interrupted and result.epochs_completed == 2
    with open(out / "log.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(row["epoch"]) for row in rows] == [1, 2]
    columns = set(rows[0])
    assert {"lr", "train_loss", "train_loss_unscaled", "val_dice", "val_hd95", "time_s", "images_per_s"} <= columns
    assert {"env_K", "env_grad_scale", "env_weights_mean", "env_k", "env_alpha", "env_n_over_k"} <= columns
    # Epoch 1 weighs every image 1 (selection starts at epoch 2): the plain mean of the Bsigma-selected image
    # losses, which drops each image's worst pixels, so it lies below the base loss over every pixel.
    assert float(rows[0]["train_loss"]) < float(rows[0]["train_loss_unscaled"])
    assert float(rows[1]["env_n_over_k"]) > 1
    ledger = np.load(out / "envelope" / "epoch_002.npz")
    assert ledger["ledger"].shape == (8,) and np.isfinite(ledger["ledger"]).all()
    assert ledger["weights"].shape == (8,) and np.isfinite(ledger["weights"]).all()

    results = json.loads((out / "results.json").read_text())
    assert set(results["mean"]) == {"dice", "iou", "precision", "recall", "hd95", "assd", "nsd"}
    assert list(results["per_class"]["dice"]) == ["disc"]
    assert results["selected_model"] == "best" and results["best_epoch"] in (1, 2) and results["units"] == 4
    with open(out / "per_image.csv") as handle:
        units = list(csv.DictReader(handle))
    assert [row["case_id"] for row in units] == ["case000", "case001", "case002", "case003"]
    dice = np.mean([float(row["dice"]) for row in units])
    assert dice == pytest.approx(results["mean"]["dice"], rel=1e-5)

    # load_run gives back the selected model: scoring it again reproduces the test Dice.
    loaded = load_run(out)
    assert loaded.epoch == results["best_epoch"] and loaded.envelope is not None
    assert torch.equal(loaded.envelope.ledger, torch.from_numpy(ledger["ledger"]))
    scores, _ = evaluate(loaded.model, disc_splits().test, num_classes=2, metrics=("dice",))
    assert float(scores["dice"]) == pytest.approx(results["mean"]["dice"], rel=1e-6)


@pytest.mark.parametrize(("envelope", "sig"), [(None, signal.SIGINT), ({"preset": "paper_best"}, signal.SIGTERM)])
def test_an_interrupted_run_resumes_bit_identically(tmp_path, envelope, sig):
    def config(name):
        return tiny_config(tmp_path / name, envelope=envelope, train={"epochs": 2, "val_every": 2})

    reference = run(config("reference"))
    # 8 images in batches of 3: 3 steps per epoch; stop during epoch 2 (after its 2nd step).
    interrupted = run(config("resumed"), stop_at=5, sig=sig)
    assert interrupted.interrupted and interrupted.epochs_completed == 1 and interrupted.test is None
    state = load_checkpoint(tmp_path / "resumed" / "last.pt")
    assert (state["epoch"], state["step"]) == (2, 2)
    assert signal.getsignal(sig) is not None  # the handlers are restored
    resumed = run(config("resumed"), resume=True)
    assert not resumed.interrupted
    for key, value in parameters(tmp_path / "reference" / "last.pt").items():
        assert torch.equal(value, parameters(tmp_path / "resumed" / "last.pt")[key]), key
    for got, want in zip(resumed.history, reference.history, strict=True):
        assert {k: v for k, v in got.items() if k not in ("time_s", "images_per_s")} == \
               {k: v for k, v in want.items() if k not in ("time_s", "images_per_s")}
    assert resumed.test["mean"] == reference.test["mean"]
    if envelope is not None:
        assert torch.equal(load_checkpoint(tmp_path / "resumed" / "last.pt")["criterion"]["ledger"],
                           load_checkpoint(tmp_path / "reference" / "last.pt")["criterion"]["ledger"])


def test_resuming_with_a_different_config_is_refused_with_the_differing_keys(tmp_path):
    config = tiny_config(tmp_path / "run", train={"epochs": 1})
    run(config)
    changed = apply_overrides(config, ["optim.lr=0.01", "loss.options.squared=true", "train.progress=true"])
    with pytest.raises(ValueError, match=r"differences in loss\.options\.squared: checkpoint '<absent>', now True; "
                                         r"optim\.lr: checkpoint 0\.001, now 0\.01\.$"):
        run(changed, resume=True)
    with pytest.raises(FileExistsError, match=r"resume=True.*overwrite=True"):
        run(config)
    with pytest.raises(FileNotFoundError, match="nothere"):
        run(config, resume=tmp_path / "nothere" / "last.pt")


def test_a_full_disk_while_checkpointing_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    config = tiny_config(tmp_path / "run", train={"epochs": 2, "checkpoint_every_s": 0.0})  # after every epoch
    real_save, writes, kept = torch.save, {"last": 0}, {}

    def save_until_full(obj, handle, *args, **kwargs):  # the disk fills up at the second last.pt
        if handle.name.endswith("last.pt.tmp"):
            writes["last"] += 1
            if writes["last"] == 2:
                kept["bytes"] = (tmp_path / "run" / "last.pt").read_bytes()
                handle.write(b"partial bytes")
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, handle, *args, **kwargs)

    monkeypatch.setattr(train_module.torch, "save", save_until_full)
    message = r"last\.pt \(No space left on device\); the previous last\.pt is intact"
    with pytest.raises(OSError, match=message) as caught:
        run(config)
    assert caught.value.errno == errno.ENOSPC
    monkeypatch.setattr(train_module.torch, "save", real_save)
    assert (tmp_path / "run" / "last.pt").read_bytes() == kept["bytes"]
    assert not (tmp_path / "run" / "last.pt.tmp").exists()
    assert load_checkpoint(tmp_path / "run" / "last.pt")["epochs_completed"] == 1
    assert run(config, resume=True).epochs_completed == 2  # and it resumes


@pytest.mark.parametrize(("every_s", "writes"), [(0.0, 3), (3600.0, 1)])
def test_last_checkpoint_every_epoch_or_at_most_every_so_many_seconds(tmp_path, monkeypatch, every_s, writes):
    real_save, written = torch.save, []

    def counting_save(obj, handle, *args, **kwargs):
        written.append(Path(handle.name).name)
        return real_save(obj, handle, *args, **kwargs)

    monkeypatch.setattr(train_module.torch, "save", counting_save)
    run(tiny_config(tmp_path / "run", train={"epochs": 3, "val_every": 0, "checkpoint_every_s": every_s}))
    assert written.count("last.pt.tmp") == writes  # the last epoch always writes it
    assert load_checkpoint(tmp_path / "run" / "last.pt")["epochs_completed"] == 3


def test_losses_that_cannot_serve_the_data_are_refused(monkeypatch):
    monkeypatch.setattr(seglosses.TverskyLoss, "modes", ("binary",))  # a binary-only loss
    four_class = RunConfig()
    with pytest.raises(ValueError, match=r"`loss\.name` to be a loss that serves 4-class label maps \(multiclass "
                                         r"mode\), but got 'tversky', which supports \['binary'\]"):
        build_criterion(apply_overrides(four_class, ["loss.name=tversky"]), 4, 10)
    with pytest.raises(ValueError, match=r"4-class label maps.*'dice', which supports \['multiclass', 'binary', "
                                         r"'multilabel'\] and is set to binary"):
        build_criterion(apply_overrides(four_class, ["loss.name=dice", "loss.options.mode=binary"]), 4, 10)
    with pytest.raises(ValueError, match=r"`loss\.options\.mode` to be 'multiclass' or 'binary'.*'multilabel'"):
        build_criterion(apply_overrides(four_class, ["loss.name=dice", "loss.options.mode=multilabel"]), 2, 10)
    with pytest.raises(TypeError, match=r"`loss\.name` to be a loss the envelope can wrap, but got 'lovasz'"):
        build_criterion(apply_overrides(four_class, ["loss.name=lovasz", "envelope.preset=atk"]), 2, 10)
    with pytest.raises(TypeError, match=r"`loss\.options` to be options of 'dice'"):
        build_criterion(apply_overrides(four_class, ["loss.name=dice", "loss.options.sqared=true"]), 2, 10)
    # Two classes: a binary-only loss trains one sigmoid channel, the others two softmax channels.
    assert build_criterion(apply_overrides(four_class, ["loss.name=tversky"]), 2, 10)[1] == 1
    assert build_criterion(apply_overrides(four_class, ["loss.name=exp_log"]), 2, 10)[1] == 2


def test_three_classes_scored_per_volume_with_a_prepass_ledger(tmp_path):
    config = tiny_config(tmp_path / "run", envelope={"preset": "atk", "options": {"ledger_init": "prepass"}},
                         loss={"name": "ce_dice_pixel"}, train={"epochs": 1, "select": "final"})
    result = train(config, splits=disc_splits(test=6, num_classes=3, eval_unit="volume"))
    assert result.test["units"] == 3 and result.test["eval_unit"] == "volume"
    assert list(result.test["per_class"]["dice"]) == ["disc", "core"]
    with open(tmp_path / "run" / "per_image.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["case_id"], row["class"]) for row in rows] == [
        (f"volume{v}", cls) for v in range(3) for cls in ("disc", "core")]
    assert result.test["selected_model"] == "final" and result.test["evaluated_epoch"] == 1
    # The prepass filled the ledger before the first step: no warm-up.
    assert result.history[0]["env_warmup"] == 0.0


def test_progress_bars_on_a_terminal_and_tensorboard(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(train_module.sys.stderr, "isatty", lambda: True, raising=False)
    run(tiny_config(tmp_path / "bars", train={"epochs": 1, "val_every": 0, "progress": True}))
    assert "epoch 1/1" in capsys.readouterr().err  # the tqdm bar
    config = tiny_config(tmp_path / "tensorboard", train={"epochs": 1, "tensorboard": True})
    if importlib.util.find_spec("tensorboard") is None:
        with pytest.raises(ValueError, match=r"`train\.tensorboard` to be false when the tensorboard package"):
            run(config)
    else:
        run(config)
        assert list((tmp_path / "tensorboard" / "tensorboard").iterdir())


def test_a_binary_loss_trains_one_sigmoid_channel(tmp_path):
    result = run(tiny_config(tmp_path / "run", loss={"name": "dice", "options": {"mode": "binary"}},
                             train={"epochs": 1}))
    assert load_run(tmp_path / "run").data_info["out_channels"] == 1
    assert result.test["mean"]["dice"] is not None


@pytest.mark.parametrize("envelope", [None, {"preset": "atk_sm", "options": {"top_fraction": 0.5}}])
def test_deep_supervision_trains_with_and_without_the_envelope(tmp_path, envelope):
    result = run(tiny_config(tmp_path / "run", envelope=envelope, train={"epochs": 2, "deep_supervision": True},
                             optim={"name": "sgd", "lr": 0.01, "schedule": "cosine", "warmup_epochs": 1.0}))
    assert np.isfinite([row["train_loss"] for row in result.history]).all()
    assert result.history[0]["lr"] == pytest.approx(0.01)  # the end of the warm-up epoch
    assert result.history[1]["lr"] == pytest.approx(0.0, abs=1e-12)  # the cosine reaches 0 at the last step


def test_augmentation_moves_images_and_masks_together():
    generator = torch.Generator().manual_seed(0)
    blocks = torch.randint(0, 3, (6, 3, 3), generator=generator)
    masks = blocks.repeat_interleave(8, 1).repeat_interleave(8, 2)  # 24x24, smooth enough to resample
    images = torch.stack([masks.float(), 2 * masks.float()], 1)  # the image encodes its mask
    draws = np.random.default_rng(1).random((6, 8))
    config = AugmentConfig(rotation_degrees=30.0, intensity_scale=0.0, intensity_shift=0.0)
    out_images, (out_masks, out_clean) = augment_batch(images, [masks, masks.clone()], draws, config)
    assert torch.equal(out_masks, out_clean)
    assert out_masks.dtype == torch.int64 and out_images.shape == images.shape
    changed = (out_masks != masks).flatten(1).any(1)
    assert changed.sum() >= 4  # most images moved
    # Flips and right angles are exact; the rotation resamples (bilinear image, nearest mask).
    exact = AugmentConfig(intensity_scale=0.0, intensity_shift=0.0)
    flipped, (flipped_masks,) = augment_batch(images, [masks], draws, exact)
    assert torch.equal(flipped[:, 0], flipped_masks.float()) and torch.equal(flipped[:, 1], 2 * flipped_masks.float())
    agree = (out_images[:, 0].round() == out_masks.float()).float().mean()
    assert agree > 0.9
    # Intensities change, geometry does not.
    shifted, (same,) = augment_batch(images, [masks], draws, AugmentConfig(flip=False, rot90=False))
    assert torch.equal(same, masks) and not torch.equal(shifted, images)
    assert augment_batch(images, [masks], draws, AugmentConfig(enabled=False))[0] is images


def test_augmentation_draws_depend_on_seed_epoch_and_index_only():
    draws = train_module._augment_draws
    assert np.array_equal(draws(0, 1, [3, 5]), np.stack([draws(0, 1, [3])[0], draws(0, 1, [5])[0]]))
    assert not np.array_equal(draws(0, 1, [3]), draws(0, 2, [3]))
    assert not np.array_equal(draws(0, 1, [3]), draws(1, 1, [3]))


@pytest.mark.parametrize(("schedule", "expected"), [
    ("poly", [0.5, 1.0, 1.0, 0.75, 0.5, 0.25]),
    ("cosine", [0.5, 1.0, 1.0, 0.8535533905932737, 0.5, 0.14644660940672627]),
    ("constant", [0.5, 1.0, 1.0, 1.0, 1.0, 1.0]),
])
def test_the_schedule_warms_up_linearly_then_decays(schedule, expected):
    steps = [0, 1, 2, 3, 4, 5]
    got = [lr_factor(s, total_steps=6, warmup_steps=2, schedule=schedule, poly_power=1.0) for s in steps]
    assert got == pytest.approx(expected)


def test_empty_splits_and_bad_samples_are_refused(tmp_path):
    splits = disc_splits()
    splits.val = torch.utils.data.Subset(splits.val, [])
    with pytest.raises(ValueError, match=r"the val split to hold samples, but got an empty split"):
        train(tiny_config(tmp_path / "a"), splits=splits)
    splits = disc_splits()
    splits.train.samples[1] = {**splits.train.samples[1], "image": torch.zeros(1, 32, 40),
                               "mask": torch.zeros(32, 40, dtype=torch.long)}
    with pytest.raises(ValueError, match=r"images of a batch to share one size \(set `data\.image_size`\), but got "
                                         r"\[\(1, 32, 32\), \(1, 32, 40\)\]"):
        train(tiny_config(tmp_path / "c"), splits=splits)
    splits = disc_splits()
    splits.train = [(torch.zeros(1, 32, 32), torch.zeros(32, 32, dtype=torch.long))] * 4
    with pytest.raises(TypeError, match=r"dicts with keys \['image', 'mask'.*but got tuple"):
        train(tiny_config(tmp_path / "b"), splits=splits)


def test_an_hc18_subset_trains_end_to_end_with_noise_and_the_envelope(tmp_path, data_dir):
    config = tiny_config(tmp_path / "run", envelope={"preset": "paper_best_normalized"}, data={
        "name": "hc18", "root": str(data_dir / "hc18"), "image_size": [64, 64], "max_train": 6, "max_val": 3,
        "max_test": 3, "noise": {"level": "moderate"}}, train={"epochs": 2, "batch_size": 3})
    result = train(config)
    out = tmp_path / "run"
    for name in ("splits.csv", "noise.csv", "log.csv", "results.json", "per_image.csv", "envelope/epoch_002.npz"):
        assert (out / name).is_file(), name
    assert len(result.history) == 2 and result.test["units"] == 3
    assert list(result.test["per_class"]["dice"]) == ["head"]
    assert 0.0 <= result.test["mean"]["dice"] <= 1.0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_a_cuda_device_without_cuda_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"`train\.device` to be a device this machine has, but got 'cuda'"):
        run(tiny_config(tmp_path / "run", train={"device": "cuda"}))


@pytest.mark.parametrize(("name", "sizes", "eval_unit", "classes"), [
    ("fuseg", {"max_train": 6, "max_val": 3, "max_test": 3}, "image", 1),
    ("acdc", {"max_train": 6, "max_val": 1, "max_test": 1}, "volume", 3),
])
def test_fuseg_and_acdc_subsets_train_end_to_end(tmp_path, data_dir, name, sizes, eval_unit, classes):
    config = tiny_config(tmp_path / "run", data={"name": name, "root": str(data_dir / name), "image_size": [64, 64],
                                                 **sizes}, train={"epochs": 1, "batch_size": 3})
    result = train(config)
    assert result.test["eval_unit"] == eval_unit and len(result.test["per_class"]["dice"]) == classes
    assert result.test["units"] == sizes["max_test"]
    with open(tmp_path / "run" / "per_image.csv") as handle:
        assert len(list(csv.DictReader(handle))) == sizes["max_test"] * classes


def test_a_binary_only_loss_on_acdc_is_refused_before_training(tmp_path, data_dir, monkeypatch):
    monkeypatch.setattr(seglosses.TverskyLoss, "modes", ("binary",))
    config = tiny_config(tmp_path / "run", loss={"name": "tversky"}, data={
        "name": "acdc", "root": str(data_dir / "acdc"), "image_size": [64, 64], "max_train": 2, "max_val": 1,
        "max_test": 1})
    with pytest.raises(ValueError, match=r"serves 4-class label maps \(multiclass mode\), but got 'tversky'"):
        train(config)
    assert not (tmp_path / "run" / "last.pt").exists()
