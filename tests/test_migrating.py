"""Every row of docs/migrating.md: the peer's number and the seglosses call that gives it.

MONAI, kornia and PyTorch are called themselves. segmentation_models_pytorch cannot be installed
here (it pulls in torchvision) and nnU-Net is not installed: their documented code is written out
below as naive references (``smp_*``, ``nnunet_*``), each a line-for-line transcription.
"""

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from seglosses import (
    CrossEntropyLoss,
    DeepSupervision,
    DiceCELoss,
    DiceFocalLoss,
    DiceLoss,
    FocalLoss,
    GeneralizedDiceLoss,
    JaccardLoss,
    LovaszLoss,
    TopKCrossEntropyLoss,
    TverskyLoss,
    create_loss,
)
from seglosses.metrics import assd, dice_score, hausdorff_distance, hd95, iou_score, surface_dice

monai_losses = pytest.importorskip("monai.losses")
monai_metrics = pytest.importorskip("monai.metrics")
kornia_losses = pytest.importorskip("kornia.losses")

DOC = Path(__file__).resolve().parents[1] / "docs" / "migrating.md"
C = 4


def inputs(shape=(2, C, 10, 10), seed=0):
    generator = torch.Generator().manual_seed(seed)
    logits = 2 * torch.randn(shape, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=generator)
    assert (F.one_hot(labels, shape[1]).sum(dim=tuple(range(labels.ndim))) > 0).all()  # every class present
    return logits, labels


def onehot(labels, classes=C):
    return F.one_hot(labels, classes).movedim(-1, 1).double()


def multihot(shape=(2, 3, 10, 10), seed=1):
    return torch.randint(0, 2, shape, generator=torch.Generator().manual_seed(seed)).double()


def close(actual, expected, rtol=1e-6, atol=1e-7):
    torch.testing.assert_close(actual.double(), expected.double(), rtol=rtol, atol=atol, equal_nan=True)


# --------------------------------------------------------------------------- naive references (not installed)


def smp_dice(logits, labels, smooth=0.0, eps=1e-7):
    """segmentation_models_pytorch DiceLoss(mode="multiclass", from_logits=True): dims (0, 2), absent classes zeroed."""
    batch, classes = logits.shape[:2]
    probs = logits.log_softmax(dim=1).exp().view(batch, classes, -1)
    target = F.one_hot(labels.view(batch, -1), classes).permute(0, 2, 1).to(probs.dtype)
    intersection = torch.sum(probs * target, dim=(0, 2))
    cardinality = torch.sum(probs + target, dim=(0, 2))
    score = (2.0 * intersection + smooth) / (cardinality + smooth).clamp_min(eps)
    loss = (1.0 - score) * (target.sum(dim=(0, 2)) > 0).to(score.dtype)
    return loss.mean()


def smp_jaccard(logits, labels, smooth=0.0, eps=1e-7):
    batch, classes = logits.shape[:2]
    probs = logits.log_softmax(dim=1).exp().view(batch, classes, -1)
    target = F.one_hot(labels.view(batch, -1), classes).permute(0, 2, 1).to(probs.dtype)
    intersection = torch.sum(probs * target, dim=(0, 2))
    union = torch.sum(probs + target, dim=(0, 2)) - intersection
    score = (intersection + smooth) / (union + smooth).clamp_min(eps)
    return ((1.0 - score) * (target.sum(dim=(0, 2)) > 0).to(score.dtype)).mean()


def smp_tversky(logits, labels, alpha, beta, gamma=1.0, smooth=0.0, eps=1e-7):
    batch, classes = logits.shape[:2]
    probs = logits.log_softmax(dim=1).exp().view(batch, classes, -1)
    target = F.one_hot(labels.view(batch, -1), classes).permute(0, 2, 1).to(probs.dtype)
    intersection = torch.sum(probs * target, dim=(0, 2))
    fps = torch.sum(probs * (1.0 - target), dim=(0, 2))
    fns = torch.sum((1 - probs) * target, dim=(0, 2))
    score = (intersection + smooth) / (intersection + alpha * fps + beta * fns + smooth).clamp_min(eps)
    return (((1.0 - score) ** gamma) * (target.sum(dim=(0, 2)) > 0).to(score.dtype)).mean()


