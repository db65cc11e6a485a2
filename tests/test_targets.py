"""``prepare`` and the Prepared bundle: label forms, dense targets, ignore masks, mode inference,
dtypes, and every error path (each names its argument in backticks)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from seglosses import prepare, value_checks
from seglosses.targets import compute_dtype, infer_mode, one_hot

IGNORE = 255


def logits_and_labels(channels=3, spatial=(4, 5), batch=2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn((batch, channels, *spatial), generator=generator)
    labels = torch.randint(0, max(channels, 2), (batch, *spatial), generator=generator)
    return logits, labels


def dense(labels, channels):
    return F.one_hot(labels, channels).movedim(-1, 1).float()


# --------------------------------------------------------------------------- label forms


@pytest.mark.parametrize("spatial", [(4, 5), (2, 3, 4)], ids=["2d", "3d"])
def test_labels_become_one_hot(spatial):
    logits, labels = logits_and_labels(spatial=spatial)
    prepared = prepare(logits, labels)
    assert prepared.mode == "multiclass"
    torch.testing.assert_close(prepared.target, dense(labels, 3))
    assert prepared.valid is None
    assert torch.equal(prepared.labels, labels)
    assert prepared.num_classes == 3
    assert prepared.spatial_dims == tuple(range(2, 2 + len(spatial)))
    assert prepared.pixel_dims == tuple(range(1, 1 + len(spatial)))


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8, torch.int16])
def test_integer_label_dtypes(dtype):
    logits, labels = logits_and_labels()
    prepared = prepare(logits, labels.to(dtype))
    assert prepared.labels.dtype == torch.int64
    torch.testing.assert_close(prepared.target, dense(labels, 3))


def test_channel_axis_labels_equal_plain_labels():
    logits, labels = logits_and_labels()
    plain, channel = prepare(logits, labels), prepare(logits, labels.unsqueeze(1))
    torch.testing.assert_close(channel.target, plain.target)
    assert torch.equal(channel.labels, plain.labels)


def test_dense_one_hot_equals_labels_but_keeps_no_labels():
    logits, labels = logits_and_labels()
    prepared = prepare(logits, dense(labels, 3))
    torch.testing.assert_close(prepared.target, dense(labels, 3))
    assert prepared.labels is None and prepared.valid is None


def test_soft_dense_target_is_kept_and_cast_to_logits_dtype():
    logits, _ = logits_and_labels()
    soft = torch.rand(logits.shape, dtype=torch.float64).softmax(dim=1)
    prepared = prepare(logits, soft)
    assert prepared.target.dtype == torch.float32
    torch.testing.assert_close(prepared.target, soft.float())


def test_binary_labels_and_dense_forms():
    logits, labels = logits_and_labels(channels=1)
    from_labels = prepare(logits, labels)
    assert from_labels.mode == "binary" and from_labels.labels is None
    torch.testing.assert_close(from_labels.target, labels.unsqueeze(1).float())
    for form in (labels.unsqueeze(1), labels.unsqueeze(1).float(), labels.unsqueeze(1).bool()):
        torch.testing.assert_close(prepare(logits, form).target, from_labels.target)


def test_multilabel_takes_dense_targets():
    logits, _ = logits_and_labels()
    target = (torch.rand(logits.shape) > 0.5).float()
    prepared = prepare(logits, target, mode="multilabel")
    assert prepared.mode == "multilabel"
    torch.testing.assert_close(prepared.target, target)
    torch.testing.assert_close(prepared.probs(), logits.sigmoid())


# --------------------------------------------------------------------------- ignore_index


def test_ignored_labels_are_masked():
    logits, labels = logits_and_labels()
    ignored = torch.zeros_like(labels, dtype=torch.bool)
    ignored[0, 0, :3] = ignored[1, 2, 1] = True
    prepared = prepare(logits, labels.masked_fill(ignored, IGNORE), ignore_index=IGNORE)
    torch.testing.assert_close(prepared.valid, (~ignored).float())
    assert (prepared.target[ignored.unsqueeze(1).expand_as(prepared.target)] == 0).all()
    assert (prepared.labels[ignored] == 0).all()
    torch.testing.assert_close(prepared.valid_count(), (~ignored).sum(dim=(1, 2)).float())
    assert torch.equal(prepared.valid_bool(), ~ignored)


def test_negative_ignore_index_and_binary_ignore():
    logits, labels = logits_and_labels(channels=1)
    labels[0, 0, 0] = -100
    prepared = prepare(logits, labels, ignore_index=-100)
    assert prepared.valid[0, 0, 0] == 0 and prepared.valid.sum() == labels.numel() - 1


def test_ignored_pixel_in_any_dense_channel():
    logits, labels = logits_and_labels()
    target = dense(labels, 3)
    target[0, 2, 1, 1] = IGNORE
    prepared = prepare(logits, target, ignore_index=IGNORE)
    assert prepared.valid[0, 1, 1] == 0 and prepared.valid.sum() == labels.numel() - 1
    assert (prepared.target[0, :, 1, 1] == 0).all()


def test_ignore_index_that_is_a_valid_dense_value_is_refused():
    """For a dense target, an ignore_index in [0, 1] is also a target value: with ignore_index=0 every
    pixel of a one-hot target has a channel equal to it, so every pixel would be silently ignored (the
    loss becomes 0). The same option with labels ignores only the background. It must be refused."""
    logits, labels = logits_and_labels()
    for ignore_index in (0, 1):
        with pytest.raises(ValueError, match="`ignore_index`"):
            prepare(logits, dense(labels, 3), ignore_index=ignore_index)


def test_out_of_range_values_are_allowed_only_at_ignored_pixels():
    logits, labels = logits_and_labels()
    labels[0, 0, 0] = IGNORE
    prepare(logits, labels, ignore_index=IGNORE)
    with pytest.raises(ValueError, match="`target`"):
        prepare(logits, labels)
    with pytest.raises(ValueError, match="`target`"):
        prepare(logits, labels, ignore_index=254)


# --------------------------------------------------------------------------- modes and dtypes


def test_mode_inference():
    assert infer_mode(1) == "binary"
    assert infer_mode(2) == infer_mode(5) == "multiclass"
    assert infer_mode(4, "multilabel") == "multilabel"
    assert infer_mode(1, "multilabel") == "multilabel"
    with pytest.raises(ValueError, match="`mode`"):
        infer_mode(3, "softmax")
    with pytest.raises(ValueError, match="`logits`"):
        infer_mode(3, "binary")
    with pytest.raises(ValueError, match="`logits`"):
        infer_mode(1, "multiclass")


def test_probabilities_follow_the_mode():
    logits, labels = logits_and_labels()
    multiclass = prepare(logits, labels)
    torch.testing.assert_close(multiclass.probs(), logits.softmax(dim=1))
    torch.testing.assert_close(multiclass.log_probs(), logits.log_softmax(dim=1))
    binary = prepare(logits[:, :1], labels.clamp_max(1))
    torch.testing.assert_close(binary.probs(), logits[:, :1].sigmoid())
    torch.testing.assert_close(binary.log_probs(), F.logsigmoid(logits[:, :1]))


@pytest.mark.parametrize(
    "dtype, expected",
    [
        (torch.float16, torch.float32),
        (torch.bfloat16, torch.float32),
        (torch.float32, torch.float32),
        (torch.float64, torch.float64),
    ],
)
def test_half_precision_is_upcast(dtype, expected):
    logits, labels = logits_and_labels()
    assert compute_dtype(logits.to(dtype)) == expected
    prepared = prepare(logits.to(dtype), labels)
    assert prepared.logits.dtype == prepared.target.dtype == expected


def test_image_mean_and_mask():
    logits, labels = logits_and_labels()
    labels[1] = IGNORE  # an image with no counted pixel
    labels[0, 0, 0] = IGNORE
    prepared = prepare(logits, labels, ignore_index=IGNORE)
    per_pixel = torch.ones(labels.shape)
    torch.testing.assert_close(prepared.image_mean(per_pixel), torch.tensor([1.0, 0.0]))
    masked = prepared.mask(torch.ones(logits.shape))
    assert masked[1].sum() == 0 and masked[0, :, 0, 0].sum() == 0


def test_one_hot_helper():
    labels = torch.tensor([[0, 2, 1]])
    expected = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]]])
    torch.testing.assert_close(one_hot(labels, 3), expected)


# --------------------------------------------------------------------------- error paths


def _bad_calls():
    logits, labels = logits_and_labels()
    nan_logits = logits.clone()
    nan_logits[0, 0, 0, 0] = float("nan")
    inf_logits = logits.clone()
    inf_logits[1, 2, 3, 4] = float("inf")
    soft = dense(labels, 3)
    yield "logits not a tensor", dict(logits=logits.tolist(), target=labels), TypeError, "logits"
    yield "integer logits", dict(logits=logits.long(), target=labels), TypeError, "logits"
    yield "logits 3-d", dict(logits=logits[:, :, 0], target=labels[:, 0]), ValueError, "logits"
    yield "logits 6-d", dict(logits=logits[..., None, None], target=labels), ValueError, "logits"
    yield "empty logits", dict(logits=logits[:, :, :0], target=labels[:, :0]), ValueError, "logits"
    yield "nan logits", dict(logits=nan_logits, target=labels), ValueError, "logits"
    yield "inf logits", dict(logits=inf_logits, target=labels), ValueError, "logits"
    yield "nan logits dense", dict(logits=nan_logits, target=soft), ValueError, "logits"
    yield "target not a tensor", dict(logits=logits, target=labels.tolist()), TypeError, "target"
    yield "fractional float labels", dict(logits=logits, target=labels.float() + 0.5), ValueError, "target"
    yield "nan float labels", dict(logits=logits, target=labels.float().fill_(float("nan"))), ValueError, "target"
    yield "inf float labels", dict(logits=logits, target=labels.float().fill_(float("inf"))), ValueError, "target"
    yield "float labels out of range", dict(logits=logits, target=labels.float() + 3), ValueError, "target"
    yield "fractional channel labels", dict(logits=logits, target=labels.float().unsqueeze(1) / 3), ValueError, "target"
    multi_hot = (soft + soft.roll(1, 1)).clamp_max(1)
    yield "multi-hot without mode", dict(logits=logits, target=multi_hot), ValueError, "target"
    yield "complex dense", dict(logits=logits, target=torch.complex(soft, soft)), TypeError, "target"
    yield "label too large", dict(logits=logits, target=labels.clamp_max(0) + 3), ValueError, "target"
    yield "negative label", dict(logits=logits, target=labels.clamp_max(0) - 1), ValueError, "target"
    yield "binary label 2", dict(logits=logits[:, :1], target=labels.clamp_min(2)), ValueError, "target"
    yield "dense above 1", dict(logits=logits, target=2 * soft), ValueError, "target"
    yield "dense below 0", dict(logits=logits, target=-soft), ValueError, "target"
    yield "labels shape", dict(logits=logits, target=labels[:, :-1]), ValueError, "target"
    yield "labels batch", dict(logits=logits, target=labels[:1]), ValueError, "target"
    yield "dense shape", dict(logits=logits, target=soft[:, :2]), ValueError, "target"
    yield "target 1-d", dict(logits=logits, target=labels.flatten()), ValueError, "target"
    yield "target device", dict(logits=logits, target=labels.to("meta")), ValueError, "target"
    yield "multilabel labels", dict(logits=logits, target=labels, mode="multilabel"), ValueError, "target"
    yield "unknown mode", dict(logits=logits, target=labels, mode="softmax"), ValueError, "mode"
    yield "binary mode with 3 channels", dict(logits=logits, target=labels, mode="binary"), ValueError, "logits"
    yield "bool ignore_index", dict(logits=logits, target=labels, ignore_index=True), TypeError, "ignore_index"
    yield "float ignore_index", dict(logits=logits, target=labels, ignore_index=255.0), TypeError, "ignore_index"


BAD_CALLS = list(_bad_calls())


@pytest.mark.parametrize("call, error, argument", [c[1:] for c in BAD_CALLS], ids=[c[0] for c in BAD_CALLS])
def test_bad_input_names_the_argument(call, error, argument):
    with pytest.raises(error, match=rf"^Expected `{argument}` to be .*, but got .*\.$"):
        prepare(call.pop("logits"), call.pop("target"), **call)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
@pytest.mark.parametrize("channel_axis", [False, True])
def test_whole_number_float_labels_equal_integer_labels(dtype, channel_axis):
    """MONAI's LoadImaged yields float label maps: whole values read as the integer labels."""
    logits, labels = logits_and_labels()
    labels[0, 0, 0] = IGNORE
    float_labels = labels.to(dtype).unsqueeze(1) if channel_axis else labels.to(dtype)
    from_float = prepare(logits, float_labels, ignore_index=IGNORE)
    from_int = prepare(logits, labels, ignore_index=IGNORE)
    assert torch.equal(from_float.labels, from_int.labels)
    torch.testing.assert_close(from_float.valid, from_int.valid)
    binary = prepare(logits[:, :1], (labels % 2).to(dtype))
    torch.testing.assert_close(binary.target, (labels % 2).unsqueeze(1).float())


