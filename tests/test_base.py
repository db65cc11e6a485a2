"""The base Loss (reduction, mode checks, the three granularities) and Weighted composition."""

from __future__ import annotations

from typing import ClassVar

import pytest
import torch

from seglosses import Loss, reduce_images
from seglosses.compound import Weighted
from seglosses.pixel import CrossEntropyLoss, FocalLoss
from seglosses.region import DiceLoss
from seglosses.targets import prepare


class WorstPixelLoss(Loss):
    """A loss with no per-pixel form (the largest pixel CE of each image); multiclass only."""

    modes: ClassVar[tuple[str, ...]] = ("multiclass",)

    def __init__(self, *, reduction: str = "mean") -> None:
        super().__init__(reduction)

    def per_image(self, logits, target):
        self.check_mode(logits)
        prepared = prepare(logits, target)
        return (-(prepared.target * prepared.log_probs()).sum(dim=1)).flatten(1).amax(dim=1)


def inputs(channels=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn((2, channels, 5, 6), generator=generator, dtype=torch.float64)
    labels = torch.randint(0, max(channels, 2), (2, 5, 6), generator=generator)
    return logits, labels


# --------------------------------------------------------------------------- reduction and base


def test_reduce_images():
    values = torch.tensor([1.0, 2.0, 6.0])
    assert reduce_images(values, "mean").item() == 3.0
    assert reduce_images(values, "sum").item() == 9.0
    assert reduce_images(values, "none") is values
    with pytest.raises(ValueError, match=r"Expected `reduction` to be one of \['mean', 'sum', 'none'\], but got 'avg'"):
        reduce_images(values, "avg")


def test_base_loss_contract():
    with pytest.raises(ValueError, match="`reduction`"):
        Loss(reduction="avg")
    base = Loss(ignore_index=4, mode="binary", class_weights=None)
    assert base.ignore_index == 4 and base.mode == "binary"
    assert base.extra_repr() == "ignore_index=4, mode='binary'"  # None options are not shown
    logits, labels = inputs()
    with pytest.raises(NotImplementedError):
        base.per_image(logits, labels)
    with pytest.raises(TypeError, match="`Loss` has no per-pixel form"):
        base.per_pixel(logits, labels)


def test_forward_reduces_per_image():
    logits, labels = inputs()
    worst = WorstPixelLoss(reduction="none")
    per_image = worst(logits, labels)
    assert per_image.shape == (2,)
    assert WorstPixelLoss(reduction="sum")(logits, labels).item() == pytest.approx(per_image.sum().item())
    assert WorstPixelLoss()(logits, labels).item() == pytest.approx(per_image.mean().item())


def test_unsupported_mode_is_refused():
    logits, labels = inputs(channels=1)
    with pytest.raises(ValueError, match=r"Expected `mode` to be one of \['multiclass'\] for WorstPixelLoss"):
        WorstPixelLoss()(logits, labels)


# --------------------------------------------------------------------------- Weighted


def test_weighted_sum_by_operators():
    ce, dice = CrossEntropyLoss(), DiceLoss()
    combined = 0.3 * ce + 0.7 * dice
    assert isinstance(combined, Weighted)
    assert combined.weights == [0.3, 0.7]
    assert combined.terms[0][1] is ce and combined.terms[1][1] is dice
    logits, labels = inputs()
    expected = 0.3 * ce.per_image(logits, labels) + 0.7 * dice.per_image(logits, labels)
    torch.testing.assert_close(combined.per_image(logits, labels), expected)
    torch.testing.assert_close(combined(logits, labels), expected.mean())
    assert combined.has_per_pixel
    assert combined.extra_repr() == "0.3, 0.7"


def test_weighted_right_and_left_multiplication_and_plain_sum():
    ce, dice = CrossEntropyLoss(), DiceLoss()
    assert (ce * 2).weights == (2 * ce).weights == [2.0]
    assert (ce + dice).weights == [1.0, 1.0]


def test_weighted_nesting_flattens_sums_and_scales_weights():
    ce, dice, focal = CrossEntropyLoss(), DiceLoss(), FocalLoss()
    combined = 0.5 * (ce + dice) + focal
    assert combined.weights == [0.5, 0.5, 1.0]
    assert [loss for _, loss in combined.terms] == [ce, dice, focal]
    logits, labels = inputs()
    explicit = Weighted([(2.0, Weighted([(1.0, ce), (0.5, dice)])), (-1.0, focal)])
    expected = 2.0 * (ce.per_image(logits, labels) + 0.5 * dice.per_image(logits, labels)) - focal.per_image(
        logits, labels
    )
    torch.testing.assert_close(explicit.per_image(logits, labels), expected)
    assert explicit.has_per_pixel


def test_weighted_per_pixel_and_its_gradient():
    combined = 0.3 * CrossEntropyLoss(ignore_index=255) + 0.7 * DiceLoss(ignore_index=255)
    logits, labels = inputs()
    labels[0, 0] = 255
    counted = (labels != 255).sum(dim=(1, 2)).double()
    per_pixel = combined.per_pixel(logits, labels)
    assert (per_pixel[labels == 255] == 0).all()
    torch.testing.assert_close(per_pixel.sum(dim=(1, 2)) / counted, combined.per_image(logits, labels))
    assert combined.ignore_index == 255

    def gradient_of(function):
        z = logits.clone().requires_grad_(True)
        function(z).backward()
        return z.grad

    torch.testing.assert_close(
        gradient_of(lambda z: (combined.per_pixel(z, labels).sum(dim=(1, 2)) / counted).sum()),
        gradient_of(lambda z: combined.per_image(z, labels).sum()),
    )


def test_weighted_without_per_pixel_form():
    combined = CrossEntropyLoss() + WorstPixelLoss()
    assert not combined.has_per_pixel
    logits, labels = inputs()
    with pytest.raises(TypeError, match="WorstPixelLoss"):
        combined.per_pixel(logits, labels)
    assert torch.isfinite(combined(logits, labels))


def test_weighted_modes_are_the_common_modes():
    assert (CrossEntropyLoss() + DiceLoss()).modes == ("multiclass", "binary", "multilabel")
    assert (CrossEntropyLoss() + WorstPixelLoss()).modes == ("multiclass",)


def test_weighted_reduction():
    logits, labels = inputs()
    per_image = Weighted([(1.0, CrossEntropyLoss())], reduction="none")(logits, labels)
    assert per_image.shape == (2,)
    total = Weighted([(1.0, CrossEntropyLoss())], reduction="sum")
    torch.testing.assert_close(total(logits, labels), per_image.sum())
    assert (total * 2.0).reduction == "sum" and (total + DiceLoss()).reduction == "sum"


def test_weighted_is_a_module_holding_its_terms():
    combined = CrossEntropyLoss() + DiceLoss()
    assert len(combined.losses) == 2
    assert "losses.0" in dict(combined.named_modules())


@pytest.mark.parametrize(
    "terms, error, argument",
    [
        ([], ValueError, "terms"),
        ("ce", TypeError, "terms"),
        ([(1.0,)], TypeError, r"terms\[0\]"),
        ([("1", CrossEntropyLoss())], TypeError, r"terms\[0\] weight"),
        ([(True, CrossEntropyLoss())], TypeError, r"terms\[0\] weight"),
        ([(float("inf"), CrossEntropyLoss())], ValueError, r"terms\[0\] weight"),
        ([(1.0, CrossEntropyLoss()), (1.0, torch.nn.MSELoss())], TypeError, r"terms\[1\] loss"),
    ],
)
def test_weighted_bad_terms(terms, error, argument):
    with pytest.raises(error, match=f"`{argument}`"):
        Weighted(terms)


def test_weighted_operator_errors():
    with pytest.raises(TypeError, match="`other`"):
        CrossEntropyLoss() + 1.0
    with pytest.raises(TypeError, match="`weight`"):
        (CrossEntropyLoss() + DiceLoss()) * "2"
    with pytest.raises(TypeError, match="weight"):
        CrossEntropyLoss() * DiceLoss()


def test_sums_keep_the_terms_reduction_and_builtin_sum_works():
    per_image_sum = CrossEntropyLoss(reduction="none") + DiceLoss(reduction="none")
    assert per_image_sum.reduction == "none"
    assert (0.5 * DiceLoss(reduction="sum")).reduction == "sum"
    logits, labels = torch.randn(3, 2, 4, 4), torch.randint(0, 2, (3, 4, 4))
    assert per_image_sum(logits, labels).shape == (3,)
    total = sum([CrossEntropyLoss(), DiceLoss()])
    torch.testing.assert_close(total(logits, labels), (CrossEntropyLoss() + DiceLoss())(logits, labels))


# --------------------------------------------------------------------------- weights as tensors, division, minus


def test_tensor_weights_division_and_minus():
    logits, labels = inputs()
    dice, ce = DiceLoss(), CrossEntropyLoss()
    expected = 0.5 * dice(logits, labels) - ce(logits, labels) / 4
    combined = torch.tensor(0.5) * dice - ce / 4
    torch.testing.assert_close(combined(logits, labels), expected)
    assert combined.weights == [0.5, -0.25]
    torch.testing.assert_close((-dice)(logits, labels), -dice(logits, labels))
    torch.testing.assert_close((dice * torch.tensor(2))(logits, labels), 2 * dice(logits, labels))
    torch.testing.assert_close(((dice + ce) / torch.tensor(2.0))(logits, labels), (dice(logits, labels) + ce(
        logits, labels)) / 2)


@pytest.mark.parametrize(
    "make, error, argument",
    [
        (lambda: torch.zeros(2) * DiceLoss(), TypeError, "weight"),
        (lambda: torch.tensor(1.0, requires_grad=True) * DiceLoss(), TypeError, "weight"),
        (lambda: torch.tensor(float("nan")) * DiceLoss(), ValueError, "weight"),
        (lambda: DiceLoss() / 0, ValueError, "divisor"),
        (lambda: DiceLoss() / "2", TypeError, "divisor"),
        (lambda: DiceLoss() - 1.0, TypeError, "other"),
    ],
)
def test_weight_arithmetic_errors(make, error, argument):
    with pytest.raises(error, match=f"^Expected `{argument}` to be"):
        make()


# --------------------------------------------------------------------------- logits first, options at construction


def _registered_and_composed():
    from seglosses import create_loss, list_losses

    yield from ((name, create_loss(name)) for name in list_losses())
    yield "weighted sum", 0.5 * DiceLoss() + CrossEntropyLoss()
    yield "create_loss sum", create_loss("dice") + create_loss("focal")


ENTRY_POINTS = list(_registered_and_composed())
BAD_LOGITS = [
    ("list", [[0.0]], TypeError),
    ("0-d", torch.tensor(1.0), ValueError),
    ("1-d", torch.zeros(4), ValueError),
    ("3-d", torch.zeros(2, 3, 4), ValueError),
    ("integer", torch.zeros(2, 3, 4, 4, dtype=torch.long), TypeError),
    ("None", None, TypeError),
]


@pytest.mark.parametrize("name, loss", ENTRY_POINTS, ids=[name for name, _ in ENTRY_POINTS])
@pytest.mark.parametrize("case, logits, error", BAD_LOGITS, ids=[case for case, _, _ in BAD_LOGITS])
def test_every_entry_point_checks_logits_first(name, loss, case, logits, error):
    labels = torch.zeros(2, 4, 4, dtype=torch.long)
    for entry in (loss, loss.per_image):
        with pytest.raises(error, match=r"^Expected `logits` to be"):
            entry(logits, labels)


def _options_of_every_loss():
    from seglosses import list_losses
    from seglosses.registry import loss_options

    return [(name, option) for name in list_losses() for option in loss_options(name)]


@pytest.mark.parametrize("name, option", _options_of_every_loss())
def test_every_option_is_checked_at_construction(name, option):
    """A value of the wrong kind fails when the loss is built, naming the option, not on the first call."""
    from seglosses import create_loss

    for value in ("not-an-option-value", object()):
        with pytest.raises((TypeError, ValueError), match=f"`{option}"):
            create_loss(name, **{option: value})


@pytest.mark.parametrize(
    "options, argument",
    [
        (dict(mode="multi-class"), "mode"),
        (dict(mode="binary", class_weights=[1.0, 2.0]), "class_weights"),
        (dict(class_weights=[1.0, -1.0]), "class_weights"),
        (dict(class_weights=torch.ones(2, 2)), "class_weights"),
        (dict(class_weights=[]), "class_weights"),
        (dict(ignore_index=255.0), "ignore_index"),
        (dict(include_background="no"), "include_background"),
        (dict(eps=0.0), "eps"),
    ],
)
def test_shared_options_at_construction(options, argument):
    with pytest.raises((TypeError, ValueError), match=f"^Expected `{argument}` to be"):
        DiceLoss(**options)


def test_modes_a_loss_does_not_support_are_refused_at_construction():
    from seglosses import create_loss

    with pytest.raises(ValueError, match="`mode`"):
        create_loss("exp_log", mode="multilabel")


# --------------------------------------------------------------------------- help() shows the real options


def _documented_modules():
    from seglosses import DeepSupervision, TopKBottomSigma, list_losses, loss_class

    return [loss_class(name) for name in list_losses()] + [Weighted, DeepSupervision, TopKBottomSigma]


@pytest.mark.parametrize("cls", _documented_modules(), ids=lambda cls: cls.__name__)
def test_help_shows_the_options_not_torchs_defaults(cls):
    import inspect
    import pydoc

    text = pydoc.render_doc(cls, renderer=pydoc.plaintext)
    assert "Initialize internal Module state" not in text and "Define the computation" not in text
    init_doc = inspect.getdoc(cls.__init__)
    for option in inspect.signature(cls.__init__).parameters:
        if option != "self":
            assert option in init_doc, f"{cls.__name__}.__init__ does not describe `{option}`"
    assert "logits" in inspect.getdoc(cls.forward)


# --------------------------------------------------------------------------- value checks of a module's forward


def test_forward_on_cpu_finds_non_finite_logits_from_the_value_without_scanning_them():
    from seglosses.targets import LOGITS_CHECKED_AFTER

    seen = []

    class Probe(Loss):
        @staticmethod
        def function(logits, target, reduction="mean"):
            seen.append(LOGITS_CHECKED_AFTER.get())
            return reduce_images(prepare(logits, target).logits.mean(dim=(1, 2, 3)), reduction)

    logits, labels = inputs()
    Probe()(logits, labels)
    Probe().per_image(logits, labels)
    assert seen == [True, False] and not LOGITS_CHECKED_AFTER.get()
    for loss in (DiceLoss(), CrossEntropyLoss(ignore_index=2), 0.5 * DiceLoss() + FocalLoss()):
        for bad in (float("nan"), float("inf")):
            broken = logits.clone()
            broken[0, 1, 2, 3] = bad
            with pytest.raises(ValueError, match="^Expected `logits` to be finite"):
                loss(broken, labels)
    with pytest.raises(ValueError, match="^Expected `target` to be labels in"):  # labels are still checked first
        DiceLoss()(logits, labels + 5)