def smp_focal(logits, labels, gamma):
    """SMP FocalLoss(mode="multiclass"): focal_loss_with_logits (sigmoid) of each class channel, summed."""
    loss = 0
    for cls in range(logits.shape[1]):
        target = (labels == cls).to(logits.dtype)
        logpt = F.binary_cross_entropy_with_logits(logits[:, cls], target, reduction="none")
        pt = torch.exp(-logpt)
        loss = loss + ((1.0 - pt).pow(gamma) * logpt).mean()
    return loss


def smp_soft_ce(logits, labels, smooth_factor):
    """SMP SoftCrossEntropyLoss -> label_smoothed_nll_loss(log_softmax, target, epsilon, dim=1), mean."""
    lprobs = F.log_softmax(logits, dim=1)
    target = labels.unsqueeze(1)
    nll_loss = -lprobs.gather(dim=1, index=target)
    smooth_loss = -lprobs.sum(dim=1, keepdim=True)
    eps_i = smooth_factor / lprobs.size(1)
    return (1.0 - smooth_factor) * nll_loss.mean() + eps_i * smooth_loss.mean()


def smp_soft_bce(logits, target, smooth_factor, pos_weight):
    soft_targets = (1 - target) * smooth_factor + target * (1 - smooth_factor)
    return F.binary_cross_entropy_with_logits(logits, soft_targets, pos_weight=pos_weight)


def nnunet_soft_dice(logits, labels, batch_dice, smooth=1e-5):
    """nnU-Net v2 SoftDiceLoss(apply_nonlin=softmax, batch_dice, do_bg=False, smooth): returns -dc."""
    x = logits.softmax(dim=1)
    y = onehot(labels, logits.shape[1])
    axes = [0, *range(2, x.ndim)] if batch_dice else list(range(2, x.ndim))
    tp, fp, fn = (x * y).sum(axes), (x * (1 - y)).sum(axes), ((1 - x) * y).sum(axes)
    dc = (2 * tp + smooth) / torch.clip(2 * tp + fp + fn + smooth, 1e-8)
    dc = dc[1:] if batch_dice else dc[:, 1:]
    return -dc.mean()


def nnunet_topk(logits, labels, k=10):
    values = F.cross_entropy(logits, labels, reduction="none")
    kept = int(values.numel() * k / 100)
    return torch.topk(values.view((-1,)), kept, sorted=False)[0].mean()


def nnunet_weights(levels):
    weights = torch.tensor([1 / (2**i) for i in range(levels)], dtype=torch.float64)
    weights[-1] = 0
    return weights / weights.sum()


# --------------------------------------------------------------------------- the rows


def monai_dice():
    logits, labels = inputs()
    for squared in (True, False):
        for batch in (False, True):
            for include_background in (True, False):
                peer = monai_losses.DiceLoss(softmax=True, to_onehot_y=True, squared_pred=squared, batch=batch,
                                             include_background=include_background, smooth_nr=1e-4, smooth_dr=1e-4)
                ours = DiceLoss(squared=squared, batch=batch, include_background=include_background, eps=1e-4)
                close(ours(logits, labels), peer(logits, labels.unsqueeze(1)))


def monai_dice_sigmoid():
    logits, _ = inputs((2, 3, 10, 10))
    target = multihot()
    peer = monai_losses.DiceLoss(sigmoid=True)(logits, target)
    close(DiceLoss(mode="multilabel", squared=False)(logits, target), peer)


def monai_dice_weight():
    logits, labels = inputs()
    weights = torch.tensor([0.5, 1.0, 1.5, 1.0], dtype=torch.float64)  # sums to C
    peer = monai_losses.DiceLoss(softmax=True, weight=weights)(logits, onehot(labels))
    close(DiceLoss(squared=False, class_weights=weights)(logits, onehot(labels)), peer)


def monai_dice_soft():
    logits, _ = inputs()
    soft = torch.rand(logits.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64).softmax(1)
    peer = monai_losses.DiceLoss(softmax=True, soft_label=True)(logits, soft)
    close(DiceLoss(squared=False, soft_label=True)(logits, soft), peer)


def monai_jaccard():
    logits, labels = inputs()
    peer = monai_losses.DiceLoss(softmax=True, jaccard=True, smooth_nr=2e-5, smooth_dr=2e-5)(logits, onehot(labels))
    close(JaccardLoss(eps=1e-5)(logits, onehot(labels)), peer)
    assert type(create_loss("iou")) is JaccardLoss


def monai_gdl():
    logits, labels = inputs()
    for w_type in ("square", "simple", "uniform"):
        peer = monai_losses.GeneralizedDiceLoss(softmax=True, to_onehot_y=True, w_type=w_type)
        close(GeneralizedDiceLoss(w_type=w_type)(logits, labels), peer(logits, labels.unsqueeze(1)), rtol=1e-5)


