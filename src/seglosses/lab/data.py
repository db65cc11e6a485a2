"""Datasets for the runner: HC18, FUSeg, ACDC (SSL4MIS HDF5), a folder of images and masks, NIfTI.

:func:`build_splits` turns a :class:`DataConfig` into train / validation / test datasets split by
subject (case), seeded, and writes the split (``splits.csv``) and the simulated annotation noise
(``noise.csv``) into the run folder. Every sample is a dict::

    {"image": float32 (C_in, *S), "mask": int64 (*S), "clean_mask": int64 (*S),
     "index": int, "case_id": str, "slice_index": int}

``mask`` is the noisy mask on the training split when noise is on, else equal to ``clean_mask``.
Decoded and resized arrays are cached in memory (per process, so use persistent DataLoader
workers) and optionally as ``.npy`` files in ``cache_dir``: epochs after the first never decode.
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from seglosses._checks import check_number, check_type, fail
from seglosses.lab.noise import NoiseConfig, dice_agreement, homogenise, simulate_noise

DATASET_NAMES = ("hc18", "fuseg", "acdc", "folder", "nifti")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
NIFTI_SUFFIXES = (".nii.gz", ".nii")


@dataclass
class DataConfig:
    """What to load and how to split it.

    Args:
        name: one of :data:`DATASET_NAMES`.
        root: the dataset folder. ``None``: ``$SEGLOSSES_DATA/<name>`` when that variable is set,
            else ``../shared/data/<name>`` beside the repository checkout (``folder`` and ``nifti``
            need an explicit root).
        image_size: resize every 2D image to ``(H, W)`` (bilinear with antialiasing; masks nearest).
            ``None`` keeps native sizes (then a split's images may differ in size).
        max_train, max_val, max_test: keep a seeded random subset of that many units of the split
            (images; volumes for ACDC validation and test).
        split_seed: seed of the subject split and of the subsets.
        noise: annotation noise for the training masks (:class:`~seglosses.lab.noise.NoiseConfig`).
        val_fraction, test_fraction: fractions of subjects (cases) for validation and test, where the
            dataset has no fixed split (HC18, folder, NIfTI; FUSeg's validation carve-out uses
            ``val_fraction`` of its training images).
        split_csv: ``folder``/``nifti``: a CSV with columns ``name,split`` (``split`` one of train,
            val, test; ``name`` the file stem) fixing the split instead of drawing one.
        subject_regex: ``folder``/``nifti``: a regular expression searched in the file stem whose
            first group (or whole match) is the subject id; files of one subject stay in one split.
            ``None``: every file is its own subject.
        images_dir, masks_dir: ``folder``/``nifti``: sub-folders of ``root`` holding the images and the
            masks, matched by file stem.
        num_classes: ``folder``/``nifti``: number of classes including background (default 2).
        mask_values: ``folder``/``nifti``: the pixel value of each class in the mask files, class ``c``
            being ``mask_values[c]``. ``None``: values ``0..num_classes-1``, and for two classes also
            ``255`` as foreground.
        class_names: names of the classes (defaults per dataset, else ``class0, class1, ...``).
        patch_size: ``nifti``: ``None`` serves 2D slices along ``slice_axis``; a ``(D, H, W)`` size
            serves 3D patches tiling each volume (zero-padded at the far edges), ``spatial_dims=3``.
        slice_axis: ``nifti`` 2D: the volume axis slices are taken along.
        cache_dir: also cache decoded, resized arrays as ``.npy`` files there (shared across runs).

    Example:
        >>> DataConfig("hc18", image_size=(64, 64), max_train=8).image_size
        (64, 64)
    """

    name: str = "hc18"
    root: str | None = None
    image_size: tuple[int, int] | None = None
    max_train: int | None = None
    max_val: int | None = None
    max_test: int | None = None
    split_seed: int = 0
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    split_csv: str | None = None
    subject_regex: str | None = None
    images_dir: str = "images"
    masks_dir: str = "masks"
    num_classes: int | None = None
    mask_values: tuple[int, ...] | None = None
    class_names: tuple[str, ...] | None = None
    patch_size: tuple[int, int, int] | None = None
    slice_axis: int = 2
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        check_type("name", self.name, str)
        if self.name not in DATASET_NAMES:
            close = difflib.get_close_matches(self.name, DATASET_NAMES, n=1, cutoff=0.4)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            fail("name", f"one of {list(DATASET_NAMES)}", f"{self.name!r}{hint}")
        if isinstance(self.noise, dict):  # loaded from a config file
            self.noise = NoiseConfig(**self.noise)
        check_type("noise", self.noise, NoiseConfig)
        if self.image_size is not None:
            self.image_size = _positive_ints("image_size", self.image_size, 2)
        if self.patch_size is not None:
            self.patch_size = _positive_ints("patch_size", self.patch_size, 3)
        for name in ("max_train", "max_val", "max_test"):
            value = getattr(self, name)
            if value is not None:
                check_type(name, value, int)
                if value < 1:
                    fail(name, "a positive number of samples or None", value)
        check_type("split_seed", self.split_seed, int)
        check_number("val_fraction", self.val_fraction, low=0.0, high=1.0, high_inclusive=False)
        check_number("test_fraction", self.test_fraction, low=0.0, high=1.0, high_inclusive=False)
        if self.val_fraction + self.test_fraction >= 1.0:
            fail("val_fraction + test_fraction", "below 1 (some subjects must remain for training)",
                 self.val_fraction + self.test_fraction)
        if self.num_classes is not None:
            check_type("num_classes", self.num_classes, int)
            if self.num_classes < 2:
                fail("num_classes", "at least 2 (background and one structure)", self.num_classes)
        if self.mask_values is not None:
            self.mask_values = tuple(self.mask_values)
            if len(set(self.mask_values)) != len(self.mask_values) or len(self.mask_values) < 2:
                fail("mask_values", "at least two distinct pixel values, one per class", self.mask_values)
            if self.num_classes is not None and self.num_classes != len(self.mask_values):
                fail("mask_values", f"{self.num_classes} values (num_classes)", self.mask_values)
        if self.class_names is not None:
            self.class_names = tuple(str(name) for name in self.class_names)
        if self.subject_regex is not None:
            try:
                re.compile(self.subject_regex)
            except re.error as error:
                fail("subject_regex", "a valid regular expression", f"{self.subject_regex!r} ({error})")
        check_type("slice_axis", self.slice_axis, int)


@dataclass
class DataSplits:
    """The three datasets of a run and what a model needs to know about them."""

    train: SegmentationDataset
    val: SegmentationDataset
    test: SegmentationDataset
    num_classes: int
    in_channels: int
    class_names: list[str]
    spatial_dims: int
    eval_unit: str


def _positive_ints(name: str, value: Any, length: int) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value,) * length
    if not isinstance(value, Sequence) or len(value) != length or not all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value
    ):
        fail(name, f"{length} positive integers", repr(value))
    return tuple(value)


# ---------------------------------------------------------------------------------------------
# Reading files
# ---------------------------------------------------------------------------------------------


def read_image_file(path: str | Path) -> np.ndarray:
    """Decode an image file into an array (H, W) or (H, W, C) of its own dtype.

    Raises ``ValueError`` naming the file when it is missing or cannot be decoded.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        fail("image file", "an existing file", f"{str(path)!r} (not found)")
    try:
        with Image.open(path) as image:
            if image.mode in ("P", "PA", "LA", "RGBA", "CMYK", "YCbCr", "1"):
                image = image.convert("RGB" if image.mode not in ("1", "LA") else "L")
            return np.array(image)
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        fail("image file", "a readable image", f"{str(path)!r} ({error})")
    raise AssertionError("unreachable")


def _image_to_float(pixels: np.ndarray) -> np.ndarray:
    """(H, W[, C]) -> float32 (C, H, W) scaled to [0, 1] for integer types."""
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    channels_first = np.moveaxis(pixels, -1, 0)
    if np.issubdtype(pixels.dtype, np.integer):
        return channels_first.astype(np.float32) / np.float32(np.iinfo(pixels.dtype).max)
    return channels_first.astype(np.float32)


def _mask_to_labels(values: np.ndarray, mask_values: tuple[int, ...] | None, num_classes: int,
                    path: str) -> np.ndarray:
    """Map stored mask values to class labels 0..num_classes-1; refuse values outside the label set."""
    if values.ndim == 3:  # a mask saved as RGB: all channels must agree
        if not np.all(values == values[..., :1]):
            fail("mask", "a single-channel label image", f"{path!r} (its colour channels differ)")
        values = values[..., 0]
    if mask_values is None:
        mask_values = tuple(range(num_classes))
        if num_classes == 2:
            mask_values = (0, 1, 255)  # 0/255 binary masks: 255 is foreground
    present = np.unique(values)
    unknown = sorted(set(present.tolist()) - set(mask_values))
    if unknown:
        shown = unknown[:10] + (["..."] if len(unknown) > 10 else [])
        fail("mask values", f"in the label set {list(mask_values)}", f"{shown} in {path!r}")
    lookup = {value: label for label, value in enumerate(mask_values)}
    if num_classes == 2 and len(mask_values) == 3:
        lookup[255] = 1
    labels = np.zeros(values.shape, dtype=np.int64)
    for value in present.tolist():
        labels[values == value] = lookup[value]
    return labels


def resize_pair(image: np.ndarray, mask: np.ndarray, size: tuple[int, int] | None) -> tuple[np.ndarray, np.ndarray]:
    """Resize a 2D image (C, H, W) bilinearly with antialiasing and its mask (H, W) by nearest neighbour.

    Example:
        >>> image, mask = resize_pair(np.zeros((1, 40, 60), np.float32), np.zeros((40, 60), np.int64), (20, 30))
        >>> image.shape, mask.shape
        ((1, 20, 30), (20, 30))
    """
    if size is None or tuple(image.shape[-2:]) == tuple(size):
        return image, mask
    image_t = torch.from_numpy(np.ascontiguousarray(image))[None]
    mask_t = torch.from_numpy(np.ascontiguousarray(mask))[None, None].float()
    image_t = torch.nn.functional.interpolate(image_t, size=size, mode="bilinear", align_corners=False, antialias=True)
    mask_t = torch.nn.functional.interpolate(mask_t, size=size, mode="nearest-exact")
    return image_t[0].numpy(), mask_t[0, 0].round().to(torch.int64).numpy()


@dataclass(frozen=True)
class SampleRef:
    """Where one sample comes from: its files and, inside a volume, its slice or patch."""

    name: str  # unique within the dataset: file stem, or volume name plus slice / patch
    case_id: str  # the subject or case: splits never separate samples of one case
    image_path: str
    mask_path: str
    slice_index: int = -1  # position of a 2D slice in its volume; -1 for plain images
    patch_origin: tuple[int, ...] | None = None  # 3D patches: corner of the patch in the volume


class PairedFileReader:
    """Reads an image file and its mask file (PNG/JPEG/TIFF), checks they match, maps mask values."""

    def __init__(self, num_classes: int, in_channels: int, mask_values: tuple[int, ...] | None = None):
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.mask_values = mask_values

    def read(self, ref: SampleRef) -> tuple[np.ndarray, np.ndarray]:
        image = _image_to_float(read_image_file(ref.image_path))
        if image.shape[0] != self.in_channels:
            image = _match_channels(image, self.in_channels, ref.image_path)
        mask = _mask_to_labels(read_image_file(ref.mask_path), self.mask_values, self.num_classes, ref.mask_path)
        if image.shape[1:] != mask.shape:
            fail("image and mask sizes", "equal",
                 f"{image.shape[1:]} for {ref.image_path!r} and {mask.shape} for {ref.mask_path!r}")
        return image, mask


def _match_channels(image: np.ndarray, in_channels: int, path: str) -> np.ndarray:
    """Grey images in an RGB dataset are repeated to 3 channels; anything else is refused."""
    if image.shape[0] == 1 and in_channels == 3:
        return np.repeat(image, 3, axis=0)
    if image.shape[0] == 3 and in_channels == 1:
        return image.mean(axis=0, keepdims=True)
    fail("image channels", f"{in_channels} (as the dataset's first image)", f"{image.shape[0]} in {path!r}")
    raise AssertionError("unreachable")


# ---------------------------------------------------------------------------------------------
# The dataset
# ---------------------------------------------------------------------------------------------


@dataclass
class NoiseRecord:
    """What the noise simulator did to one training mask."""

    operations: str
    dice_noisy_clean: float


class SegmentationDataset(Dataset):
    """A list of samples read through ``reader``, resized, cached and (training split) corrupted.

    Args:
        refs: the samples, in index order.
        reader: an object with ``read(ref) -> (image float32 (C, *S), mask int64 (*S))``.
        num_classes: classes including background.
        image_size: 2D resize target, or ``None``.
        noise: mask noise for this split (``None`` or a disabled config: masks stay clean).
        homogenise_sigma: the homogenisation experiment (see :class:`~seglosses.lab.noise.NoiseConfig`).
        cache_dir: folder for ``.npy`` copies of the decoded, resized arrays, or ``None``.
        cache_tag: distinguishes datasets sharing a ``cache_dir``.
    """

    def __init__(self, refs: list[SampleRef], reader: Any, num_classes: int, *,
                 image_size: tuple[int, int] | None = None, noise: NoiseConfig | None = None,
                 homogenise_sigma: float | None = None, cache_dir: str | Path | None = None,
                 cache_tag: str = "") -> None:
        self.refs = list(refs)
        self.reader = reader
        self.num_classes = num_classes
        self.image_size = image_size
        self.noise = noise if noise is not None and noise.enabled else None
        self.homogenise_sigma = homogenise_sigma
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.cache_tag = cache_tag
        self._arrays: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._noisy: dict[int, tuple[np.ndarray, NoiseRecord]] = {}

    def __len__(self) -> int:
        return len(self.refs)

    def clean_arrays(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The (homogenised, if asked) image and the clean mask of sample ``index``, decoded once."""
        if index not in self._arrays:
            self._arrays[index] = self._load(self.refs[index])
        return self._arrays[index]

    def noisy_mask(self, index: int) -> tuple[np.ndarray, NoiseRecord]:
        """The training mask of sample ``index`` after simulated annotation noise, and what was done."""
        if index not in self._noisy:
            _, clean = self.clean_arrays(index)
            if self.noise is None:
                self._noisy[index] = (clean, NoiseRecord("none", 1.0))
            else:
                noisy, operations = simulate_noise(clean, self.num_classes, self.noise, index)
                record = NoiseRecord(";".join(operations) or "none", dice_agreement(noisy, clean, self.num_classes))
                self._noisy[index] = (noisy, record)
        return self._noisy[index]

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"Expected `index` to be in [0, {len(self)}), but got {index}.")
        index = index % len(self)
        image, clean = self.clean_arrays(index)
        mask = self.noisy_mask(index)[0] if self.noise is not None else clean
        ref = self.refs[index]
        return {
            "image": torch.from_numpy(image),
            "mask": torch.from_numpy(mask),
            "clean_mask": torch.from_numpy(clean),
            "index": index,
            "case_id": ref.case_id,
            "slice_index": ref.slice_index,
        }

    def _load(self, ref: SampleRef) -> tuple[np.ndarray, np.ndarray]:
        cache_paths = self._cache_paths(ref)
        if cache_paths is not None and all(path.is_file() for path in cache_paths):
            return np.load(cache_paths[0]), np.load(cache_paths[1])
        image, mask = self.reader.read(ref)
        if image.ndim == 3:  # 2D (C, H, W); 3D patches keep their size
            image, mask = resize_pair(image, mask, self.image_size)
        if self.homogenise_sigma is not None:
            image = homogenise(image, mask, self.homogenise_sigma)
        image = np.ascontiguousarray(image, dtype=np.float32)
        mask = np.ascontiguousarray(mask, dtype=np.int64)
        if cache_paths is not None:
            for path, array in zip(cache_paths, (image, mask), strict=True):
                temporary = path.with_suffix(f".{os.getpid()}.tmp.npy")
                np.save(temporary, array)
                os.replace(temporary, path)  # atomic: parallel workers never read half a file
        return image, mask

    def _cache_paths(self, ref: SampleRef) -> tuple[Path, Path] | None:
        if self.cache_dir is None:
            return None
        stats = [os.stat(path) for path in (ref.image_path, ref.mask_path)]
        key = repr((self.cache_tag, ref, self.image_size, self.homogenise_sigma,
                    [(s.st_size, s.st_mtime_ns) for s in stats]))
        digest = hashlib.sha1(key.encode()).hexdigest()[:16]
        folder = self.cache_dir / digest[:2]
        folder.mkdir(parents=True, exist_ok=True)
        return folder / f"{digest}_image.npy", folder / f"{digest}_mask.npy"


# ---------------------------------------------------------------------------------------------
# Splitting
# ---------------------------------------------------------------------------------------------


def split_cases(case_ids: Sequence[str], val_fraction: float, test_fraction: float, seed: int) -> dict[str, str]:
    """Assign each distinct case to "train", "val" or "test" (seeded; fractions of cases, rounded).

    A non-zero fraction gets at least one case.

    Example:
        >>> split = split_cases([f"s{i}" for i in range(10)], 0.1, 0.2, seed=0)
        >>> sorted(split.values()).count("test"), sorted(split.values()).count("val")
        (2, 1)
    """
    cases = sorted(set(case_ids))
    order = np.random.default_rng(seed).permutation(len(cases))
    n_test = max(1, round(test_fraction * len(cases))) if test_fraction > 0 else 0
    n_val = max(1, round(val_fraction * len(cases))) if val_fraction > 0 else 0
    assignment = {}
    for rank, position in enumerate(order):
        split = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
        assignment[cases[position]] = split
    return assignment


def _subset(refs: list[SampleRef], limit: int | None, seed: int, by_case: bool) -> list[SampleRef]:
    """A seeded subset of ``limit`` units (samples, or whole cases when ``by_case``), in the original order."""
    units = sorted({ref.case_id for ref in refs}) if by_case else [ref.name for ref in refs]
    if limit is None or limit >= len(units):
        return refs
    chosen = set(np.asarray(units, dtype=object)[np.random.default_rng(seed).permutation(len(units))[:limit]])
    return [ref for ref in refs if (ref.case_id if by_case else ref.name) in chosen]


def _write_splits_csv(path: Path, splits: dict[str, list[SampleRef]]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["case_id", "name", "split", "index", "slice_index"])
        for split_name, refs in splits.items():
            for index, ref in enumerate(refs):
                writer.writerow([ref.case_id, ref.name, split_name, index, ref.slice_index])


def _write_noise_csv(path: Path, dataset: SegmentationDataset) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["index", "case_id", "name", "operations", "dice_noisy_clean"])
        for index, ref in enumerate(dataset.refs):
            record = dataset.noisy_mask(index)[1]
            writer.writerow([index, ref.case_id, ref.name, record.operations, f"{record.dice_noisy_clean:.6f}"])


# ---------------------------------------------------------------------------------------------
# Datasets
# ---------------------------------------------------------------------------------------------


def default_root(name: str) -> Path:
    """``$SEGLOSSES_DATA/<name>`` when set, else ``../shared/data/<name>`` beside the repository checkout."""
    if os.environ.get("SEGLOSSES_DATA"):
        return Path(os.environ["SEGLOSSES_DATA"]) / name
    return Path(__file__).resolve().parents[4] / "shared" / "data" / name


def _files_by_stem(folder: Path, suffixes: Sequence[str], what: str) -> dict[str, Path]:
    if not folder.is_dir():
        fail(what, "an existing folder", f"{str(folder)!r} (not found)")
    files = {}
    for path in sorted(folder.iterdir()):
        suffix = next((s for s in suffixes if path.name.lower().endswith(s)), None)
        if suffix is not None and path.is_file():
            files[path.name[: -len(suffix)]] = path
    return files


def _paired_refs(images_dir: Path, masks_dir: Path, suffixes: Sequence[str], subject) -> list[SampleRef]:
    """Image and mask files matched by stem; a missing mask is an error naming the image."""
    images = _files_by_stem(images_dir, suffixes, "images folder")
    masks = _files_by_stem(masks_dir, suffixes, "masks folder")
    if not images:
        fail("dataset", f"image files ({', '.join(suffixes)}) in {str(images_dir)!r}", "none (empty dataset)")
    refs = []
    for stem, image_path in images.items():
        if stem not in masks:
            fail("mask file", f"a mask named {stem!r} in {str(masks_dir)!r} for {str(image_path)!r}", "none")
        refs.append(SampleRef(stem, subject(stem), str(image_path), str(masks[stem])))
    return refs


def _image_channels(path: str) -> int:
    """Channels of an image without decoding its pixels (1 for grey, 3 for colour)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return 1 if image.mode in ("1", "L", "LA", "I", "I;16", "F") else 3
    except (UnidentifiedImageError, OSError) as error:
        fail("image file", "a readable image", f"{path!r} ({error})")
    raise AssertionError("unreachable")


def _hc18_subject(stem: str) -> str:
    # 010_HC, 010_2HC and 010_3HC are frames of subject 010
    return stem.split("_")[0]


def _build_hc18(config: DataConfig, root: Path) -> tuple[dict[str, list[SampleRef]], Any, dict[str, Any]]:
    refs = _paired_refs(root / "images", root / "masks", (".png",), _hc18_subject)
    cases = [ref.case_id for ref in refs]
    assignment = split_cases(cases, config.val_fraction, config.test_fraction, config.split_seed)
    splits = {name: [ref for ref in refs if assignment[ref.case_id] == name] for name in ("train", "val", "test")}
    info = dict(num_classes=2, in_channels=1, class_names=["background", "head"], spatial_dims=2, eval_unit="image")
    return splits, PairedFileReader(2, 1, (0, 255)), info


_BUILDERS = {"hc18": _build_hc18}


def build_splits(config: DataConfig, out_dir: str | Path | None = None) -> DataSplits:
    """Build the train / val / test datasets of ``config``; write ``splits.csv`` (and ``noise.csv``) to ``out_dir``.

    Args:
        config: what to load.
        out_dir: the run folder, or ``None`` to write nothing.

    Returns:
        :class:`DataSplits`. Noise (``config.noise``) is applied to the training split only.

    Example:
        >>> splits = build_splits(DataConfig("hc18", image_size=(32, 32), max_train=2, max_val=1, max_test=1))
        >>> len(splits.train), splits.num_classes, tuple(splits.train[0]["image"].shape)
        (2, 2, (1, 32, 32))
    """
    check_type("config", config, DataConfig)
    root = Path(config.root) if config.root is not None else default_root(config.name)
    if not root.is_dir():
        fail("root", f"an existing dataset folder for {config.name!r}", f"{str(root)!r} (not found)")
    splits, reader, info = _BUILDERS[config.name](config, root)
    limits = {"train": config.max_train, "val": config.max_val, "test": config.max_test}
    by_case = {split: info["eval_unit"] == "volume" and split != "train" for split in splits}
    for offset, split in enumerate(("train", "val", "test")):
        splits[split] = _subset(splits[split], limits[split], config.split_seed + 1 + offset, by_case[split])
        if not splits[split]:
            fail(f"{split} split", f"at least one sample of {config.name!r} in {str(root)!r}", "an empty split")
    class_names = list(config.class_names) if config.class_names is not None else info["class_names"]
    if len(class_names) != info["num_classes"]:
        fail("class_names", f"{info['num_classes']} names", class_names)
    cache_tag = f"{config.name}:{root.resolve()}"
    datasets = {
        split: SegmentationDataset(
            refs, reader, info["num_classes"], image_size=config.image_size,
            noise=config.noise if split == "train" else None, homogenise_sigma=config.noise.homogenise_sigma,
            cache_dir=config.cache_dir, cache_tag=cache_tag)
        for split, refs in splits.items()
    }
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        _write_splits_csv(out_dir / "splits.csv", splits)
        if datasets["train"].noise is not None:
            _write_noise_csv(out_dir / "noise.csv", datasets["train"])
    return DataSplits(train=datasets["train"], val=datasets["val"], test=datasets["test"],
                      num_classes=info["num_classes"], in_channels=info["in_channels"], class_names=class_names,
                      spatial_dims=info["spatial_dims"], eval_unit=info["eval_unit"])
