"""Issue 9, the envelope made safe by default: what a user needs to see (selection, repr, diagnostics),
the class-conditional Bσ, repeated and negative indices, validation calls, run-time warnings, the
top-exclusion box and IndexedDataset. Each test failed on the envelope before the issue."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

import seglosses
from seglosses import EnvelopeWarning, IndexedDataset, TopKBottomSigma
from seglosses.envelope import pixel_keep_mask, soft_count


def _square_batch(sizes=(2, 3), size=10, seed=0):
    """Two-class label maps with one square object per image, and logits that miss every object."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.zeros(len(sizes), size, size, dtype=torch.long)
    for image, side in enumerate(sizes):
        labels[image, 1:1 + side, 2:2 + side] = 1
    logits = torch.stack([torch.full((len(sizes), size, size), 2.0), torch.zeros(len(sizes), size, size)], dim=1)
    return logits + 0.1 * torch.randn(logits.shape, generator=gen), labels


def _naive_class_keep(values, groups, kappa):
    keep = torch.zeros_like(values, dtype=torch.bool)
    for image in range(values.shape[0]):
        for group in groups[image].unique().tolist():
            members = groups[image] == group
            chosen = values[image][members].tolist()
            mean = math.fsum(chosen) / len(chosen)
            std = math.sqrt(math.fsum((v - mean) ** 2 for v in chosen) / len(chosen))
            keep[image][members] = torch.tensor([v <= max(mean + kappa * std, min(chosen)) for v in chosen])
    return keep


# --------------------------------------------------------------------------- item 10: what a user sees


def test_selection_exposes_k_and_n_over_k_of_paper_best_at_the_end_of_its_schedule():
    criterion = TopKBottomSigma.from_preset("paper_best", "ce_dice_pixel", 800, total_epochs=8)
    end = criterion.selection(8)
    assert (end.k, end.i0, end.alpha) == (40.0, 760.0, 1.0)
    assert end.K == pytest.approx(soft_count(800, 40.0, 760.0, 1.0)) and end.K == pytest.approx(40.0, abs=1e-6)
    assert end.n_over_k == pytest.approx(20.0, rel=1e-6)
    start = criterion.selection(1)
    assert (start.selective, start.K, start.n_over_k) == (False, 800.0, 1.0)


def test_repr_shows_every_option_that_differs_from_its_default():
    best = repr(TopKBottomSigma.from_preset("paper_best", "cross_entropy", 100, total_epochs=8))
    normalized = repr(TopKBottomSigma.from_preset("paper_best_normalized", "cross_entropy", 100, total_epochs=8))
    assert best != normalized and "alpha_units='normalized'" in normalized and "alpha_units" not in best
    assert ("num_images=100, image_strategy='atk_down', smoothing='sm_up', pixel_strategy='bsigma', "
            "pixel_groups='image', total_epochs=8") in best
    assert "num_images=100\n" in repr(TopKBottomSigma("cross_entropy", 100))  # the defaults: nothing else

    def my_schedule(epoch):
        return 0.5

    assert "image_strategy=test_repr_shows_every_option_that_differs_from_its_default.<locals>.my_schedule" in repr(
        TopKBottomSigma("cross_entropy", 10, image_strategy=my_schedule, min_weight=0.1))


def test_diagnostics_flag_weightless_batches_and_carry_the_unscaled_losses():
    criterion = TopKBottomSigma("cross_entropy", 20, image_strategy="atk", top_fraction=0.05, max_grad_scale=math.inf)
    gen = torch.Generator().manual_seed(1)
    logits, labels = torch.randn(20, 3, 4, 4, generator=gen), torch.randint(0, 3, (20, 4, 4), generator=gen)
    criterion(logits, labels, indices=torch.arange(20), epoch=1)
    easiest = criterion.ledger.argsort()[:4]
    with pytest.warns(EnvelopeWarning, match="every image of a batch of 4 weighs < 1e-8"):
        loss = criterion(logits[easiest], labels[easiest], indices=easiest, epoch=2)
    diagnostics = criterion.diagnostics
    assert loss.item() == 0.0 and bool(diagnostics.weightless) and diagnostics.recorded
    base_mean = seglosses.cross_entropy(logits[easiest], labels[easiest])
    torch.testing.assert_close(diagnostics.image_loss_mean, base_mean)
    torch.testing.assert_close(diagnostics.base_loss_mean, base_mean)
    assert diagnostics.loss.item() == 0.0 and diagnostics.grad_scale == 20.0
    hardest = criterion.ledger.argsort()[-4:]
    loss = criterion(logits[hardest], labels[hardest], indices=hardest, epoch=2)
    assert not bool(criterion.diagnostics.weightless)
    # The returned loss is N/K-scaled; the unscaled mean sits beside it.
    expected = 20 / (1 * 4) * seglosses.cross_entropy(logits[hardest[-1:]], labels[hardest[-1:]])
    torch.testing.assert_close(loss, expected)
    scalars = criterion.diagnostics.as_dict()
    for name in ("loss", "image_loss_mean", "base_loss_mean", "weightless", "K", "grad_scale", "kept_fraction_mean"):
        assert isinstance(scalars[name], (float, bool)), name