def test_fractional_float_labels_name_the_soft_target_form():
    logits, labels = logits_and_labels()
    with pytest.raises(ValueError, match="whole-number values.*dense \\(B, C, \\*S\\)"):
        prepare(logits, labels.float() / 2 + 0.25)


def test_multi_hot_target_without_mode_points_to_multilabel():
    """Overlapping regions with C > 1 and no mode would silently be read as softmax classes."""
    logits, labels = logits_and_labels()
    multi_hot = dense(labels, 3)
    multi_hot[:, 0] = 1.0  # channel 0 overlaps every other region
    with pytest.raises(ValueError, match="mode='multilabel'"):
        prepare(logits, multi_hot)
    assert prepare(logits, multi_hot, mode="multilabel").mode == "multilabel"
    assert prepare(logits, multi_hot, mode="multiclass").mode == "multiclass"  # the caller said so
    soft = torch.rand(logits.shape).softmax(dim=1).half()  # soft labels summing to one, rounded
    assert prepare(logits, soft).mode == "multiclass"
    ignored = multi_hot.clone()
    ignored[:, :, 0, 0] = IGNORE  # ignored pixels are not summed
    ignored[:, 0] = dense(labels, 3)[:, 0]
    ignored[:, :, 0, 0] = IGNORE
    assert prepare(logits, ignored, ignore_index=IGNORE).valid[:, 0, 0].eq(0).all()


def test_value_checks_can_be_switched_off():
    logits, labels = logits_and_labels()
    logits[0, 0, 0, 0] = float("nan")
    with value_checks(False):
        prepared = prepare(logits, labels)  # no host-device sync, no check
    assert torch.isnan(prepared.logits).any()
    with pytest.raises(ValueError, match="`logits`"):
        prepare(logits, labels)
    with pytest.raises(TypeError, match="`enabled`"):
        with value_checks(1):
            pass
