"""A tiny synthetic dataset that follows the runner's sample contract (tests only)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import Dataset


class Discs(Dataset):
    """``count`` images (1, size, size) of noisy discs; masks label the disc 1 (and, with 3 classes,
    its inner half 2)."""

    def __init__(self, count: int, size: int = 32, num_classes: int = 2, seed: int = 0, prefix: str = "case"):
        generator = torch.Generator().manual_seed(seed)
        ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
        self.samples = []
        for index in range(count):
            centre = torch.rand(2, generator=generator) * size * 0.5 + size * 0.25
            radius = size * (0.15 + 0.15 * torch.rand((), generator=generator))
            distance = ((ys - centre[0]) ** 2 + (xs - centre[1]) ** 2).sqrt()
            mask = (distance < radius).long()
            if num_classes > 2:
                mask[distance < radius / 2] = 2
            image = mask.float()[None] + 0.5 * torch.randn(1, size, size, generator=generator)
            self.samples.append({"image": image, "mask": mask, "clean_mask": mask.clone(), "index": index,
                                 "case_id": f"{prefix}{index:03d}", "slice_index": -1})

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        return dict(self.samples[index])


@dataclass
class Splits:
    train: Dataset
    val: Dataset
    test: Dataset
    num_classes: int
    in_channels: int
    class_names: list
    spatial_dims: int
    eval_unit: str


class Slices(Discs):
    """Discs as the slices of ``count // depth`` volumes (ACDC-style evaluation units)."""

    def __init__(self, count: int, size: int, num_classes: int, seed: int, depth: int = 2):
        super().__init__(count, size, num_classes, seed)
        for position, sample in enumerate(self.samples):
            sample["case_id"], sample["slice_index"] = f"volume{position // depth}", position % depth


def disc_splits(train: int = 8, val: int = 4, test: int = 4, size: int = 32, num_classes: int = 2,
                eval_unit: str = "image") -> Splits:
    names = ["background", "disc", "core"][:num_classes]
    held_out = Slices if eval_unit == "volume" else Discs
    return Splits(Discs(train, size, num_classes, seed=0), held_out(val, size, num_classes, seed=1),
                  held_out(test, size, num_classes, seed=2), num_classes, 1, names, 2, eval_unit)