# --------------------------------------------------------------------------- item 1: small structures


def test_per_class_kept_fraction_reveals_a_dropped_structure_that_kept_fraction_hides():
    logits, labels = _square_batch()
    paper = TopKBottomSigma("cross_entropy", 2, pixel_strategy="bsigma", pixel_groups="image")
    paper(logits, labels, indices=torch.arange(2), epoch=1)
    diagnostics = paper.diagnostics
    keep = paper.export_keep_mask(logits, labels)
    assert diagnostics.kept_fraction.min().item() > 0.9  # reads as harmless ...
    for group in (0, 1):  # ... while every pixel of the missed objects is dropped
        members = labels == group
        expected = keep[members].double().mean().item()
        assert diagnostics.class_kept_fraction[group].item() == pytest.approx(expected)
    assert diagnostics.class_kept_fraction[1].item() == 0.0
    assert diagnostics.as_dict()["kept_fraction_class_1"] == 0.0
    # The class-conditional rule compares the object with itself: at least half of it is kept (kappa = 1).
    safe = TopKBottomSigma("cross_entropy", 2, pixel_strategy="bsigma", pixel_groups="class")
    safe(logits, labels, indices=torch.arange(2), epoch=1)
    assert safe.diagnostics.class_kept_fraction[1].item() >= 0.5
    # A class absent from the batch reads NaN; without pixel selection every class reads 1.
    three = TopKBottomSigma("cross_entropy", 2, pixel_strategy="bsigma")
    three(torch.cat([logits, torch.zeros(2, 1, 10, 10)], dim=1), labels, indices=torch.arange(2), epoch=1)
    assert math.isnan(three.diagnostics.class_kept_fraction[2].item())
    erm = TopKBottomSigma("cross_entropy", 2)
    erm(logits, labels, indices=torch.arange(2), epoch=1)
    assert erm.diagnostics.class_kept_fraction.tolist() == [1.0, 1.0]


