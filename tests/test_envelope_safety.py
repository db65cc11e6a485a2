"""Issue 9, the envelope made safe by default: what a user needs to see (selection, repr, diagnostics),
the class-conditional Bσ, repeated and negative indices, validation calls, run-time warnings, the
top-exclusion box and IndexedDataset. Each test failed on the envelope before the issue."""

from __future__ import annotations

import math

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
    safe = TopKBottomSigma("cross_entropy", 2, pixel_strategy="bsigma")
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
    groups = torch.randint(0, 3, (3, 6, 7), generator=gen)
    for kappa in (1.0, 0.3, 0.0):
        keep = pixel_keep_mask(values, strategy="bsigma", kappa=kappa, groups=groups, num_groups=3)
        assert torch.equal(keep, _naive_class_keep(values, groups, kappa)), kappa
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
    criterion = TopKBottomSigma(base, 2, pixel_strategy="bsigma")
    per_pixel = base.per_pixel(logits, labels).detach()
    expected = _naive_class_keep(per_pixel, labels.clamp(max=1), 1.0) & (labels != 255)
    masked = _naive_class_keep(per_pixel[0][labels[0] != 255].unsqueeze(0),
                               labels[0][labels[0] != 255].unsqueeze(0), 1.0)[0]
    expected[0][labels[0] != 255] = masked
    assert torch.equal(criterion.export_keep_mask(logits, labels), expected)
    clean_labels = labels.clamp(max=1)
    dense = torch.nn.functional.one_hot(clean_labels, 2).permute(0, 3, 1, 2).float()
    dense_criterion = TopKBottomSigma("cross_entropy", 2, pixel_strategy="bsigma")
    label_criterion = TopKBottomSigma("cross_entropy", 2, pixel_strategy="bsigma")
    assert torch.equal(dense_criterion.export_keep_mask(logits, dense), label_criterion.export_keep_mask(
        logits, clean_labels))
    binary = TopKBottomSigma(seglosses.CrossEntropyLoss(mode="binary"), 2, pixel_strategy="bsigma")
    binary_logits = logits[:, 1:] - logits[:, :1]
    binary(binary_logits, clean_labels, indices=torch.arange(2), epoch=1)
    assert binary.diagnostics.class_kept_fraction.shape == (2,)
    assert binary.diagnostics.class_kept_fraction[1].item() >= 0.5
    multilabel = TopKBottomSigma(seglosses.CrossEntropyLoss(mode="multilabel"), 2, pixel_strategy="bsigma")
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
