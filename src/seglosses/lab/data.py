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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from seglosses._checks import check_number, check_type, fail
from seglosses.lab.noise import NoiseConfig, dice_agreement, homogenise, simulate_noise

DATASET_NAMES = ("hc18", "hc18_demo", "fuseg", "acdc", "folder", "nifti")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
NIFTI_SUFFIXES = (".nii.gz", ".nii")


@dataclass
class DataConfig:
    """What to load and how to split it.

    Args:
        name: one of :data:`DATASET_NAMES` (``hc18_demo``: the small HC18 subset packaged with seglosses).
        root: the dataset folder. ``None``: ``$SEGLOSSES_DATA/<name>`` when that variable is set,
            else ``../shared/data/<name>`` beside the repository checkout (``folder`` and ``nifti``
            need an explicit root).
        image_size: resize every 2D image to ``(H, W)`` (bilinear with antialiasing; masks nearest).
            ``None`` keeps native sizes (then a split's images may differ in size).
        max_train, max_val, max_test: keep a seeded random subset of that many units of the split
            (images; whole volumes in a split evaluated per volume: ACDC and NIfTI-slice val/test).
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
        for name in ("root", "split_csv", "cache_dir"):
            value = getattr(self, name)
            if value is not None:
                check_type(name, value, (str, os.PathLike))
                setattr(self, name, os.fspath(value))
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


def read_image_file(path: str | Path, labels: bool = False) -> np.ndarray:
    """Decode an image file into an array (H, W) or (H, W, C) of its own dtype.

    With ``labels``, a palette image gives its palette indices (label PNGs are often stored so);
    otherwise palette and alpha images are converted to RGB or grey.
    Raises ``ValueError`` naming the file when it is missing or cannot be decoded.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        fail("image file", "an existing file", f"{str(path)!r} (not found)")
    try:
        with Image.open(path) as image:
            if labels and image.mode == "P":
                return np.array(image)
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
    """Resize a 2D image (C, H, W) bilinearly (antialiased when shrinking) and its mask (H, W) by nearest neighbour.

    Pillow's filters widen their support when shrinking, so downsampling averages rather than aliases;
    the mask takes the label at each output pixel's centre.

    Example:
        >>> image, mask = resize_pair(np.zeros((1, 40, 60), np.float32), np.zeros((40, 60), np.int64), (20, 30))
        >>> image.shape, mask.shape
        ((1, 20, 30), (20, 30))
    """
    from PIL import Image

    if size is None or tuple(image.shape[-2:]) == tuple(size):
        return image, mask
    height, width = size
    channels = [np.asarray(Image.fromarray(np.ascontiguousarray(channel, dtype=np.float32), mode="F")
                           .resize((width, height), Image.Resampling.BILINEAR)) for channel in image]
    rows = np.minimum(((np.arange(height) + 0.5) * mask.shape[0] / height).astype(np.int64), mask.shape[0] - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * mask.shape[1] / width).astype(np.int64), mask.shape[1] - 1)
    return np.stack(channels), mask[rows[:, None], cols[None, :]]


@dataclass(frozen=True)
class SampleRef:
    """Where one sample comes from: its files and, inside a volume, its slice or patch."""

    name: str  # unique within the dataset: file stem, or volume name plus slice / patch
    case_id: str  # the subject or case: splits never separate samples of one case
    image_path: str
    mask_path: str
    slice_index: int = -1  # position of a 2D slice in its volume; -1 for plain images
    patch_origin: tuple[int, ...] | None = None  # 3D patches: corner of the patch in the volume
    spacing: tuple[float, ...] | None = None  # native pixel / voxel size in mm, where the dataset gives it


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
        values = read_image_file(ref.mask_path, labels=True)
        if values.ndim == 3:  # a mask saved as RGB: all channels must agree
            if not np.all(values == values[..., :1]):
                fail("mask", "a single-channel label image", f"{ref.mask_path!r} (its colour channels differ)")
            values = values[..., 0]
        mask = _mask_to_labels(values, self.mask_values, self.num_classes, ref.mask_path)
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


