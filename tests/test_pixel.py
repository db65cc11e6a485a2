"""Pixel losses against independent oracles: torch.nn.functional, naive full-sort references,
nnU-Net's TopK definition, MONAI and kornia focal losses, and hand-derived tiny cases."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from kornia.losses import binary_focal_loss_with_logits as kornia_binary_focal
from kornia.losses import focal_loss as kornia_focal
from monai.losses import FocalLoss as MonaiFocalLoss

from seglosses.pixel import (
    CrossEntropyLoss,
    FocalLoss,
    TopKCrossEntropyLoss,
    cross_entropy,
    cross_entropy_per_pixel,
    focal_loss,
    focal_loss_per_pixel,
    topk_cross_entropy,
    topk_cross_entropy_per_pixel,
)

IGNORE = 255


def logits_and_labels(shape=(3, 4, 6, 7), seed=0, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    logits = 2.0 * torch.randn(shape, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=generator)
    return logits.to(dtype), labels


def with_ignored_pixels(labels, seed=5, fraction=0.3):
    generator = torch.Generator().manual_seed(seed)
    ignored = torch.rand(labels.shape, generator=generator) < fraction
    return labels.masked_fill(ignored, IGNORE), ignored


def soft_target(shape, seed=3):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=generator, dtype=torch.float64).softmax(dim=1)


def per_image(function, logits, labels, **kwargs):
    """Apply a batch-level oracle to each image separately, (B,)."""
    return torch.stack([function(logits[i : i + 1], labels[i : i + 1], **kwargs) for i in range(logits.shape[0])])


# --------------------------------------------------------------------------- cross-entropy


class TestCrossEntropy:
    def test_hand_derived_two_pixels(self):
        # Pixel 1: logits (0, log 3), label 1 -> p = 3/4; pixel 2: logits (0, 0), label 0 -> p = 1/2.
        logits = torch.tensor([[[[0.0, 0.0]], [[math.log(3.0), 0.0]]]], dtype=torch.float64)
        labels = torch.tensor([[[1, 0]]])
        expected = (-math.log(0.75) - math.log(0.5)) / 2
        assert cross_entropy(logits, labels).item() == pytest.approx(expected, rel=1e-12)
        per_pixel = cross_entropy_per_pixel(logits, labels)
        torch.testing.assert_close(per_pixel, torch.tensor([[[-math.log(0.75), -math.log(0.5)]]], dtype=torch.float64))

    @pytest.mark.parametrize("shape", [(3, 4, 6, 7), (2, 3, 3, 4, 5)], ids=["2d", "3d"])
    def test_matches_torch_mean_and_per_image(self, shape):
        logits, labels = logits_and_labels(shape)
        torch.testing.assert_close(cross_entropy(logits, labels), F.cross_entropy(logits, labels))
        torch.testing.assert_close(
            cross_entropy(logits, labels, reduction="none"), per_image(F.cross_entropy, logits, labels)
        )
        torch.testing.assert_close(
            cross_entropy(logits, labels, reduction="sum"), per_image(F.cross_entropy, logits, labels).sum()
        )

    def test_class_weights_are_a_weighted_mean_per_image(self):
        logits, labels = logits_and_labels()
        weights = torch.tensor([0.2, 1.0, 3.0, 0.5], dtype=torch.float64)
        expected = per_image(F.cross_entropy, logits, labels, weight=weights)
        torch.testing.assert_close(cross_entropy(logits, labels, class_weights=weights, reduction="none"), expected)
        torch.testing.assert_close(cross_entropy(logits, labels, class_weights=weights.tolist()), expected.mean())

    def test_ignore_index_with_and_without_weights(self):
        logits, labels = logits_and_labels()
        labels, _ = with_ignored_pixels(labels)
        weights = torch.tensor([0.2, 1.0, 3.0, 0.5], dtype=torch.float64)
        torch.testing.assert_close(
            cross_entropy(logits, labels, ignore_index=IGNORE, reduction="none"),
            per_image(F.cross_entropy, logits, labels, ignore_index=IGNORE),
        )
        torch.testing.assert_close(
            cross_entropy(logits, labels, ignore_index=IGNORE, class_weights=weights, reduction="none"),
            per_image(F.cross_entropy, logits, labels, ignore_index=IGNORE, weight=weights),
        )

    def test_negative_ignore_index_like_torch_default(self):
        logits, labels = logits_and_labels()
        labels, ignored = with_ignored_pixels(labels)
        labels = labels.masked_fill(ignored, -100)
        torch.testing.assert_close(
            cross_entropy(logits, labels, ignore_index=-100, reduction="none"),
            per_image(F.cross_entropy, logits, labels),
        )

    def test_fully_ignored_image_gives_zero_loss_and_gradient(self):
        logits, labels = logits_and_labels()
        labels[1] = IGNORE
        logits.requires_grad_(True)
        values = cross_entropy(logits, labels, ignore_index=IGNORE, reduction="none")
        assert values[1].item() == 0.0
        values.sum().backward()
        assert (logits.grad[1] == 0).all() and torch.isfinite(logits.grad).all()

    def test_soft_targets_match_torch_probability_targets(self):
        logits, _ = logits_and_labels()
        target = soft_target(logits.shape)
        torch.testing.assert_close(cross_entropy(logits, target), F.cross_entropy(logits, target))

    def test_soft_targets_with_weights_normalise_by_pixel_weight(self):
        # Documented convention: pixel weight sum_c w_c t_c, loss = sum(w t (-log p)) / sum(w t) per image.
        # (torch's probability-target CE with weights divides by the pixel count instead.)
        logits, _ = logits_and_labels()
        target = soft_target(logits.shape)
        weights = torch.tensor([0.2, 1.0, 3.0, 0.5], dtype=torch.float64).view(1, -1, 1, 1)
        weighted = weights * target
        expected = (weighted * -logits.log_softmax(1)).sum(dim=(1, 2, 3)) / weighted.sum(dim=(1, 2, 3))
        torch.testing.assert_close(
            cross_entropy(logits, target, class_weights=weights.flatten(), reduction="none"), expected
        )

    def test_one_hot_dense_equals_labels_with_weights(self):
        logits, labels = logits_and_labels()
        one_hot = F.one_hot(labels, 4).movedim(-1, 1).double()
        weights = [0.2, 1.0, 3.0, 0.5]
        torch.testing.assert_close(
            cross_entropy(logits, one_hot, class_weights=weights, reduction="none"),
            cross_entropy(logits, labels, class_weights=weights, reduction="none"),
        )

    def test_weighted_per_pixel_terms(self):
        # Pixel term w_y * CE * P / sum_n w_y: its image mean is the weighted mean.
        logits, labels = logits_and_labels()
        weights = torch.tensor([0.2, 1.0, 3.0, 0.5], dtype=torch.float64)
        pixel_weights = weights[labels]
        ce = F.cross_entropy(logits, labels, reduction="none")
        pixels = labels[0].numel()
        expected = pixel_weights * ce * pixels / pixel_weights.sum(dim=(1, 2), keepdim=True)
        torch.testing.assert_close(cross_entropy_per_pixel(logits, labels, class_weights=weights), expected)

    def test_binary_is_bce(self):
        logits, _ = logits_and_labels((3, 1, 6, 7))
        labels = torch.randint(0, 2, (3, 6, 7), generator=torch.Generator().manual_seed(1))
        expected = F.binary_cross_entropy_with_logits(logits, labels.unsqueeze(1).double())
        torch.testing.assert_close(cross_entropy(logits, labels), expected)
        torch.testing.assert_close(cross_entropy(logits, labels.unsqueeze(1).double(), mode="binary"), expected)

    def test_binary_ignore_index(self):
        logits, _ = logits_and_labels((3, 1, 6, 7))
        labels = torch.randint(0, 2, (3, 6, 7), generator=torch.Generator().manual_seed(1))
        labels, ignored = with_ignored_pixels(labels)
        bce = F.binary_cross_entropy_with_logits(logits[:, 0], labels.clamp_max(1).double(), reduction="none")
        counted = (~ignored).double()
        expected = (bce * counted).sum(dim=(1, 2)) / counted.sum(dim=(1, 2))
        torch.testing.assert_close(cross_entropy(logits, labels, ignore_index=IGNORE, reduction="none"), expected)

    def test_multilabel_is_channel_mean_bce_with_channel_weights(self):
        logits, _ = logits_and_labels((3, 4, 6, 7))
        target = torch.randint(0, 2, logits.shape, generator=torch.Generator().manual_seed(2)).double()
        weights = torch.tensor([0.5, 1.0, 2.0, 0.0], dtype=torch.float64)
        torch.testing.assert_close(
            cross_entropy(logits, target, mode="multilabel"), F.binary_cross_entropy_with_logits(logits, target)
        )
        torch.testing.assert_close(
            cross_entropy(logits, target, mode="multilabel", class_weights=weights),
            F.binary_cross_entropy_with_logits(logits, target, weight=weights.view(1, -1, 1, 1)),
        )

    def test_stable_for_extreme_logits_in_float32(self):
        logits = torch.tensor([[[[200.0, -200.0]], [[-200.0, 200.0]]]], requires_grad=True)
        labels = torch.tensor([[[1, 1]]])
        value = cross_entropy(logits, labels)
        assert value.item() == pytest.approx(200.0, rel=1e-6)
        value.backward()
        assert torch.isfinite(logits.grad).all()

    def test_module_stores_options(self):
        module = CrossEntropyLoss(class_weights=[1.0, 2.0, 1.0, 1.0], ignore_index=IGNORE)
        logits, labels = logits_and_labels()
        labels, _ = with_ignored_pixels(labels)
        torch.testing.assert_close(module(logits, labels), cross_entropy(logits, labels, **module.options))


# --------------------------------------------------------------------------- TopK cross-entropy


def naive_topk_ce(ce_values, kept_fraction, valid=None):
    """Mean of the ceil(k * N) largest values over the counted entries, by a full sort. k * N is rounded
    to 9 decimals first, so that 0.3 * 100 (30.000000000000004 in floating point) keeps 30."""
    values = ce_values.flatten() if valid is None else ce_values[valid]
    keep = max(1, math.ceil(round(kept_fraction * values.numel(), 9)))
    return values.sort(descending=True).values[:keep].mean()


def nnunet_topk_ce(logits, labels, k_percent=10.0, weight=None):
    """nnU-Net's TopKLoss (nnunet/training/loss_functions/TopK_loss.py), written from its source:
    unreduced (weighted) CE over the whole batch, ``torch.topk`` of ``int(num_voxels * k / 100)``, mean."""
    values = F.cross_entropy(logits, labels, weight=weight, reduction="none")
    num_voxels = values.numel()
    return values.view(-1).topk(int(num_voxels * k_percent / 100), sorted=False).values.mean()


class TestTopKCrossEntropy:
    def test_batch_mode_matches_full_sort(self):
        logits, labels = logits_and_labels()
        ce = F.cross_entropy(logits, labels, reduction="none")
        for fraction in (0.1, 0.26, 0.5, 1.0):
            torch.testing.assert_close(topk_cross_entropy(logits, labels, k=fraction), naive_topk_ce(ce, fraction))

    def test_batch_mode_per_image_values_are_shares_of_the_batch_loss(self):
        logits, labels = logits_and_labels()
        ce = F.cross_entropy(logits, labels, reduction="none")
        keep = math.ceil(0.26 * ce.numel())
        threshold = ce.flatten().sort(descending=True).values[keep - 1]
        selected = ce >= threshold
        expected = logits.shape[0] * (ce * selected).sum(dim=(1, 2)) / keep
        torch.testing.assert_close(topk_cross_entropy(logits, labels, k=0.26, reduction="none"), expected)

    def test_per_image_mode_matches_full_sort_per_image(self):
        logits, labels = logits_and_labels()
        ce = F.cross_entropy(logits, labels, reduction="none")
        for fraction in (0.1, 0.26, 1.0):
            expected = torch.stack([naive_topk_ce(ce[i], fraction) for i in range(ce.shape[0])])
            torch.testing.assert_close(
                topk_cross_entropy(logits, labels, k=fraction, batch=False, reduction="none"), expected
            )

    @pytest.mark.parametrize("batch", [True, False])
    def test_ignored_pixels_are_not_ranked(self, batch):
        logits, labels = logits_and_labels()
        labels, ignored = with_ignored_pixels(labels)
        # Make the ignored pixels the "hardest" ones: a ranking that saw them would pick them.
        logits = logits.masked_fill(ignored.unsqueeze(1) & (torch.arange(4).view(1, 4, 1, 1) == 0), 50.0)
        ce = F.cross_entropy(logits, labels.clamp_max(3), reduction="none")
        if batch:
            expected = naive_topk_ce(ce, 0.2, ~ignored)
            torch.testing.assert_close(topk_cross_entropy(logits, labels, k=0.2, ignore_index=IGNORE), expected)
        else:
            expected = torch.stack([naive_topk_ce(ce[i], 0.2, ~ignored[i]) for i in range(ce.shape[0])])
            torch.testing.assert_close(
                topk_cross_entropy(logits, labels, k=0.2, batch=False, ignore_index=IGNORE, reduction="none"), expected
            )

    def test_matches_nnunet_where_the_kept_count_is_an_integer(self):
        # nnU-Net keeps int(N * k / 100) (floor), we keep ceil(k * N); they agree when k * N is an integer.
        logits, labels = logits_and_labels((2, 3, 10, 10))  # N = 200, k = 10% -> 20 pixels
        torch.testing.assert_close(topk_cross_entropy(logits, labels, k=0.1), nnunet_topk_ce(logits, labels))
        weights = torch.tensor([0.5, 2.0, 1.0], dtype=torch.float64)
        torch.testing.assert_close(
            topk_cross_entropy(logits, labels, k=0.1, class_weights=weights),
            nnunet_topk_ce(logits, labels, weight=weights),
        )

    def test_kept_count_rounds_up_unlike_nnunet(self):
        logits, labels = logits_and_labels((1, 3, 5, 5))  # N = 25, k = 10%: we keep 3, nnU-Net keeps 2
        ce = F.cross_entropy(logits, labels, reduction="none").flatten().sort(descending=True).values
        torch.testing.assert_close(topk_cross_entropy(logits, labels, k=0.1), ce[:3].mean())
        torch.testing.assert_close(nnunet_topk_ce(logits, labels), ce[:2].mean())

    @pytest.mark.parametrize("fraction, pixels, kept", [(0.3, 100, 30), (0.6, 25, 15), (0.15, 100, 15), (0.1, 30, 3)])
    def test_kept_count_is_exact_where_float_rounding_overshoots(self, fraction, pixels, kept):
        # In floating point 0.3 * 100 = 30.000000000000004 (and 30.0000019 in float32): a bare ceil keeps 31.
        logits, labels = logits_and_labels((1, 3, 1, pixels))
        ce = F.cross_entropy(logits, labels, reduction="none").flatten().sort(descending=True).values
        torch.testing.assert_close(topk_cross_entropy(logits, labels, k=fraction), ce[:kept].mean())

    def test_full_fraction_is_cross_entropy(self):
        logits, labels = logits_and_labels()
        torch.testing.assert_close(
            topk_cross_entropy(logits, labels, k=1.0, batch=False, reduction="none"),
            cross_entropy(logits, labels, reduction="none"),
        )

    def test_tiny_fraction_keeps_one_pixel(self):
        logits, labels = logits_and_labels()
        ce = F.cross_entropy(logits, labels, reduction="none")
        torch.testing.assert_close(topk_cross_entropy(logits, labels, k=1e-9), ce.max())

    def test_gradient_only_on_selected_pixels(self):
        logits, labels = logits_and_labels()
        logits.requires_grad_(True)
        topk_cross_entropy(logits, labels, k=0.1).backward()
        reference = logits.detach().clone().requires_grad_(True)
        naive_topk_ce(F.cross_entropy(reference, labels, reduction="none"), 0.1).backward()
        torch.testing.assert_close(logits.grad, reference.grad)
        touched = (logits.grad != 0).any(dim=1)
        assert touched.sum().item() == math.ceil(0.1 * labels.numel())

    def test_ties_give_the_common_value(self):
        logits = torch.zeros(2, 3, 4, 4, dtype=torch.float64)
        labels = torch.randint(0, 3, (2, 4, 4), generator=torch.Generator().manual_seed(0))
        assert topk_cross_entropy(logits, labels, k=0.3).item() == pytest.approx(math.log(3.0), rel=1e-12)

    def test_binary_and_multilabel_rank_channel_mean_bce(self):
        logits, _ = logits_and_labels((2, 3, 5, 6))
        target = torch.randint(0, 2, logits.shape, generator=torch.Generator().manual_seed(4)).double()
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(dim=1)
        torch.testing.assert_close(
            topk_cross_entropy(logits, target, k=0.25, mode="multilabel"), naive_topk_ce(bce, 0.25)
        )
        binary_target = target[:, :1]
        binary_bce = F.binary_cross_entropy_with_logits(logits[:, :1], binary_target, reduction="none")
        torch.testing.assert_close(
            topk_cross_entropy(logits[:, :1], binary_target, k=0.25), naive_topk_ce(binary_bce, 0.25)
        )

    def test_per_pixel_terms_average_to_per_image(self):
        logits, labels = logits_and_labels()
        labels, ignored = with_ignored_pixels(labels)
        for batch in (True, False):
            per_pixel = topk_cross_entropy_per_pixel(logits, labels, k=0.2, batch=batch, ignore_index=IGNORE)
            assert (per_pixel[ignored] == 0).all()
            counted = (~ignored).sum(dim=(1, 2))
            torch.testing.assert_close(
                per_pixel.sum(dim=(1, 2)) / counted,
                topk_cross_entropy(logits, labels, k=0.2, batch=batch, ignore_index=IGNORE, reduction="none"),
            )

    @settings(max_examples=40, deadline=None)
    @given(
        batch_size=st.integers(1, 3),
        height=st.integers(1, 6),
        width=st.integers(1, 7),
        fraction=st.floats(0.01, 1.0),
        ignored_fraction=st.sampled_from([0.0, 0.3, 0.9]),
        batch=st.booleans(),
        seed=st.integers(0, 2**16),
    )
    def test_matches_full_sort_on_random_problems(
        self, batch_size, height, width, fraction, ignored_fraction, batch, seed
    ):
        logits, labels = logits_and_labels((batch_size, 3, height, width), seed=seed)
        labels, ignored = with_ignored_pixels(labels, seed=seed + 1, fraction=ignored_fraction)
        ce = F.cross_entropy(logits, labels.masked_fill(ignored, 0), reduction="none")
        ours = topk_cross_entropy(logits, labels, k=fraction, batch=batch, ignore_index=IGNORE, reduction="none")
        if batch:
            expected = naive_topk_ce(ce, fraction, ~ignored) if (~ignored).any() else ce.new_zeros(())
            torch.testing.assert_close(ours.mean(), expected)
        else:
            expected = [
                naive_topk_ce(ce[i], fraction, ~ignored[i]) if (~ignored[i]).any() else ce.new_zeros(())
                for i in range(batch_size)
            ]
            torch.testing.assert_close(ours, torch.stack(expected))

    @pytest.mark.parametrize("bad_k", [0.0, -0.1, 1.5, float("nan")])
    def test_bad_k(self, bad_k):
        logits, labels = logits_and_labels()
        with pytest.raises(ValueError, match="`k`"):
            TopKCrossEntropyLoss(k=bad_k)
        with pytest.raises(ValueError, match="`k`"):
            topk_cross_entropy(logits, labels, k=bad_k)

    def test_bad_batch_flag(self):
        with pytest.raises(TypeError, match="`batch`"):
            TopKCrossEntropyLoss(batch=1)


# --------------------------------------------------------------------------- focal


class TestFocal:
    def test_hand_derived_single_pixel(self):
        # p_true = 3/4, gamma = 2: (1/4)^2 * -log(3/4).
        logits = torch.tensor([[[[0.0]], [[math.log(3.0)]]]], dtype=torch.float64)
        labels = torch.tensor([[[1]]])
        expected = 0.25**2 * -math.log(0.75)
        assert focal_loss(logits, labels).item() == pytest.approx(expected, rel=1e-12)
        assert focal_loss(logits, labels, alpha=[1.0, 0.3]).item() == pytest.approx(0.3 * expected, rel=1e-12)

    @pytest.mark.parametrize("mode, channels", [("multiclass", 4), ("binary", 1), ("multilabel", 4)])
    def test_gamma_zero_is_cross_entropy(self, mode, channels):
        logits, labels = logits_and_labels((2, channels, 5, 6))
        target = labels if mode == "multiclass" else (logits.detach() > 0.3).double()
        torch.testing.assert_close(
            focal_loss(logits, target, gamma=0.0, mode=mode, reduction="none"),
            cross_entropy(logits, target, mode=mode, reduction="none"),
        )

    @pytest.mark.parametrize("alpha", [None, 0.25])
    @pytest.mark.parametrize("shape", [(2, 4, 6, 7), (2, 3, 3, 4, 5)], ids=["2d", "3d"])
    def test_softmax_is_monai_times_classes(self, alpha, shape):
        # MONAI averages over the C channels too; ours sums over classes (one term per pixel for one-hot targets).
        # MONAI's focal loss computes in float32 whatever the input dtype, so the comparison is in float32.
        logits, labels = logits_and_labels(shape, dtype=torch.float32)
        monai = MonaiFocalLoss(use_softmax=True, to_onehot_y=True, gamma=2.0, alpha=alpha)
        expected = shape[1] * monai(logits, labels.unsqueeze(1))
        torch.testing.assert_close(focal_loss(logits, labels, alpha=alpha), expected)

    @pytest.mark.parametrize("alpha", [None, 0.25, 0.8])
    @pytest.mark.parametrize("mode, channels", [("binary", 1), ("multilabel", 3)])
    def test_sigmoid_equals_monai(self, alpha, mode, channels):
        logits, _ = logits_and_labels((2, channels, 6, 7), dtype=torch.float32)
        target = torch.randint(0, 2, logits.shape, generator=torch.Generator().manual_seed(9)).float()
        monai = MonaiFocalLoss(use_softmax=False, gamma=2.0, alpha=alpha)
        torch.testing.assert_close(focal_loss(logits, target, alpha=alpha, mode=mode), monai(logits, target))

    def test_softmax_matches_kornia_per_pixel(self):
        # kornia's "none" reduction keeps the class axis; its sum over classes is our per-pixel value.
        logits, labels = logits_and_labels()
        expected = kornia_focal(logits, labels, alpha=0.25, gamma=2.0, reduction="none").sum(dim=1)
        torch.testing.assert_close(focal_loss_per_pixel(logits, labels, alpha=0.25), expected)
        expected_mean = logits.shape[1] * kornia_focal(logits, labels, alpha=None, gamma=1.5, reduction="mean")
        torch.testing.assert_close(focal_loss(logits, labels, gamma=1.5), expected_mean)

    @pytest.mark.parametrize("alpha", [None, 0.25])
    def test_sigmoid_matches_kornia(self, alpha):
        logits, _ = logits_and_labels((2, 3, 6, 7))
        target = torch.randint(0, 2, logits.shape, generator=torch.Generator().manual_seed(9)).double()
        expected = kornia_binary_focal(logits, target, alpha=alpha, gamma=2.0, reduction="mean")
        torch.testing.assert_close(focal_loss(logits, target, alpha=alpha, mode="multilabel"), expected)

    def test_alpha_vector_in_multiclass(self):
        logits, labels = logits_and_labels()
        alpha = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
        log_p = logits.log_softmax(dim=1).gather(1, labels.unsqueeze(1)).squeeze(1)
        expected = (alpha[labels] * (1 - log_p.exp()) ** 2 * -log_p).mean(dim=(1, 2))
        torch.testing.assert_close(focal_loss(logits, labels, alpha=alpha, reduction="none"), expected)

    def test_ignore_index(self):
        logits, labels = logits_and_labels()
        labels, ignored = with_ignored_pixels(labels)
        log_p = logits.log_softmax(dim=1).gather(1, labels.clamp_max(3).unsqueeze(1)).squeeze(1)
        terms = (1 - log_p.exp()) ** 2 * -log_p * (~ignored)
        expected = terms.sum(dim=(1, 2)) / (~ignored).sum(dim=(1, 2))
        torch.testing.assert_close(focal_loss(logits, labels, ignore_index=IGNORE, reduction="none"), expected)

    def test_fractional_gamma_has_finite_gradient_at_saturation(self):
        logits = torch.tensor([[[[40.0, 0.0]], [[-40.0, 0.0]]]], requires_grad=True)
        labels = torch.tensor([[[0, 1]]])
        focal_loss(logits, labels, gamma=0.5).backward()
        assert torch.isfinite(logits.grad).all()

    def test_bad_options(self):
        logits, labels = logits_and_labels((1, 1, 3, 3))
        with pytest.raises(ValueError, match="`gamma`"):
            FocalLoss(gamma=-1.0)
        with pytest.raises(ValueError, match="`alpha`"):
            focal_loss(logits, labels.clamp_max(1), alpha=1.5)
        with pytest.raises(ValueError, match="`alpha`"):
            focal_loss(logits, labels.clamp_max(1), alpha=[2.0])
        with pytest.raises(ValueError, match="`alpha`"):
            focal_loss(*logits_and_labels(), alpha=[0.5, 0.5])


# --------------------------------------------------------------------------- label smoothing, pos_weight (torch)


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
@pytest.mark.parametrize("weighted", [False, True])
def test_label_smoothing_matches_torch(smoothing, weighted):
    """Per image (B = 1: our weighted mean is per image, torch's over the batch), labels and one-hot alike."""
    from seglosses import CrossEntropyLoss, cross_entropy

    logits, labels = logits_and_labels(shape=(1, 4, 6, 7))
    weights = torch.tensor([0.5, 1.0, 2.0, 1.5], dtype=torch.float64) if weighted else None
    expected = F.cross_entropy(logits, labels, weight=weights, label_smoothing=smoothing)
    dense = F.one_hot(labels, 4).movedim(-1, 1).double()
    for target in (labels, dense):
        torch.testing.assert_close(cross_entropy(logits, target, class_weights=weights, label_smoothing=smoothing),
                                   expected)
    loss = CrossEntropyLoss(class_weights=weights, label_smoothing=smoothing)
    torch.testing.assert_close(loss.per_pixel(logits, labels).mean(), expected)
    batch_logits, batch_labels = logits_and_labels()  # unweighted: per image and batch means agree
    torch.testing.assert_close(cross_entropy(batch_logits, batch_labels, label_smoothing=smoothing),
                               F.cross_entropy(batch_logits, batch_labels, label_smoothing=smoothing))


@pytest.mark.parametrize("mode, channels", [("binary", 1), ("multilabel", 3)])
def test_pos_weight_and_bce_smoothing_match_torch(mode, channels):
    from seglosses import cross_entropy

    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(2, channels, 5, 6, generator=generator, dtype=torch.float64)
    target = torch.randint(0, 2, (2, channels, 5, 6), generator=generator).double()
    pos_weight = torch.tensor([3.0, 0.5, 1.0][:channels], dtype=torch.float64)
    expected = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight.view(-1, 1, 1))(logits, target)
    torch.testing.assert_close(cross_entropy(logits, target, mode=mode, pos_weight=pos_weight), expected)
    scalar = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor(2.0, dtype=torch.float64))(logits, target)
    torch.testing.assert_close(cross_entropy(logits, target, mode=mode, pos_weight=2.0), scalar)
    smoothed = F.binary_cross_entropy_with_logits(logits, target * 0.8 + 0.1)  # (1 - e) t + e / 2, e = 0.2
    torch.testing.assert_close(cross_entropy(logits, target, mode=mode, label_smoothing=0.2), smoothed)