def test_class_conditional_bsigma_matches_loops_with_ignored_pixels_dense_binary_and_multilabel_targets():
    gen = torch.Generator().manual_seed(2)
    values = torch.rand(3, 6, 7, generator=gen, dtype=torch.float64).round(decimals=1)
    # 3 groups take the loop over groups, 9 and 16 (class x prediction) the per-(image, group) sums.
    for count in (3, 9, 16):
        many = torch.randint(0, count, (3, 6, 7), generator=gen)
        for kappa in (1.0, 0.3, 0.0):
            keep = pixel_keep_mask(values, strategy="bsigma", kappa=kappa, groups=many, num_groups=count)
            assert torch.equal(keep, _naive_class_keep(values, many, kappa)), (count, kappa)
        mask = torch.rand(3, 6, 7, generator=gen) > 0.3
        keep = pixel_keep_mask(values, mask, strategy="bsigma", groups=many, num_groups=count)
        assert not keep[~mask].any()
        for image in range(3):
            expected = _naive_class_keep(values[image][mask[image]].unsqueeze(0), many[image][mask[image]].unsqueeze(0),
                                         1.0)[0]
            assert torch.equal(keep[image][mask[image]], expected), count
    groups = torch.randint(0, 3, (3, 6, 7), generator=gen)
    valid = torch.rand(3, 6, 7, generator=gen) > 0.3
    keep = pixel_keep_mask(values, valid, strategy="bsigma", groups=groups)
    for image in range(3):
        counted_groups = groups[image][valid[image]]
        expected = _naive_class_keep(values[image][valid[image]].unsqueeze(0), counted_groups.unsqueeze(0), 1.0)[0]
        assert torch.equal(keep[image][valid[image]], expected)
        assert not keep[image][~valid[image]].any()
    with pytest.raises(ValueError, match="`strategy`"):
        pixel_keep_mask(values, strategy="tk", groups=groups)

    # The module groups pixels by label, by the argmax of a dense target, by 0/1 in binary mode and
    # by the first positive channel in multilabel mode; ignored pixels count nowhere.
    logits, labels = _square_batch(seed=3)
    labels[0, 0, :3] = 255
    base = seglosses.CrossEntropyLoss(ignore_index=255)
    criterion = TopKBottomSigma(base, 2, pixel_strategy="bsigma", pixel_groups="class")
    per_pixel = base.per_pixel(logits, labels).detach()
    expected = _naive_class_keep(per_pixel, labels.clamp(max=1), 1.0) & (labels != 255)
    masked = _naive_class_keep(per_pixel[0][labels[0] != 255].unsqueeze(0),
                               labels[0][labels[0] != 255].unsqueeze(0), 1.0)[0]
    expected[0][labels[0] != 255] = masked
    assert torch.equal(criterion.export_keep_mask(logits, labels), expected)
    clean_labels = labels.clamp(max=1)
    dense = torch.nn.functional.one_hot(clean_labels, 2).permute(0, 3, 1, 2).float()
    dense_criterion = TopKBottomSigma("cross_entropy", 2, pixel_strategy="bsigma", pixel_groups="class")
    label_criterion = TopKBottomSigma("cross_entropy", 2, pixel_strategy="bsigma", pixel_groups="class")
    assert torch.equal(dense_criterion.export_keep_mask(logits, dense), label_criterion.export_keep_mask(
        logits, clean_labels))
    binary = TopKBottomSigma(seglosses.CrossEntropyLoss(mode="binary"), 2, pixel_strategy="bsigma",
                             pixel_groups="class")
    binary_logits = logits[:, 1:] - logits[:, :1]
    binary(binary_logits, clean_labels, indices=torch.arange(2), epoch=1)
    assert binary.diagnostics.class_kept_fraction.shape == (2,)
    assert binary.diagnostics.class_kept_fraction[1].item() >= 0.5
    multilabel = TopKBottomSigma(seglosses.CrossEntropyLoss(mode="multilabel"), 2, pixel_strategy="bsigma",
                                 pixel_groups="class")
    multilabel(logits, dense, indices=torch.arange(2), epoch=1)
    assert multilabel.diagnostics.class_kept_fraction.shape == (3,)  # none, channel 0, channel 1


def test_pixel_selection_starts_at_pixel_start_epoch():
    logits, labels = _square_batch()
    criterion = TopKBottomSigma("cross_entropy", 2, pixel_strategy="bsigma", pixel_groups="image", pixel_start_epoch=3)
    for epoch, selecting in ((1, False), (2, False), (3, True), (4, True)):
        criterion(logits, labels, indices=torch.arange(2), epoch=epoch)
        assert bool((criterion.diagnostics.kept_fraction < 1).any()) is selecting, epoch
    torch.testing.assert_close(criterion.image_losses(logits, labels, epoch=1),
                               seglosses.cross_entropy(logits, labels, reduction="none"))
    assert criterion.export_keep_mask(logits, labels, epoch=2).all()
    assert not criterion.export_keep_mask(logits, labels).all()
    with pytest.raises(ValueError, match="`epoch`.*pixel_start_epoch"):
        criterion(logits, labels, indices=torch.arange(2))


def test_class_prediction_groups_compare_each_annotated_class_within_each_predicted_class():
    """`pixel_groups="class_prediction"`: mean and std per (annotated class, predicted class) of each image, checked
    against the per-group loop; a ring of background predicted as foreground is kept, where the plain
    class rule drops it, and every class still keeps at least half of its pixels (kappa = 1)."""
    for seed, mode in ((4, "multiclass"), (5, "binary"), (6, "multilabel")):
        gen = torch.Generator().manual_seed(seed)
        channels = {"multiclass": 3, "binary": 1, "multilabel": 2}[mode]
        logits = torch.randn(2, channels, 8, 9, generator=gen, dtype=torch.float64)
        if mode == "multilabel":
            target = (torch.rand(2, channels, 8, 9, generator=gen) > 0.6).double()
            labels = torch.where(target.bool().any(1), target.bool().to(torch.uint8).argmax(1) + 1, 0)
            predicted = torch.where((logits > 0).any(1), (logits > 0).to(torch.uint8).argmax(1) + 1, 0)
            count = channels + 1
        else:
            count = max(channels, 2)
            target = labels = torch.randint(0, count, (2, 8, 9), generator=gen)
            predicted = logits.argmax(1) if mode == "multiclass" else (logits[:, 0] > 0).long()
        base = seglosses.CrossEntropyLoss(mode=mode)
        criterion = TopKBottomSigma(base, 2, pixel_strategy="bsigma", pixel_groups="class_prediction")
        expected = _naive_class_keep(base.per_pixel(logits, target).detach(), labels * count + predicted, 1.0)
        assert torch.equal(criterion.export_keep_mask(logits, target), expected), mode

    # One image: a 2 x 2 object; the model paints a ring of background around it as foreground.
    labels = torch.zeros(1, 12, 12, dtype=torch.long)
    labels[0, 5:7, 5:7] = 1
    ring = torch.zeros(12, 12, dtype=torch.bool)
    ring[4:8, 4:8] = True
    ring[5:7, 5:7] = False
    score = torch.full((12, 12), -2.0)
    score[ring], score[labels[0] == 1] = 1.0, 2.0
    score[0, :3] = 3.0  # a few confident false positives far away: the tail of the ring's group
    logits = torch.stack([torch.zeros(12, 12), score]).unsqueeze(0)
    by_class = TopKBottomSigma("cross_entropy", 1, pixel_strategy="bsigma", pixel_groups="class")
    by_class_prediction = TopKBottomSigma("cross_entropy", 1, pixel_strategy="bsigma", pixel_groups="class_prediction")
    assert not by_class.export_keep_mask(logits, labels)[0][ring].any()  # the ring: the tail of the background
    kept = by_class_prediction.export_keep_mask(logits, labels)[0]
    assert kept[ring].all() and not kept[0, :3].any()
    by_class_prediction(logits, labels, indices=torch.tensor([0]), epoch=1)
    assert by_class_prediction.diagnostics.class_kept_fraction.min().item() >= 0.5