def read_hdf5(path: str | Path, keys: Sequence[str] = ("image", "label")) -> list[np.ndarray]:
    """Read datasets ``keys`` of an HDF5 file; errors name the file (missing, corrupt or lacking a key)."""
    import h5py

    path = Path(path)
    if not path.is_file():
        fail("HDF5 file", "an existing file", f"{str(path)!r} (not found)")
    try:
        with h5py.File(path, "r") as handle:
            missing = [key for key in keys if key not in handle]
            if missing:
                fail("HDF5 file", f"datasets {list(keys)}", f"{str(path)!r} without {missing}")
            return [np.asarray(handle[key][()]) for key in keys]
    except OSError as error:
        fail("HDF5 file", "a readable HDF5 file", f"{str(path)!r} ({error})")
    raise AssertionError("unreachable")


def read_nifti(path: str | Path) -> np.ndarray:
    """Read a NIfTI image's voxels (its own dtype); errors name the file."""
    import nibabel

    path = Path(path)
    if not path.is_file():
        fail("NIfTI file", "an existing file", f"{str(path)!r} (not found)")
    try:
        return np.asanyarray(nibabel.load(str(path)).dataobj)
    except Exception as error:  # nibabel raises several types for damaged files
        fail("NIfTI file", "a readable NIfTI image", f"{str(path)!r} ({type(error).__name__}: {error})")
    raise AssertionError("unreachable")


def _nifti_header(path: Path) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """Shape and voxel size (mm) of a NIfTI image, from its header alone."""
    import nibabel

    try:
        header = nibabel.load(str(path)).header
        return tuple(int(n) for n in header.get_data_shape()), tuple(float(z) for z in header.get_zooms())
    except Exception as error:
        fail("NIfTI file", "a readable NIfTI image", f"{str(path)!r} ({type(error).__name__}: {error})")
    raise AssertionError("unreachable")


def _check_labels(labels: np.ndarray, num_classes: int, path: str) -> np.ndarray:
    unknown = sorted(set(np.unique(labels).tolist()) - set(range(num_classes)))
    if unknown:
        fail("mask values", f"in the label set {list(range(num_classes))}", f"{unknown[:10]} in {path!r}")
    return labels.astype(np.int64)


class _VolumeCache:
    """The few most recently decoded volumes, so slices of one volume decode it once."""

    def __init__(self, capacity: int = 4):
        self.capacity = capacity
        self.volumes: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def get(self, key: str, load) -> tuple[np.ndarray, np.ndarray]:
        if key not in self.volumes:
            if len(self.volumes) >= self.capacity:
                self.volumes.pop(next(iter(self.volumes)))
            self.volumes[key] = load()
        return self.volumes[key]

    def __getstate__(self):  # workers start with an empty cache rather than a copy of the parent's
        return {"capacity": self.capacity, "volumes": {}}


class ACDCReader:
    """SSL4MIS ACDC: training slices from ``*_slice_*.h5``, validation/test slices taken from volume files."""

    def __init__(self) -> None:
        self.volumes = _VolumeCache()

    def read(self, ref: SampleRef) -> tuple[np.ndarray, np.ndarray]:
        if ref.slice_index < 0:
            image, label = self._checked(ref.image_path)
        else:
            volume, labels = self.volumes.get(ref.image_path, lambda: self._checked(ref.image_path))
            image, label = volume[ref.slice_index], labels[ref.slice_index]
        return image[None].astype(np.float32), label

    @staticmethod
    def _checked(path: str) -> tuple[np.ndarray, np.ndarray]:
        image, label = read_hdf5(path)
        if image.shape != label.shape:
            fail("image and mask sizes", "equal", f"{image.shape} and {label.shape} in {path!r}")
        return image, _check_labels(label, 4, path)


