"""Annotation audit: the training images the envelope ranked hardest and the annotated pixels it excluded.

The envelope's pixel selection (``TopKBottomSigma.export_keep_mask``) drops the pixels whose loss is
far above the rest of their image; under annotation noise those should be the pixels the noise
changed. :func:`audit_run` runs the final model of a training run over its training split, keeps
the hardest images by the envelope's ledger, draws an overlay sheet (image, annotation as trained,
excluded pixels) and, where the clean mask is known (simulated noise), measures with
:func:`exclusion_hit_rates` how precisely the excluded pixels hit the pixels the noise changed.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seglosses._checks import fail

__all__ = ["AuditResult", "HitRates", "audit_run", "draw_audit_sheet", "exclusion_hit_rates"]


@dataclass(frozen=True)
class HitRates:
    """How the excluded pixels overlap the pixels the noise changed (counts over all given pixels).

    ``precision`` = hits / excluded and ``recall`` = hits / changed; NaN (never a silent 0) when the
    denominator is 0, with the counts alongside so a reader sees why. ``chance_precision`` is the
    fraction of changed pixels among all counted pixels: the precision of excluding at random.
    """

    precision: float
    recall: float
    excluded: int
    changed: int
    hits: int
    counted: int
    chance_precision: float


def _as_array(name: str, value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return value
    fail(name, "a numpy array or torch tensor", type(value).__name__, TypeError)


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else math.nan


def exclusion_hit_rates(excluded: Any, noisy_mask: Any, clean_mask: Any, valid: Any = None) -> HitRates:
    """Precision and recall with which ``excluded`` pixels hit the pixels where ``noisy_mask != clean_mask``.

    Args:
        excluded: (*S) or (B, *S) bool, the annotated pixels the envelope excluded.
        noisy_mask: integer labels of the same shape, the annotation the model was trained on.
        clean_mask: integer labels of the same shape, the annotation before the noise.
        valid: optional bool mask of the same shape; pixels outside it are not counted.

    Returns:
        :class:`HitRates` pooled over every counted pixel.

    Example:
        >>> clean = np.zeros((4, 4), dtype=np.int64); clean[1:3, 1:3] = 1
        >>> noisy = clean.copy(); noisy[1, 1] = 0; noisy[0, 0] = 1          # two pixels changed
        >>> excluded = np.zeros((4, 4), dtype=bool); excluded[1, 1] = excluded[3, 3] = True
        >>> rates = exclusion_hit_rates(excluded, noisy, clean)
        >>> rates.precision, rates.recall, rates.hits
        (0.5, 0.5, 1)
    """
    excluded = _as_array("excluded", excluded)
    noisy_mask = _as_array("noisy_mask", noisy_mask)
    clean_mask = _as_array("clean_mask", clean_mask)
    if excluded.dtype != np.bool_:
        fail("excluded", "a bool mask", f"dtype {excluded.dtype}", TypeError)
    for name, array in (("noisy_mask", noisy_mask), ("clean_mask", clean_mask)):
        if array.shape != excluded.shape:
            fail(name, f"of the shape of `excluded` {excluded.shape}", f"shape {array.shape}")
    counted = np.ones_like(excluded) if valid is None else _as_array("valid", valid).astype(bool)
    if counted.shape != excluded.shape:
        fail("valid", f"of the shape of `excluded` {excluded.shape}", f"shape {counted.shape}")
    changed = (noisy_mask != clean_mask) & counted
    excluded = excluded & counted
    hits = int((excluded & changed).sum())
    n_excluded, n_changed, n_counted = int(excluded.sum()), int(changed.sum()), int(counted.sum())
    return HitRates(precision=_ratio(hits, n_excluded), recall=_ratio(hits, n_changed), excluded=n_excluded,
                    changed=n_changed, hits=hits, counted=n_counted, chance_precision=_ratio(n_changed, n_counted))


def draw_audit_sheet(cases: list[dict[str, Any]], path: str | Path, title: str) -> Path:
    """Draw one row per case: image, annotation as trained, excluded pixels (and the noise, when known).

    Args:
        cases: dicts with ``image`` (H, W) float, ``mask`` (H, W) int (the annotation trained on),
            ``excluded`` (H, W) bool, ``label`` (a row title), optional ``clean_mask`` (H, W) int.
        path: the PNG to write.
        title: the sheet's title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    with_clean = any(case.get("clean_mask") is not None for case in cases)
    columns = 4 if with_clean else 3
    figure, axes = plt.subplots(len(cases), columns, figsize=(3.2 * columns, 2.5 * len(cases) + 0.8), squeeze=False)
    red = ListedColormap([(0, 0, 0, 0), (1.0, 0.15, 0.1, 0.85)])
    cyan = ListedColormap([(0, 0, 0, 0), (0.1, 0.9, 1.0, 0.45)])
    yellow = ListedColormap([(0, 0, 0, 0), (1.0, 0.85, 0.0, 0.8)])
    for row, case in zip(axes, cases, strict=False):
        image = case["image"]
        for axis in row:
            axis.imshow(image, cmap="gray")
            axis.set_xticks([])
            axis.set_yticks([])
        row[0].set_ylabel(case["label"], fontsize=8)
        row[1].imshow(case["mask"] > 0, cmap=cyan, interpolation="nearest")
        row[1].contour(case["mask"] > 0, levels=[0.5], colors="cyan", linewidths=0.8)
        row[2].contour(case["mask"] > 0, levels=[0.5], colors="cyan", linewidths=0.8)
        row[2].imshow(case["excluded"], cmap=red, interpolation="nearest")
        if with_clean and case.get("clean_mask") is not None:
            changed = case["mask"] != case["clean_mask"]
            row[3].contour(case["clean_mask"] > 0, levels=[0.5], colors="lime", linewidths=0.8)
            row[3].imshow(changed, cmap=yellow, interpolation="nearest")
            row[3].imshow(case["excluded"] & changed, cmap=red, interpolation="nearest")
    headings = ["image", "annotation trained on", "excluded pixels (red)", "noise-changed (yellow), hit (red)"]
    for axis, heading in zip(axes[0], headings, strict=False):
        axis.set_title(heading, fontsize=9)
    legend = [Patch(color="cyan", label="annotation"), Patch(color=(1.0, 0.15, 0.1), label="excluded by the envelope")]
    if with_clean:
        legend += [Patch(color="lime", label="clean mask outline"),
                   Patch(color=(1.0, 0.85, 0.0), label="changed by noise")]
    figure.legend(handles=legend, loc="lower center", ncol=len(legend), fontsize=8, frameon=False)
    figure.suptitle(title, fontsize=11)
    figure.tight_layout(rect=(0, 0.04, 1, 0.97))
    path = Path(path)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