def monai_tversky():
    logits, labels = inputs()
    peer = monai_losses.TverskyLoss(softmax=True, alpha=0.3, beta=0.7)(logits, onehot(labels))
    close(TverskyLoss(fp_weight=0.3, fn_weight=0.7)(logits, onehot(labels)), peer)


def monai_focal_softmax():
    logits, labels = inputs()
    peer = monai_losses.FocalLoss(use_softmax=True, to_onehot_y=True, gamma=2.0)(logits.float(), labels.unsqueeze(1))
    close(FocalLoss(gamma=2.0)(logits, labels) / C, peer, rtol=1e-5, atol=1e-6)  # MONAI computes in float32


def monai_focal_sigmoid():
    logits, _ = inputs((2, 3, 10, 10))
    target = multihot()
    peer = monai_losses.FocalLoss(gamma=2.0, alpha=0.25)(logits.float(), target.float())
    close(FocalLoss(mode="multilabel", gamma=2.0, alpha=0.25)(logits, target), peer, rtol=1e-5, atol=1e-6)


def monai_dice_ce():
    logits, labels = inputs()
    peer = monai_losses.DiceCELoss(softmax=True, to_onehot_y=True, lambda_dice=0.7, lambda_ce=0.3)
    ours = DiceCELoss(squared=False, lambda_dice=0.7, lambda_ce=0.3)
    close(ours(logits, labels), peer(logits, labels.unsqueeze(1)))


def monai_dice_ce_weight():
    logits, labels = inputs((1, C, 10, 10))
    weights = torch.tensor([0.5, 1.0, 1.5, 1.0], dtype=torch.float64)
    peer = monai_losses.DiceCELoss(softmax=True, to_onehot_y=True, squared_pred=True, weight=weights,
                                   label_smoothing=0.1)
    ours = DiceCELoss(class_weights=weights, dice_class_weights=weights, label_smoothing=0.1)
    close(ours(logits, labels), peer(logits, labels.unsqueeze(1)), rtol=1e-6, atol=1e-7)


def monai_dice_ce_sigmoid():
    logits, _ = inputs((2, 1, 10, 10))
    target = multihot((2, 1, 10, 10))
    peer = monai_losses.DiceCELoss(sigmoid=True, weight=torch.tensor([3.0], dtype=torch.float64))(logits, target)
    close(DiceCELoss(squared=False, pos_weight=3.0)(logits, target), peer)


def monai_dice_focal():
    logits, _ = inputs((2, 3, 10, 10))
    target = multihot()
    peer = monai_losses.DiceFocalLoss(sigmoid=True, gamma=1.5)(logits, target)
    close(DiceFocalLoss(mode="multilabel", squared=False, gamma=1.5)(logits, target), peer, rtol=1e-5, atol=1e-6)


def monai_gdl_focal():
    logits, labels = inputs()
    peer = monai_losses.GeneralizedDiceFocalLoss(softmax=True, to_onehot_y=True)(logits, labels.unsqueeze(1))
    close((GeneralizedDiceLoss() + FocalLoss(mode="multilabel"))(logits, onehot(labels)), peer, rtol=1e-5, atol=1e-6)


def monai_deep_supervision():
    logits, labels = inputs((2, C, 16, 16))
    generator = torch.Generator().manual_seed(3)
    outputs = [logits, torch.randn(2, C, 8, 8, generator=generator, dtype=torch.float64),
               torch.randn(2, C, 4, 4, generator=generator, dtype=torch.float64)]
    peer = monai_losses.DeepSupervisionLoss(monai_losses.DiceLoss(softmax=True, to_onehot_y=True))
    ours = DeepSupervision(DiceLoss(squared=False), weights=[1.0, 0.5, 0.25], normalize=False)
    close(ours([o.float() for o in outputs], labels), peer([o.float() for o in outputs], labels.unsqueeze(1).float()),
          rtol=1e-5, atol=1e-6)


def _label_pair(classes=C, seed=5):
    generator = torch.Generator().manual_seed(seed)
    target = torch.zeros(2, 24, 24, dtype=torch.long)
    pred = torch.zeros_like(target)
    for cls in range(1, classes):  # one square blob per class, shifted in the prediction
        top, left = (int(v) for v in torch.randint(0, 14, (2,), generator=generator))
        target[:, top : top + 8, left : left + 8] = cls
        pred[:, top + 1 : top + 8, left : left + 9] = cls
    return pred, target