def _toy_set(side: int, count: int = 64, size: int = 32, noise: float = 0.5):
    """The small-object toy of issue 9: one bright square of ``side`` pixels per image, Gaussian noise."""
    gen = torch.Generator().manual_seed(0)
    labels = torch.zeros(count, size, size, dtype=torch.long)
    for image in range(count):
        row, column = torch.randint(0, size - side + 1, (2,), generator=gen).tolist()
        labels[image, row:row + side, column:column + side] = 1
    return labels.float().unsqueeze(1) + noise * torch.randn(count, 1, size, size, generator=gen), labels


def _toy_dice(side: int, options: dict, steps: int = 80, batch: int = 16) -> float:
    """Foreground Dice on the training set after training a 3-layer CNN with Adam under the envelope."""
    images, labels = _toy_set(side)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv2d(16, 2, 3, padding=1))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    criterion = TopKBottomSigma("ce_dice_pixel", images.shape[0], **options)
    gen = torch.Generator().manual_seed(0)
    per_epoch = images.shape[0] // batch
    for step in range(steps):
        if step % per_epoch == 0:
            order = torch.randperm(images.shape[0], generator=gen)
        indices = order[(step % per_epoch) * batch:(step % per_epoch + 1) * batch]
        loss = criterion(model(images[indices]), labels[indices], indices=indices, epoch=1 + step // per_epoch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        predicted = model(images).argmax(dim=1) == 1
    truth = labels == 1
    return 2 * (predicted & truth).sum().item() / (predicted.sum() + truth.sum()).item()


@pytest.mark.parametrize("side", [5, 10])  # objects of 2.4% and 9.8% of the 32 x 32 image
def test_class_conditional_bsigma_learns_small_objects_that_the_papers_bsigma_never_learns(side):
    """Issue 9 item 1 on its toy (64 images 32 x 32, a 3-layer CNN, Adam, 20 epochs). Measured (foreground
    Dice, ERM / paper's Bσ / Bσ per class, the default / Bσ per class and prediction): 0.935 / 0.000 /
    0.855 / 0.918 at 2.4% and 0.981 / 0.000 / 0.946 / 0.973 at 9.8%. The per-class rule drops the
    background ring around the object (a small structure of the background class), so predictions bleed
    into it; grouping by prediction as well compares that ring with itself, within the issue's 0.05 of ERM,
    but it loses to ERM under annotation noise, so it is an option, not the default (docs/envelope.md)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convolutions: extra threads only contend on a shared machine
    try:
        erm = _toy_dice(side, {})
        paper = _toy_dice(side, {"pixel_strategy": "bsigma", "pixel_groups": "image"})
        default = _toy_dice(side, {"pixel_strategy": "bsigma"})
        by_prediction = _toy_dice(side, {"pixel_strategy": "bsigma", "pixel_groups": "class_prediction"})
    finally:
        torch.set_num_threads(threads)
    assert erm > 0.9
    assert paper < 0.05  # the object is the high tail of its image: dropped, then never learned
    assert default > erm - (0.05 if side == 10 else 0.1)  # learned; at 2.4% the ring costs 0.08
    assert by_prediction > erm - 0.05  # the target, at both sizes
    assert by_prediction > default


# --------------------------------------------------------------------------- item 4: repeated and negative indices


def test_repeated_indices_keep_the_last_value_and_weigh_every_occurrence_by_its_rank():
    criterion = TopKBottomSigma("cross_entropy", 4, image_strategy="atk", top_fraction=0.5, first_selective_epoch=1,
                                batch_norm="batch_mean")
    criterion.aggregate(torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.arange(4), epoch=1)
    # Index 0 drawn twice (a sampler with replacement): the last value wins, both occurrences count.
    losses = torch.tensor([5.0, 0.5, 6.0, 2.5], requires_grad=True)
    loss = criterion.aggregate(losses, torch.tensor([0, 1, 0, 2]), epoch=1)
    assert criterion.ledger.tolist() == [6.0, 0.5, 2.5, 4.0]
    assert criterion.diagnostics.ranks.tolist() == [3, 0, 3, 1]
    assert criterion.diagnostics.weights.tolist() == [1.0, 0.0, 1.0, 0.0]
    assert loss.item() == pytest.approx((5.0 + 6.0) / 4)
    assert torch.equal(criterion._sorted_keys, criterion.ledger.sort().values)


def test_repeated_indices_never_corrupt_the_ledger_with_value_checks_off():
    """The issue's case: with checks off, duplicates used to corrupt the sorted copy (ranks [3, 7, 18, 18])."""
    for method in ("sorted", "count"):
        criterion = TopKBottomSigma("cross_entropy", 20, image_strategy="atk", rank_method=method)
        criterion.aggregate(torch.arange(20, dtype=torch.float64), torch.arange(20), epoch=1)
        with seglosses.value_checks(False):
            for _ in range(3):
                criterion.aggregate(torch.tensor([3.0, 7.0, 50.0, 60.0], dtype=torch.float64),
                                    torch.tensor([3, 7, 18, 18]), epoch=2)
        assert criterion.ledger[18].item() == 60.0
        assert criterion.diagnostics.ranks.tolist() == [3, 7, 19, 19]
        if criterion._sorted_keys is not None:
            assert torch.equal(criterion._sorted_keys, criterion.ledger.sort().values)


def test_a_sampler_with_replacement_trains_through_many_batches():
    gen = torch.Generator().manual_seed(4)
    data = torch.randn(40, 2, 4, 4, generator=gen)
    labels = torch.randint(0, 2, (40, 4, 4), generator=gen)
    loader = torch.utils.data.DataLoader(IndexedDataset(torch.utils.data.TensorDataset(data, labels)), batch_size=16,
                                         sampler=torch.utils.data.RandomSampler(range(40), replacement=True,
                                                                                num_samples=400, generator=gen))
    model = torch.nn.Conv2d(2, 2, 1)
    criterion = TopKBottomSigma.from_preset("bsigma_class", "ce_dice_pixel", 40)
    repeats = 0
    for step, (x, y, index) in enumerate(loader):
        loss = criterion(model(x), y, indices=index, epoch=1 + step // 5)
        loss.backward()
        repeats += index.unique().numel() < index.numel()
    assert repeats > 0 and torch.isfinite(criterion.ledger).all()


def test_negative_indices_are_refused_and_never_wrap_around():
    criterion = TopKBottomSigma("cross_entropy", 4, image_strategy="atk", top_fraction=0.5)
    with pytest.raises(ValueError, match=r"index -1 \(negative indices would wrap around"):
        criterion.aggregate(torch.tensor([1.0, 2.0]), torch.tensor([0, -1]), epoch=1)
    assert torch.isnan(criterion.ledger).all()
    criterion.aggregate(torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.arange(4), epoch=1)
    with seglosses.value_checks(False):  # no host sync to raise: the image is neither recorded nor weighted
        criterion.aggregate(torch.tensor([9.0, 9.0]), torch.tensor([3, -1]), epoch=2)
    assert criterion.ledger.tolist() == [1.0, 2.0, 3.0, 9.0]
    assert criterion.diagnostics.ranks.tolist() == [3, -1] and criterion.diagnostics.weights.tolist() == [1.0, 0.0]


# --------------------------------------------------------------------------- item 2: a ledger that never fills


def test_warns_once_when_an_epoch_after_the_first_selective_one_starts_with_unseen_images():
    n, batch = 10, 4
    criterion = TopKBottomSigma("cross_entropy", n, image_strategy="atk")
    gen = torch.Generator().manual_seed(5)
    logits, labels = torch.randn(n, 2, 4, 4, generator=gen), torch.randint(0, 2, (n, 4, 4), generator=gen)
    caught = []
    for epoch in range(1, 5):
        with warnings.catch_warnings(record=True) as records:
            warnings.simplefilter("always")
            for start in range(0, n - n % batch, batch):  # drop_last=True with shuffle=False: 8 and 9 never come
                indices = torch.arange(start, start + batch)
                criterion(logits[indices], labels[indices], indices=indices, epoch=epoch)
        caught.append([str(r.message) for r in records if issubclass(r.category, EnvelopeWarning)])
    assert caught[0] == [] and caught[1] == [] and caught[3] == []
    assert len(caught[2]) == 1
    assert "Epoch 3 starts with 2 of the 10 ledger entries never written" in caught[2][0]
    assert "drop_last=True with shuffle=False" in caught[2][0] and "num_images" in caught[2][0]
    assert criterion.diagnostics.warmup  # still ERM, as the warning says


def test_no_unfilled_warning_when_the_ledger_fills_in_epoch_one():
    criterion = TopKBottomSigma("cross_entropy", 8, image_strategy="atk", top_fraction=0.5)
    gen = torch.Generator().manual_seed(6)
    logits, labels = torch.randn(8, 2, 4, 4, generator=gen), torch.randint(0, 2, (8, 4, 4), generator=gen)
    with warnings.catch_warnings():
        warnings.simplefilter("error", EnvelopeWarning)
        for epoch in range(1, 5):
            for indices in torch.randperm(8, generator=gen).split(4):
                criterion(logits[indices], labels[indices], indices=indices, epoch=epoch)


# --------------------------------------------------------------------------- item 3: validation calls


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
def test_no_grad_in_training_mode_records_nothing_warns_once_and_returns_the_base_mean(context):
    criterion = TopKBottomSigma("ce_dice_pixel", 4, image_strategy="atk", pixel_strategy="bsigma")
    gen = torch.Generator().manual_seed(7)
    logits, labels = torch.randn(4, 3, 6, 6, generator=gen), torch.randint(0, 3, (4, 6, 6), generator=gen)
    criterion(logits, labels, indices=torch.arange(4), epoch=1)
    ledger = criterion.ledger.clone()
    with pytest.warns(EnvelopeWarning, match=r"training mode under torch.no_grad\(\).*recorded nothing"):
        with context():
            loss = criterion(logits * 3, labels, indices=torch.arange(4), epoch=2)
    assert torch.equal(criterion.ledger, ledger)
    torch.testing.assert_close(loss, seglosses.create_loss("ce_dice_pixel")(logits * 3, labels))
    assert not criterion.diagnostics.recorded and criterion.diagnostics.ranks.tolist() == [-1] * 4
    with warnings.catch_warnings():
        warnings.simplefilter("error", EnvelopeWarning)  # once only
        with context():
            criterion(logits, labels, indices=torch.arange(4), epoch=2)
    assert torch.equal(criterion.ledger, ledger)


# --------------------------------------------------------------------------- item 6: defaults and the collapse


def test_the_default_envelope_is_erm_and_trains_exactly_like_its_base_loss():
    gen = torch.Generator().manual_seed(8)
    logits = torch.randn(4, 3, 6, 6, generator=gen)
    labels = torch.randint(0, 3, (4, 6, 6), generator=gen)
    base = seglosses.create_loss("ce_dice_pixel")
    criterion = TopKBottomSigma(base, 4)
    for epoch in (1, 2, 50):
        chosen, reference = logits.clone().requires_grad_(True), logits.clone().requires_grad_(True)
        loss = criterion(chosen, labels, indices=torch.arange(4), epoch=epoch)
        expected = base.per_image(reference, labels).mean()
        loss.backward()
        expected.backward()
        torch.testing.assert_close(loss, expected)
        torch.testing.assert_close(chosen.grad, reference.grad)
    readme = (__import__("pathlib").Path(__file__).resolve().parents[1] / "README.md").read_text()
    example = readme.split("## The Top-k / Bottom-all-but-sigma envelope", 1)[1].split("```python\n", 1)[1]
    assert "paper_best" not in example.split("```", 1)[0]


def test_paper_best_warns_once_per_epoch_when_n_over_k_passes_the_bound():
    n, batch = 40, 8
    criterion = TopKBottomSigma.from_preset("paper_best", "cross_entropy", n, total_epochs=4)
    gen = torch.Generator().manual_seed(9)
    logits, labels = torch.randn(n, 2, 4, 4, generator=gen), torch.randint(0, 2, (n, 4, 4), generator=gen)
    messages = {}
    for epoch in range(1, 5):
        with warnings.catch_warnings(record=True) as records:
            warnings.simplefilter("always")
            for indices in torch.randperm(n, generator=gen).split(batch):
                criterion(logits[indices], labels[indices], indices=indices, epoch=epoch)
        messages[epoch] = [str(r.message) for r in records if "max_grad_scale" in str(r.message)]
    box = criterion.selection(4)
    assert (box.k, box.alpha) == (2.0, 1.0) and box.n_over_k > 18  # about 20: alpha = 1 blurs the lower edge
    assert messages[1] == [] and messages[2] == [] and messages[3] == []  # N/K = 1, 1, about 2.1
    assert len(messages[4]) == 1 and f"N/K = {box.n_over_k:.1f} > max_grad_scale = 10" in messages[4][0]
    assert "batches of 8 hold no weighted image" in messages[4][0]
    quiet = TopKBottomSigma.from_preset("paper_best", "cross_entropy", n, total_epochs=4, max_grad_scale=math.inf)
    with warnings.catch_warnings():
        warnings.simplefilter("error", EnvelopeWarning)
        quiet.aggregate(torch.rand(n), torch.arange(n), epoch=1)
        quiet.aggregate(torch.rand(n).sort().values[-8:], torch.arange(n - 8, n), epoch=4)


# --------------------------------------------------------------------------- item 7: excluding the top


def test_top_exclusion_leaves_the_hardest_images_out_of_the_box():
    n = 20
    criterion = TopKBottomSigma("cross_entropy", n, image_strategy="atk", top_fraction=0.25, top_exclusion=0.1)
    assert criterion.selection(1)[:4] == (False, 20.0, 0.0, math.inf)  # ERM before first_selective_epoch
    assert criterion.selection(2) == (True, 5.0, 13.0, math.inf, 5.0, 4.0)
    losses = torch.arange(n, dtype=torch.float64)
    criterion.aggregate(losses, torch.arange(n), epoch=1)
    criterion.aggregate(losses, torch.arange(n), epoch=2)
    assert criterion.diagnostics.weights.tolist() == [0.0] * 13 + [1.0] * 5 + [0.0] * 2
    smooth = TopKBottomSigma("cross_entropy", n, image_strategy="atk", smoothing="sm", alpha_start=1.0,
                             top_fraction=0.25, top_exclusion=0.1)
    box = smooth.selection(2)
    weights = smooth._weights(torch.arange(n), box)
    assert weights[-1].item() < 0.2 < 0.8 < weights[15].item()  # the upper edge is smoothed too
    assert box.K == pytest.approx(weights.sum().item())
    with pytest.raises(ValueError, match="`top_exclusion`"):
        TopKBottomSigma("cross_entropy", n, image_strategy=lambda e: (0.2, 0.1), top_exclusion=0.1).selection(2)
    with pytest.raises(ValueError, match="`image_strategy`.*trimmed"):
        TopKBottomSigma("cross_entropy", n, top_exclusion=0.1)


def test_trimmed_preset_gives_mislabelled_images_at_the_top_of_the_ranking_no_weight():
    """Whole-mask annotation errors rank at the top (issue 9 item 7): "trimmed" drops the hardest 5%."""
    n = 40
    gen = torch.Generator().manual_seed(10)
    losses = torch.rand(n, generator=gen, dtype=torch.float64)
    mislabelled = torch.tensor([11, 30])  # 5% of the set
    losses[mislabelled] += 5.0  # a wholly wrong mask: no pixel selection can rescue it
    criterion = TopKBottomSigma.from_preset("trimmed", "cross_entropy", n)
    criterion.aggregate(losses, torch.arange(n), epoch=1)
    assert criterion.diagnostics.weights.tolist() == [1.0] * n  # epoch 1 is ERM
    loss = criterion.aggregate(losses, torch.arange(n), epoch=2)
    weights = criterion.diagnostics.weights
    clean = torch.ones(n, dtype=torch.bool)
    clean[mislabelled] = False
    assert weights[mislabelled].tolist() == [0.0, 0.0] and weights[clean].tolist() == [1.0] * (n - 2)
    assert criterion.diagnostics.K == 38.0
    assert loss.item() == pytest.approx((losses * weights).sum().item() / 38.0)


# --------------------------------------------------------------------------- item 8: any dataset, any sample form


def test_indexed_dataset_adds_the_index_to_tuple_dict_list_and_plain_samples():
    pairs = torch.utils.data.TensorDataset(torch.zeros(5, 1, 2, 2), torch.ones(5, 2, 2))
    image, mask, index = IndexedDataset(pairs)[3]
    assert index == 3 and image.shape == (1, 2, 2) and mask.shape == (2, 2)
    dicts = IndexedDataset([{"image": torch.zeros(1, 2, 2), "label": torch.zeros(2, 2)} for _ in range(5)])
    assert dicts[4]["index"] == 4 and set(dicts[4]) == {"image", "label", "index"}
    batch = next(iter(torch.utils.data.DataLoader(dicts, batch_size=5)))
    assert batch["index"].tolist() == [0, 1, 2, 3, 4] and batch["index"].dtype == torch.int64
    crops = IndexedDataset([[{"image": 1}, {"image": 2}]])[0]
    assert crops == [{"image": 1, "index": 0}, {"image": 2, "index": 0}]
    assert IndexedDataset([torch.zeros(2)])[0][1] == 0
    assert IndexedDataset([[1, 2]])[0] == [1, 2, 0] and len(IndexedDataset(pairs)) == 5
    assert IndexedDataset(dicts.dataset, key="sample_index")[1]["sample_index"] == 1
    with pytest.raises(ValueError, match=r"`dataset` to be samples without a 'index' entry"):
        IndexedDataset([{"index": 7}])[0]
    with pytest.raises(TypeError, match="`dataset`"):
        IndexedDataset(5)


def test_indexed_dataset_wraps_a_monai_dict_dataset():
    monai_data = pytest.importorskip("monai.data")
    items = [{"image": torch.full((1, 4, 4), float(i)), "label": torch.zeros(4, 4, dtype=torch.long)} for i in range(6)]
    dataset = IndexedDataset(monai_data.Dataset(items))
    loader = monai_data.DataLoader(dataset, batch_size=3, shuffle=True,
                                   generator=torch.Generator().manual_seed(0))
    criterion = TopKBottomSigma.from_preset("bsigma_class", "cross_entropy", len(dataset))
    model = torch.nn.Conv2d(1, 2, 1)
    for epoch in (1, 2):
        for batch in loader:
            assert torch.equal(batch["image"][:, 0, 0, 0].long(), batch["index"])
            criterion(model(batch["image"]), batch["label"], indices=batch["index"], epoch=epoch).backward()
    assert torch.isfinite(criterion.ledger).all()


# --------------------------------------------------------------------------- item 9: host syncs


class HostReads:
    """Counts the calls that read a tensor value back to the host (a sync on an accelerator)."""

    METHODS = ("__bool__", "__int__", "__float__", "__index__", "item", "tolist", "nonzero", "unique")

    def __init__(self, monkeypatch):
        self.count = 0
        for name in self.METHODS:
            original = getattr(torch.Tensor, name)
            monkeypatch.setattr(torch.Tensor, name, self._counted(original))
        for name in ("nonzero", "unique", "equal"):
            monkeypatch.setattr(torch, name, self._counted(getattr(torch, name)))

    def _counted(self, original):
        def counted(*args, **kwargs):
            self.count += 1
            return original(*args, **kwargs)

        return counted


@pytest.mark.parametrize("options", [
    {"image_strategy": "atk", "top_fraction": 0.5, "pixel_strategy": "bsigma"},
    {"image_strategy": "atk_down", "smoothing": "sm_up", "total_epochs": 4, "pixel_strategy": "bsigma",
     "pixel_groups": "image", "batch_norm": "selected_mean", "end_fraction": 0.5},
    {"image_strategy": "atk", "top_fraction": 0.5, "staleness": "relative"},
])
def test_a_training_call_after_warm_up_reads_nothing_back_with_value_checks_off(options, monkeypatch):
    """What the docs claim for an accelerator (rank_method="count" is its default): no host sync."""
    gen = torch.Generator().manual_seed(11)
    logits, labels = torch.randn(8, 3, 6, 6, generator=gen), torch.randint(0, 3, (8, 6, 6), generator=gen)
    criterion = TopKBottomSigma("ce_dice_pixel", 8, rank_method="count", **options)
    criterion(logits, labels, indices=torch.arange(8), epoch=1)  # fills the ledger (reads while filling)
    criterion(logits[:4], labels[:4], indices=torch.arange(4), epoch=3)  # the epoch's first call may warn
    monkeypatch.setattr(TopKBottomSigma, "_reads_are_free", lambda self: False)  # as on an accelerator
    reads = HostReads(monkeypatch)
    with seglosses.value_checks(False):
        loss = criterion(logits[4:], labels[4:], indices=torch.tensor([4, 5, 5, 7]), epoch=3)
        loss.backward() if loss.requires_grad else None
    assert reads.count == 0
    assert criterion.diagnostics.recorded and criterion.diagnostics.ranks.min() >= 0