@dataclass(frozen=True)
class AuditResult:
    """What :func:`audit_run` wrote and measured."""

    sheet: Path
    table: Path
    summary: Path
    hit_rates: HitRates | None
    hardest: list[dict[str, Any]]


def audit_run(run_dir: str | Path, num_images: int = 8, out_dir: str | Path | None = None) -> AuditResult:
    """Audit a finished run: its ``num_images`` hardest training images and the pixels the envelope excluded.

    The final model (``last.pt``) and its envelope rank and select as at the end of training. Writes
    ``audit.png`` (the overlay sheet), ``audit.csv`` (one row per training image, hardest first:
    ledger loss, rank, excluded pixels and, with simulated noise, the pixels the noise changed and
    the hits) and ``audit.json`` (the pooled precision and recall) into ``out_dir`` (default:
    ``<run_dir>/audit``).

    Raises:
        ValueError: the run was trained without the envelope (nothing was ranked or excluded).
    """
    from seglosses.lab.data import build_splits
    from seglosses.lab.train import load_run, predict

    run_dir = Path(run_dir)
    run = load_run(run_dir, which="last")
    envelope = _envelope_of(run, run_dir)
    out = Path(out_dir) if out_dir is not None else run_dir / "audit"
    out.mkdir(parents=True, exist_ok=True)
    train_set = build_splits(run.config.data).train
    noise_on = str(run.config.data.noise.level) != "none"

    ledger = envelope.ledger.detach().cpu().double().numpy()
    hardest_first = np.argsort(-ledger, kind="stable")
    rank = np.empty(len(ledger), dtype=np.int64)  # 0 = easiest, as the envelope counts
    rank[np.argsort(ledger, kind="stable")] = np.arange(len(ledger))
    drawn = {int(index): position for position, index in enumerate(hardest_first[:num_images])}
    rows, cases, pooled_parts = [], [None] * len(drawn), []
    for batch in predict(run.model, train_set, return_logits=True):
        keep = envelope.export_keep_mask(batch["logits"], batch["mask"])
        for row, index in enumerate(batch["index"].tolist()):
            excluded = ~keep[row].numpy()
            noisy, clean = batch["mask"][row].numpy(), batch["clean_mask"][row].numpy()
            rates = exclusion_hit_rates(excluded, noisy, clean)
            pooled_parts.append((excluded, noisy, clean))
            rows.append({"index": index, "case_id": batch["case_id"][row], "ledger_loss": float(ledger[index]),
                         "rank": int(rank[index]), "excluded_pixels": rates.excluded,
                         "noise_changed_pixels": rates.changed, "hits": rates.hits})
            if index in drawn:
                cases[drawn[index]] = {
                    "image": batch["image"][row, 0].numpy(), "mask": noisy, "excluded": excluded,
                    "clean_mask": clean if noise_on else None,
                    "label": f"{batch['case_id'][row]}\nrank {rank[index] + 1} of {len(ledger)}\n"
                             f"loss {ledger[index]:.3f}"}
    pooled = None
    if noise_on:
        pooled = exclusion_hit_rates(*(np.concatenate([part[i].ravel() for part in pooled_parts]) for i in range(3)))
    title = f"Annotation audit of {run_dir}: the {len(drawn)} training images the envelope ranked hardest"
    if pooled is not None:
        title += (f"\nexcluded pixels hit the pixels the noise changed with precision {pooled.precision:.2f} "
                  f"(chance {pooled.chance_precision:.2f}) and recall {pooled.recall:.2f}")
    sheet = draw_audit_sheet([case for case in cases if case is not None], out / "audit.png", title)
    rows.sort(key=lambda row: -row["ledger_loss"])
    table = out / "audit.csv"
    with open(table, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    summary = out / "audit.json"
    summary.write_text(json.dumps({"run": str(run_dir), "noise": str(run.config.data.noise.level),
                                   "hit_rates": asdict(pooled) if pooled is not None else None,
                                   "hardest": rows[:num_images]}, indent=2))
    return AuditResult(sheet=sheet, table=table, summary=summary, hit_rates=pooled, hardest=rows[:num_images])


def _envelope_of(run: Any, run_dir: Path) -> Any:
    from seglosses.envelope import TopKBottomSigma

    envelope = getattr(run, "envelope", None)
    if not isinstance(envelope, TopKBottomSigma):
        raise ValueError(f"Expected `run` to be a run trained with the envelope (TopKBottomSigma), but got "
                         f"{run_dir}, trained without the envelope: there are no ranks or excluded pixels to audit. "
                         f"Train with an envelope preset (for example --set envelope.preset=paper_best).")
    return envelope