def _surface_peer(function, pred, target, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return function(onehot(pred), onehot(target), include_background=False, **options)


def monai_metric_dice():
    pred, target = _label_pair()
    peer = monai_metrics.compute_dice(onehot(pred), onehot(target), include_background=True)
    close(dice_score(pred, target, C, include_background=True), peer)
    close(dice_score(onehot(pred), onehot(target), C, include_background=True), peer)


def monai_metric_iou():
    pred, target = _label_pair()
    close(iou_score(pred, target, C, include_background=True), monai_metrics.compute_iou(onehot(pred), onehot(target)))


def monai_metric_hd95():
    pred, target = _label_pair()
    peer = _surface_peer(monai_metrics.compute_hausdorff_distance, pred, target, percentile=95)
    close(hd95(pred, target, C, hd95_mode="max"), peer, rtol=1e-5, atol=1e-5)


def monai_metric_hd():
    pred, target = _label_pair()
    close(hausdorff_distance(pred, target, C), _surface_peer(monai_metrics.compute_hausdorff_distance, pred, target))


def monai_metric_assd():
    pred, target = _label_pair()
    peer = _surface_peer(monai_metrics.compute_average_surface_distance, pred, target, symmetric=True)
    close(assd(pred, target, C), peer, rtol=1e-5, atol=1e-5)


def monai_metric_nsd():
    pred, target = _label_pair()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peer = monai_metrics.compute_surface_dice(onehot(pred), onehot(target), class_thresholds=[1.0] * (C - 1))
    close(surface_dice(pred, target, C, tolerance=1.0), peer)


def monai_metric_multilabel():
    pred_labels, target_labels = _label_pair()
    regions = [lambda x: x > 0, lambda x: (x == 1) | (x == 3), lambda x: x == 3]  # WT, TC, ET
    pred = torch.stack([r(pred_labels) for r in regions], 1).double()
    target = torch.stack([r(target_labels) for r in regions], 1).double()
    close(dice_score(pred, target, 3, include_background=True), monai_metrics.compute_dice(pred, target))


def smp_dice_row():
    logits, labels = inputs()
    close(DiceLoss(squared=False, batch=True, eps=1e-5)(logits, labels), smp_dice(logits, labels, smooth=1e-5))


def smp_jaccard_row():
    logits, labels = inputs()
    close(JaccardLoss(batch=True, eps=1e-5)(logits, labels), smp_jaccard(logits, labels, smooth=1e-5))


def smp_tversky_row():
    logits, labels = inputs()
    close(TverskyLoss(fp_weight=0.3, fn_weight=0.7, batch=True, eps=1e-5)(logits, labels),
          smp_tversky(logits, labels, 0.3, 0.7, smooth=1e-5))


def smp_focal_row():
    logits, labels = inputs()
    close(C * FocalLoss(mode="multilabel", gamma=2.0)(logits, onehot(labels)), smp_focal(logits, labels, 2.0))


def smp_soft_ce_row():
    logits, labels = inputs()
    close(CrossEntropyLoss(label_smoothing=0.1)(logits, labels), smp_soft_ce(logits, labels, 0.1))


def smp_soft_bce_row():
    logits, _ = inputs((2, 1, 10, 10))
    target = multihot((2, 1, 10, 10))
    pos_weight = torch.tensor([2.0], dtype=torch.float64)
    ours = CrossEntropyLoss(mode="binary", label_smoothing=0.2, pos_weight=pos_weight)(logits, target)
    close(ours, smp_soft_bce(logits, target, 0.1, pos_weight.view(1, 1, 1)))


def kornia_dice():
    logits, labels = inputs()
    close(DiceLoss(squared=False, average="micro", eps=1e-8)(logits, labels), kornia_losses.dice_loss(logits, labels))


def kornia_dice_macro():
    logits, labels = inputs()
    close(DiceLoss(squared=False, eps=1e-6)(logits, labels),
          kornia_losses.dice_loss(logits, labels, average="macro", eps=1e-6))


def kornia_tversky():
    logits, labels = inputs()
    close(TverskyLoss(fp_weight=0.4, fn_weight=0.6, eps=1e-6)(logits, labels),
          kornia_losses.tversky_loss(logits, labels, alpha=0.4, beta=0.6, eps=1e-6))


def kornia_focal():
    logits, labels = inputs()
    peer = kornia_losses.focal_loss(logits, labels, alpha=None, gamma=1.5, reduction="mean")
    close(FocalLoss(gamma=1.5)(logits, labels) / C, peer)


def kornia_lovasz():
    logits, labels = inputs()
    close(LovaszLoss(classes="all")(logits, labels), kornia_losses.lovasz_softmax_loss(logits, labels))


def nnunet_soft_dice_row():
    logits, labels = inputs()
    for batch in (False, True):
        ours = DiceLoss(squared=False, batch=batch, include_background=False)(logits, labels) - 1
        close(ours, nnunet_soft_dice(logits, labels, batch))


def nnunet_dc_ce_row():
    logits, labels = inputs()
    for batch in (False, True):
        expected = F.cross_entropy(logits, labels) + nnunet_soft_dice(logits, labels, batch)
        close(DiceCELoss(squared=False, batch=batch, include_background=False)(logits, labels) - 1, expected)


def nnunet_topk_row():
    logits, labels = inputs()  # 2 x 10 x 10 = 200 pixels: 10 % is 20, whole
    assert math.isclose(200 * 0.1, 20)
    close(TopKCrossEntropyLoss(k=0.1)(logits, labels), nnunet_topk(logits, labels))


def nnunet_deep_supervision_row():
    logits, labels = inputs((2, C, 16, 16))
    generator = torch.Generator().manual_seed(4)
    outputs = [logits] + [torch.randn(2, C, s, s, generator=generator, dtype=torch.float64) for s in (8, 4, 2)]
    weights = nnunet_weights(4)
    targets = [labels[:, 2**i // 2 :: 2**i, 2**i // 2 :: 2**i] if i else labels for i in range(4)]
    expected = sum(w * DiceLoss()(o, t) for w, o, t in zip(weights, outputs, targets, strict=True))
    close(DeepSupervision(DiceLoss())(outputs, labels), expected)


ROWS = {
    "monai-dice": monai_dice,
    "monai-dice-sigmoid": monai_dice_sigmoid,
    "monai-dice-weight": monai_dice_weight,
    "monai-dice-soft": monai_dice_soft,
    "monai-jaccard": monai_jaccard,
    "monai-gdl": monai_gdl,
    "monai-tversky": monai_tversky,
    "monai-focal-softmax": monai_focal_softmax,
    "monai-focal-sigmoid": monai_focal_sigmoid,
    "monai-dice-ce": monai_dice_ce,
    "monai-dice-ce-weight": monai_dice_ce_weight,
    "monai-dice-ce-sigmoid": monai_dice_ce_sigmoid,
    "monai-dice-focal": monai_dice_focal,
    "monai-gdl-focal": monai_gdl_focal,
    "monai-deep-supervision": monai_deep_supervision,
    "monai-metric-dice": monai_metric_dice,
    "monai-metric-iou": monai_metric_iou,
    "monai-metric-hd95": monai_metric_hd95,
    "monai-metric-hd": monai_metric_hd,
    "monai-metric-assd": monai_metric_assd,
    "monai-metric-nsd": monai_metric_nsd,
    "monai-metric-multilabel": monai_metric_multilabel,
    "smp-dice": smp_dice_row,
    "smp-jaccard": smp_jaccard_row,
    "smp-tversky": smp_tversky_row,
    "smp-focal": smp_focal_row,
    "smp-soft-ce": smp_soft_ce_row,
    "smp-soft-bce": smp_soft_bce_row,
    "kornia-dice": kornia_dice,
    "kornia-dice-macro": kornia_dice_macro,
    "kornia-tversky": kornia_tversky,
    "kornia-focal": kornia_focal,
    "kornia-lovasz": kornia_lovasz,
    "nnunet-soft-dice": nnunet_soft_dice_row,
    "nnunet-dc-ce": nnunet_dc_ce_row,
    "nnunet-topk": nnunet_topk_row,
    "nnunet-deep-supervision": nnunet_deep_supervision_row,
}


def documented_rows() -> list[str]:
    return re.findall(r"^\| `([a-z0-9-]+)` \|", DOC.read_text(), flags=re.MULTILINE)


def test_every_documented_row_has_a_check_and_no_check_is_undocumented():
    rows = documented_rows()
    assert len(rows) == len(set(rows)), "duplicate row ids in docs/migrating.md"
    assert set(rows) == set(ROWS)


@pytest.mark.parametrize("row", list(ROWS))
def test_row(row):
    ROWS[row]()