@pytest.mark.parametrize("mode, channels", [("binary", 1), ("multilabel", 3), ("multiclass", 3)])
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_fused_mean_and_sum_agree_with_the_per_image_path(mode, channels, smoothing, device):
    # "mean"/"sum" take one fused kernel over the batch; "none" goes through the per-pixel map.
    from seglosses import cross_entropy

    generator = torch.Generator().manual_seed(5)
    logits = torch.randn(3, channels, 7, 6, generator=generator, dtype=torch.float64).to(device)
    if mode == "multiclass":  # soft class probabilities
        target = torch.rand(3, channels, 7, 6, generator=generator, dtype=torch.float64).softmax(dim=1).to(device)
    else:
        target = torch.randint(0, 2, (3, channels, 7, 6), generator=generator).double().to(device)
    per_image = cross_entropy(logits, target, mode=mode, label_smoothing=smoothing, reduction="none")
    torch.testing.assert_close(cross_entropy(logits, target, mode=mode, label_smoothing=smoothing), per_image.mean())
    torch.testing.assert_close(
        cross_entropy(logits, target, mode=mode, label_smoothing=smoothing, reduction="sum"), per_image.sum()
    )


def test_cross_entropy_options_are_checked_at_construction():
    from seglosses import CrossEntropyLoss

    with pytest.raises(ValueError, match="^Expected `label_smoothing`"):
        CrossEntropyLoss(label_smoothing=1.5)
    with pytest.raises(ValueError, match="^Expected `pos_weight`"):
        CrossEntropyLoss(mode="multiclass", pos_weight=2.0)
    with pytest.raises(ValueError, match="^Expected `pos_weight`"):
        CrossEntropyLoss(pos_weight=[1.0, -1.0])
    logits, labels = logits_and_labels()
    with pytest.raises(ValueError, match="^Expected `pos_weight`"):
        CrossEntropyLoss(pos_weight=2.0)(logits, labels)  # inferred multiclass at the call