class NiftiReader:
    """NIfTI image and mask volumes: 2D slices along ``slice_axis`` or 3D patches at ``patch_origin``.

    Intensities are clipped to the volume's 0.5-99.5 percentiles and scaled to [0, 1]; a 4D image
    keeps its last axis as channels.
    """

    def __init__(self, num_classes: int, mask_values: tuple[int, ...] | None, slice_axis: int,
                 patch_size: tuple[int, int, int] | None) -> None:
        self.num_classes = num_classes
        self.mask_values = mask_values
        self.slice_axis = slice_axis
        self.patch_size = patch_size
        self.volumes = _VolumeCache()

    def read(self, ref: SampleRef) -> tuple[np.ndarray, np.ndarray]:
        image, labels = self.volumes.get(ref.image_path, lambda: self._load_volume(ref))
        if self.patch_size is None:
            return np.take(image, ref.slice_index, axis=self.slice_axis + 1), np.take(
                labels, ref.slice_index, axis=self.slice_axis)
        corners = zip(ref.patch_origin, self.patch_size, strict=True)
        window = tuple(slice(start, start + size) for start, size in corners)
        image_patch, label_patch = image[(slice(None), *window)], labels[window]
        padding = [(0, size - got) for size, got in zip(self.patch_size, label_patch.shape, strict=True)]
        return np.pad(image_patch, [(0, 0), *padding]), np.pad(label_patch, padding)

    def _load_volume(self, ref: SampleRef) -> tuple[np.ndarray, np.ndarray]:
        image = read_nifti(ref.image_path).astype(np.float32)
        image = image[None] if image.ndim == 3 else np.moveaxis(image, -1, 0)
        labels = read_nifti(ref.mask_path)
        if image.shape[1:] != labels.shape:
            fail("image and mask sizes", "equal",
                 f"{image.shape[1:]} for {ref.image_path!r} and {labels.shape} for {ref.mask_path!r}")
        if not np.all(labels == np.round(labels)):
            fail("mask values", "integer labels", f"fractional values in {ref.mask_path!r}")
        labels = _mask_to_labels(labels.astype(np.int64), self.mask_values, self.num_classes, ref.mask_path)
        low, high = np.percentile(image, [0.5, 99.5])
        image = (np.clip(image, low, high) - low) / max(float(high - low), 1e-12)
        return image.astype(np.float32), labels


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
        # labels cached as uint8 (an eighth of int64: HC18 at 256x256 keeps 999 masks in 65 MB)
        self._label_dtype = np.uint8 if num_classes <= 256 else np.int32
        self._arrays: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray | None]] = {}
        self._noisy: dict[int, tuple[np.ndarray, NoiseRecord]] = {}

    def __len__(self) -> int:
        return len(self.refs)

    def clean_arrays(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The (homogenised, if asked) image and the clean mask of sample ``index``, decoded once.

        The mask is kept as uint8 (int32 beyond 256 classes); samples hand it out as int64.
        """
        if index not in self._arrays:
            self._arrays[index] = self._load(self.refs[index])
        return self._arrays[index][:2]

    def spacing(self, index: int) -> np.ndarray | None:
        """Pixel (voxel) size of sample ``index`` in mm after resizing, or ``None`` when the data does not say."""
        self.clean_arrays(index)
        return self._arrays[index][2]

    def noisy_mask(self, index: int) -> tuple[np.ndarray, NoiseRecord]:
        """The training mask of sample ``index`` after simulated annotation noise, and what was done."""
        if index not in self._noisy:
            _, clean = self.clean_arrays(index)
            if self.noise is None:
                self._noisy[index] = (clean, NoiseRecord("none", 1.0))
            else:
                noisy, operations = simulate_noise(clean, self.num_classes, self.noise, index)
                noisy = noisy.astype(self._label_dtype)
                record = NoiseRecord(";".join(operations) or "none", dice_agreement(noisy, clean, self.num_classes))
                self._noisy[index] = (noisy, record)
        return self._noisy[index]

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"Expected `index` to be in [0, {len(self)}), but got {index}.")
        index = int(index) % len(self)
        image, clean = self.clean_arrays(index)
        mask = self.noisy_mask(index)[0] if self.noise is not None else clean
        ref = self.refs[index]
        sample = {
            "image": torch.from_numpy(image),
            "mask": torch.from_numpy(mask).long(),  # stored compactly, handed out as int64
            "clean_mask": torch.from_numpy(clean).long(),
            "index": index,
            "case_id": ref.case_id,
            "slice_index": ref.slice_index,
        }
        spacing = self.spacing(index)
        if spacing is not None:  # HC18 and NIfTI: distances (HD95, ASSD, NSD) in mm
            sample["spacing"] = torch.from_numpy(spacing)
        return sample

    def _load(self, ref: SampleRef) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        cache_paths = self._cache_paths(ref)
        if cache_paths is not None and all(path.is_file() for path in cache_paths):
            image, mask, spacing = (np.load(path) for path in cache_paths)
            return image, mask, spacing if ref.spacing is not None else None
        image, mask = self.reader.read(ref)
        native_shape = mask.shape
        if image.ndim == 3:  # 2D (C, H, W); 3D patches keep their size
            image, mask = resize_pair(image, mask, self.image_size)
        spacing = None
        if ref.spacing is not None:
            spacing = np.array([step * before / after for step, before, after
                                in zip(ref.spacing, native_shape, mask.shape, strict=True)], dtype=np.float64)
        if self.homogenise_sigma is not None:
            image = homogenise(image, mask, self.homogenise_sigma)
        image = np.ascontiguousarray(image, dtype=np.float32)
        mask = np.ascontiguousarray(mask, dtype=self._label_dtype)
        if cache_paths is not None:
            stored_spacing = spacing if spacing is not None else np.zeros(0)
            for path, array in zip(cache_paths, (image, mask, stored_spacing), strict=True):
                temporary = path.with_suffix(f".{os.getpid()}.tmp.npy")
                np.save(temporary, array)
                os.replace(temporary, path)  # atomic: parallel workers never read half a file
        return image, mask, spacing

    def _cache_paths(self, ref: SampleRef) -> tuple[Path, Path, Path] | None:
        if self.cache_dir is None:
            return None
        for what, path in (("image file", ref.image_path), ("mask file", ref.mask_path)):
            if not os.path.isfile(path):
                fail(what, "an existing file", f"{path!r} (not found)")
        stats = [os.stat(path) for path in (ref.image_path, ref.mask_path)]
        key = repr((self.cache_tag, ref, self.image_size, self.homogenise_sigma,
                    [(s.st_size, s.st_mtime_ns) for s in stats]))
        digest = hashlib.sha1(key.encode()).hexdigest()[:16]
        folder = self.cache_dir / digest[:2]
        folder.mkdir(parents=True, exist_ok=True)
        return folder / f"{digest}_image.npy", folder / f"{digest}_mask.npy", folder / f"{digest}_spacing.npy"


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
    """Where dataset ``name`` lives by default.

    ``hc18_demo``: the HC18 subset packaged with seglosses (CC BY 4.0). Others: ``$SEGLOSSES_DATA/<name>``
    when that variable is set, else ``../shared/data/<name>`` beside the repository checkout.
    """
    if name == "hc18_demo":
        return Path(__file__).resolve().parent / "demo_data" / "hc18"
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


def _hc18_pixel_sizes(root: Path) -> dict[str, float]:
    """``pixel_size_and_hc.csv``: pixel size in mm per image stem (empty when the file is absent)."""
    path = root / "pixel_size_and_hc.csv"
    if not path.is_file():
        return {}
    with open(path, newline="") as handle:
        return {Path(row["filename"]).stem: float(row["pixel_size_mm"]) for row in csv.DictReader(handle)}


def _build_hc18(config: DataConfig, root: Path) -> tuple[dict[str, list[SampleRef]], Any, dict[str, Any]]:
    refs = _paired_refs(root / "images", root / "masks", (".png",), _hc18_subject)
    pixel_sizes = _hc18_pixel_sizes(root)
    if all(ref.name in pixel_sizes for ref in refs):  # a partial table would make batches uneven
        refs = [replace(ref, spacing=(pixel_sizes[ref.name],) * 2) for ref in refs]
    cases = [ref.case_id for ref in refs]
    assignment = split_cases(cases, config.val_fraction, config.test_fraction, config.split_seed)
    splits = {name: [ref for ref in refs if assignment[ref.case_id] == name] for name in ("train", "val", "test")}
    info = dict(num_classes=2, in_channels=1, class_names=["background", "head"], spatial_dims=2, eval_unit="image")
    return splits, PairedFileReader(2, 1, (0, 255)), info


def _build_fuseg(config: DataConfig, root: Path) -> tuple[dict[str, list[SampleRef]], Any, dict[str, Any]]:
    # FUSeg's validation folder is our test split; validation images are carved from its training folder
    train = _paired_refs(root / "train" / "images", root / "train" / "masks", IMAGE_SUFFIXES, lambda stem: stem)
    test = _paired_refs(root / "validation" / "images", root / "validation" / "masks", IMAGE_SUFFIXES,
                        lambda stem: stem)
    assignment = split_cases([ref.case_id for ref in train], config.val_fraction, 0.0, config.split_seed)
    splits = {"train": [ref for ref in train if assignment[ref.case_id] == "train"],
              "val": [ref for ref in train if assignment[ref.case_id] == "val"], "test": test}
    info = dict(num_classes=2, in_channels=3, class_names=["background", "wound"], spatial_dims=2, eval_unit="image")
    return splits, PairedFileReader(2, 3, (0, 255)), info


def _read_list(path: Path) -> list[str]:
    if not path.is_file():
        fail("ACDC list file", "an existing file", f"{str(path)!r} (not found)")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def _build_acdc(config: DataConfig, root: Path) -> tuple[dict[str, list[SampleRef]], Any, dict[str, Any]]:
    import h5py

    data = root / "data"
    train = []
    for name in _read_list(root / "train_slices.list"):
        path = str(data / f"{name}.h5")
        train.append(SampleRef(name, name.rsplit("_slice_", 1)[0], path, path))
    splits = {"train": train}
    for split, list_name in (("val", "val.list"), ("test", "test.list")):
        refs = []
        for volume in _read_list(root / list_name):
            path = data / f"{volume}.h5"
            if not path.is_file():
                fail("HDF5 file", "an existing file", f"{str(path)!r} (not found; listed in {list_name})")
            try:
                with h5py.File(path, "r") as handle:
                    depth = handle["image"].shape[0]
            except (OSError, KeyError) as error:
                fail("HDF5 file", "a readable volume with an `image` dataset", f"{str(path)!r} ({error})")
            refs += [SampleRef(f"{volume}_z{z}", volume, str(path), str(path), slice_index=z) for z in range(depth)]
        splits[split] = refs
    info = dict(num_classes=4, in_channels=1, class_names=["background", "right_ventricle", "myocardium",
                                                           "left_ventricle"], spatial_dims=2, eval_unit="volume")
    return splits, ACDCReader(), info


def _subject_function(pattern: str | None):
    if pattern is None:
        return lambda stem: stem
    compiled = re.compile(pattern)

    def subject(stem: str) -> str:
        match = compiled.search(stem)
        if match is None:
            fail("subject_regex", f"a pattern matching every file name ({pattern!r})", f"no match in {stem!r}")
        return match.group(1) if compiled.groups else match.group(0)

    return subject


def _assign_splits(config: DataConfig, root: Path, refs: list[SampleRef]) -> dict[str, list[SampleRef]]:
    """Split by ``split_csv`` (rows ``name,split``) when given, else a seeded split by subject."""
    if config.split_csv is None:
        assignment = split_cases([ref.case_id for ref in refs], config.val_fraction, config.test_fraction,
                                 config.split_seed)
        return {name: [ref for ref in refs if assignment[ref.case_id] == name] for name in ("train", "val", "test")}
    path = Path(config.split_csv)
    path = path if path.is_absolute() else root / path
    if not path.is_file():
        fail("split_csv", "an existing CSV file", f"{str(path)!r} (not found)")
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or not {"name", "split"} <= set(rows[0]):
        columns = list(rows[0]) if rows else []
        fail("split_csv", "a CSV with columns name,split", f"{str(path)!r} with columns {columns}")
    by_name = {}
    for row in rows:
        name = Path(row["name"].strip()).name
        for suffix in (*NIFTI_SUFFIXES, *IMAGE_SUFFIXES):
            if name.lower().endswith(suffix):
                name = name[: -len(suffix)]
                break
        if row["split"].strip() not in ("train", "val", "test"):
            fail("split_csv split", "one of ['train', 'val', 'test']",
                 f"{row['split']!r} for {name!r} in {str(path)!r}")
        if name in by_name:
            fail("split_csv", "one row per image file", f"{name!r} twice in {str(path)!r}")
        by_name[name] = row["split"].strip()
    unlisted = [ref.name for ref in refs if ref.name not in by_name]
    unknown = sorted(set(by_name) - {ref.name for ref in refs})
    if unlisted or unknown:
        fail("split_csv", "one row per image file", f"files missing from {str(path)!r}: {unlisted[:5]}, "
             f"rows without a file: {unknown[:5]}")
    return {name: [ref for ref in refs if by_name[ref.name] == name] for name in ("train", "val", "test")}


def _classes(config: DataConfig) -> tuple[int, list[str]]:
    num_classes = config.num_classes or (len(config.mask_values) if config.mask_values is not None else 2)
    return num_classes, [f"class{label}" for label in range(num_classes)]


def _build_folder(config: DataConfig, root: Path) -> tuple[dict[str, list[SampleRef]], Any, dict[str, Any]]:
    refs = _paired_refs(root / config.images_dir, root / config.masks_dir, IMAGE_SUFFIXES,
                        _subject_function(config.subject_regex))
    num_classes, class_names = _classes(config)
    in_channels = _image_channels(refs[0].image_path)
    info = dict(num_classes=num_classes, in_channels=in_channels, class_names=class_names, spatial_dims=2,
                eval_unit="image")
    return _assign_splits(config, root, refs), PairedFileReader(num_classes, in_channels, config.mask_values), info


def _build_nifti(config: DataConfig, root: Path) -> tuple[dict[str, list[SampleRef]], Any, dict[str, Any]]:
    volumes = _paired_refs(root / config.images_dir, root / config.masks_dir, NIFTI_SUFFIXES,
                           _subject_function(config.subject_regex))
    if config.patch_size is not None and config.image_size is not None:
        fail("image_size", "None with 3D patches (patch_size)", config.image_size)
    if config.patch_size is None and config.slice_axis not in (0, 1, 2):
        fail("slice_axis", "0, 1 or 2", config.slice_axis)
    splits = _assign_splits(config, root, volumes)
    first_shape = _nifti_header(Path(volumes[0].image_path))[0]
    in_channels = first_shape[3] if len(first_shape) == 4 else 1
    for split, split_volumes in splits.items():
        refs = []
        for volume in split_volumes:
            shape, zooms = _nifti_header(Path(volume.image_path))
            shape, zooms = shape[:3], zooms[:3]
            if config.patch_size is None:
                in_plane = tuple(z for axis, z in enumerate(zooms) if axis != config.slice_axis)
                refs += [SampleRef(f"{volume.name}_slice{z}", volume.case_id, volume.image_path, volume.mask_path,
                                   slice_index=z, spacing=in_plane) for z in range(shape[config.slice_axis])]
            else:
                starts = [range(0, extent, size) for extent, size in zip(shape, config.patch_size, strict=True)]
                origins = np.stack(np.meshgrid(*starts, indexing="ij"), axis=-1).reshape(-1, 3)
                refs += [SampleRef(f"{volume.name}_patch{number}", volume.case_id, volume.image_path, volume.mask_path,
                                   patch_origin=tuple(int(v) for v in origin), spacing=zooms)
                         for number, origin in enumerate(origins)]
        splits[split] = refs
    num_classes, class_names = _classes(config)
    slices = config.patch_size is None
    info = dict(num_classes=num_classes, in_channels=in_channels, class_names=class_names,
                spatial_dims=2 if slices else 3, eval_unit="volume" if slices else "image")
    return splits, NiftiReader(num_classes, config.mask_values, config.slice_axis, config.patch_size), info


_BUILDERS = {"hc18": _build_hc18, "hc18_demo": _build_hc18, "fuseg": _build_fuseg, "acdc": _build_acdc,
             "folder": _build_folder, "nifti": _build_nifti}


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
