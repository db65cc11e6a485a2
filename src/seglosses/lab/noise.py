"""Simulated annotation noise for training masks, and the homogenisation experiment.

:class:`NoiseConfig` names a severity level (``none``, ``mild``, ``moderate``, ``severe``) whose
operation parameters are in :data:`NOISE_LEVELS`; a parameter given explicitly overrides the
level's value. :func:`simulate_noise` corrupts one label map the way annotators and annotation
tools do, seeded by ``(noise seed, sample index)`` only:

1. structure-level errors: a whole structure omitted (wiped to background); two structures'
   labels swapped (multiclass); small extra components forgotten;
2. boundary errors: a smooth random warp, a polygon simplification (Douglas-Peucker, as tools
   store outlines), a dilation or erosion.

Each operation draws from its own random stream, so overriding one parameter does not change what
the others do to an image.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, fields

import numpy as np
from scipy import ndimage

from seglosses._checks import check_number, check_type, fail

# Parameters of each operation. Lengths are fractions of the object's equivalent radius
# (the radius of the disc with the same area), so a level means the same at any resolution.
#   warp_amplitude:     largest boundary displacement of the smooth random warp
#   warp_smoothness:    Gaussian width of the random displacement field
#   simplify_tolerance: Douglas-Peucker tolerance of the polygon an annotation tool would store
#   morph_radius:       dilation or erosion radius, drawn per image and class in [0, morph_radius]
#   drop_probability:   chance that each connected component other than a class's largest is dropped
#   omit_probability:   chance that one present structure (foreground class) is wiped from the mask
#   swap_probability:   chance that two present foreground classes swap labels (multiclass only)
NOISE_PARAMETERS = (
    "warp_amplitude",
    "warp_smoothness",
    "simplify_tolerance",
    "morph_radius",
    "drop_probability",
    "omit_probability",
    "swap_probability",
)

NOISE_LEVELS: dict[str, dict[str, float]] = {
    "none": dict(warp_amplitude=0.0, warp_smoothness=0.4, simplify_tolerance=0.0, morph_radius=0.0,
                 drop_probability=0.0, omit_probability=0.0, swap_probability=0.0),
    "mild": dict(warp_amplitude=0.05, warp_smoothness=0.4, simplify_tolerance=0.02, morph_radius=0.04,
                 drop_probability=0.1, omit_probability=0.0, swap_probability=0.0),
    "moderate": dict(warp_amplitude=0.2, warp_smoothness=0.4, simplify_tolerance=0.06, morph_radius=0.18,
                     drop_probability=0.3, omit_probability=0.04, swap_probability=0.03),
    "severe": dict(warp_amplitude=0.3, warp_smoothness=0.4, simplify_tolerance=0.1, morph_radius=0.3,
                   drop_probability=0.6, omit_probability=0.2, swap_probability=0.15),
}

_PROBABILITIES = ("drop_probability", "omit_probability", "swap_probability")


@dataclass
class NoiseConfig:
    """Annotation noise applied to the training masks (never to validation or test).

    Args:
        level: named preset, one of :data:`NOISE_LEVELS`.
        seed: noise seed. Each training image's noise is drawn from ``(seed, sample index)``, so it
            does not depend on the training seed, the batch order or the number of workers.
        warp_amplitude ... swap_probability: explicit values override the level's (see
            :data:`NOISE_PARAMETERS` for their meaning); ``None`` keeps the level's value.
        homogenise_sigma: the paper's Table 2 experiment, off when ``None``: the image inside each
            annotated structure is replaced by a strongly blurred version of itself (Gaussian of
            this width, as a fraction of the structure's equivalent radius, normalised within the
            structure so nothing from outside leaks in). It alters the images of *every* split,
            using the clean masks, so the labels become "correct" for the data.

    Example:
        >>> NoiseConfig("moderate", seed=3).parameters()["warp_amplitude"]
        0.2
        >>> NoiseConfig("moderate", warp_amplitude=0.1).parameters()["warp_amplitude"]
        0.1
        >>> NoiseConfig().enabled
        False
    """

    level: str = "none"
    seed: int = 0
    warp_amplitude: float | None = None
    warp_smoothness: float | None = None
    simplify_tolerance: float | None = None
    morph_radius: float | None = None
    drop_probability: float | None = None
    omit_probability: float | None = None
    swap_probability: float | None = None
    homogenise_sigma: float | None = None

    def __post_init__(self) -> None:
        check_type("noise.level", self.level, str)
        if self.level not in NOISE_LEVELS:
            close = difflib.get_close_matches(self.level, NOISE_LEVELS, n=1, cutoff=0.5)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            fail("noise.level", f"one of {list(NOISE_LEVELS)}", f"{self.level!r}{hint}")
        check_type("noise.seed", self.seed, int)
        if self.seed < 0:
            fail("noise.seed", "a non-negative integer", self.seed)
        for name in NOISE_PARAMETERS:
            value = getattr(self, name)
            if value is None:
                continue
            high = 1.0 if name in _PROBABILITIES else float("inf")
            low_inclusive = name != "warp_smoothness"
            check_number(f"noise.{name}", value, low=0.0, high=high, low_inclusive=low_inclusive)
        if self.homogenise_sigma is not None:
            check_number("noise.homogenise_sigma", self.homogenise_sigma, low=0.0, low_inclusive=False)

    def parameters(self) -> dict[str, float]:
        """The level's parameters with the explicit overrides applied."""
        resolved = dict(NOISE_LEVELS[self.level])
        for field in fields(self):
            if field.name in NOISE_PARAMETERS and getattr(self, field.name) is not None:
                resolved[field.name] = float(getattr(self, field.name))
        return resolved

    @property
    def enabled(self) -> bool:
        """Whether any mask operation can change a training mask."""
        parameters = self.parameters()
        return any(parameters[name] > 0 for name in NOISE_PARAMETERS if name != "warp_smoothness")


def equivalent_radius(region: np.ndarray) -> float:
    """Radius of the disc (2D) or ball (3D) with the same area or volume as the boolean ``region``.

    Example:
        >>> round(equivalent_radius(np.ones((10, 10), bool)), 3)  # sqrt(100 / pi)
        5.642
    """
    size = float(np.count_nonzero(region))
    if region.ndim == 3:
        return (3.0 * size / (4.0 * np.pi)) ** (1.0 / 3.0)
    return (size / np.pi) ** 0.5


def dice_agreement(noisy: np.ndarray, clean: np.ndarray, num_classes: int) -> float:
    """Mean Dice between two label maps over the foreground classes present in either (1.0 if none).

    Example:
        >>> clean = np.zeros((4, 4), np.int64); clean[:2] = 1
        >>> noisy = np.zeros((4, 4), np.int64); noisy[:1] = 1
        >>> round(dice_agreement(noisy, clean, 2), 4)  # 2 * 4 / (4 + 8)
        0.6667
    """
    scores = []
    for label in range(1, num_classes):
        in_noisy, in_clean = noisy == label, clean == label
        total = np.count_nonzero(in_noisy) + np.count_nonzero(in_clean)
        if total:
            scores.append(2.0 * np.count_nonzero(in_noisy & in_clean) / total)
    return float(np.mean(scores)) if scores else 1.0


def _present_classes(mask: np.ndarray, num_classes: int) -> list[int]:
    return [label for label in range(1, num_classes) if np.any(mask == label)]


def omit_structure(mask: np.ndarray, num_classes: int, probability: float, rng: np.random.Generator) -> str | None:
    """With ``probability``, wipe one present foreground class to background (in place)."""
    present = _present_classes(mask, num_classes)
    if not present or rng.random() >= probability:
        return None
    label = int(rng.choice(present))
    mask[mask == label] = 0
    return f"omit(class={label})"


def swap_labels(mask: np.ndarray, num_classes: int, probability: float, rng: np.random.Generator) -> str | None:
    """With ``probability``, swap the labels of two present foreground classes (in place)."""
    present = _present_classes(mask, num_classes)
    if len(present) < 2 or rng.random() >= probability:
        return None
    first, second = (int(label) for label in rng.choice(present, size=2, replace=False))
    in_first = mask == first
    mask[mask == second] = first
    mask[in_first] = second
    return f"swap({first}<->{second})"


def drop_small_components(mask: np.ndarray, num_classes: int, probability: float,
                          rng: np.random.Generator) -> str | None:
    """Drop each connected component other than its class's largest with ``probability`` (in place)."""
    dropped = []
    for label in _present_classes(mask, num_classes):
        components, count = ndimage.label(mask == label)
        if count < 2:
            continue
        sizes = np.bincount(components.ravel())[1:]
        largest = int(np.argmax(sizes)) + 1
        for component in range(1, count + 1):
            if component != largest and rng.random() < probability:
                mask[components == component] = 0
                dropped.append(f"{label}:{sizes[component - 1]}px")
    return f"drop({','.join(dropped)})" if dropped else None


def _smooth_noise(shape: tuple[int, ...], sigma: float, rng: np.random.Generator) -> np.ndarray:
    """White noise blurred by a periodic Gaussian of width ``sigma``, in the Fourier domain (any sigma, same cost)."""
    spectrum = np.fft.rfftn(rng.standard_normal(shape))
    frequencies = np.meshgrid(*[np.fft.fftfreq(n) for n in shape[:-1]], np.fft.rfftfreq(shape[-1]), indexing="ij")
    squared = sum(f**2 for f in frequencies)
    return np.fft.irfftn(spectrum * np.exp(-2.0 * np.pi**2 * sigma**2 * squared), s=shape)


def warp_boundary(mask: np.ndarray, amplitude: float, smoothness: float, rng: np.random.Generator) -> str | None:
    """Resample the label map through a smooth random displacement field (in place).

    The field is white noise blurred by a Gaussian of width ``smoothness * r`` and scaled so its largest
    displacement is ``amplitude * r``, with ``r`` the equivalent radius of the foreground.
    """
    radius = equivalent_radius(mask > 0)
    largest = amplitude * radius
    if largest < 0.5:  # under half a pixel: nearest-neighbour resampling would change nothing
        return None
    sigma = max(smoothness * radius, 1.0)
    field = np.stack([_smooth_noise(mask.shape, sigma, rng) for _ in range(mask.ndim)])
    field *= largest / max(float(np.sqrt((field**2).sum(axis=0)).max()), 1e-12)
    grid = np.indices(mask.shape, dtype=np.float64) + field
    mask[...] = ndimage.map_coordinates(mask, grid, order=0, mode="nearest")
    return f"warp(max={largest:.1f}px)"


def simplify_polygons(mask: np.ndarray, num_classes: int, tolerance: float) -> str | None:
    """Redraw every structure as Douglas-Peucker-simplified polygons (in place; 3D: slice by slice).

    The tolerance is ``tolerance * r`` pixels with ``r`` the class's equivalent radius. Outlines and
    holes are filled by the even-odd rule; larger classes are painted first so enclosed ones stay on top.
    """
    from skimage.draw import polygon2mask
    from skimage.measure import approximate_polygon, find_contours

    if mask.ndim == 3:
        results = [simplify_polygons(plane, num_classes, tolerance) for plane in mask]
        applied = [result for result in results if result]
        return f"simplify({len(applied)} slices)" if applied else None
    present = _present_classes(mask, num_classes)
    areas = {label: np.count_nonzero(mask == label) for label in present}
    redrawn = np.zeros_like(mask)
    tolerances = []
    for label in sorted(present, key=lambda label: -areas[label]):
        pixels = tolerance * equivalent_radius(mask == label)
        tolerances.append(pixels)
        filled = np.zeros(mask.shape, dtype=bool)
        padded = np.pad(mask == label, 1).astype(np.float32)
        for contour in find_contours(padded, 0.5):
            outline = approximate_polygon(contour - 1.0, tolerance=pixels)
            if len(outline) >= 3:
                filled ^= polygon2mask(mask.shape, outline)
        redrawn[filled] = label
    mask[...] = redrawn
    return f"simplify(tol={max(tolerances):.1f}px)" if tolerances else None


def dilate_or_erode(mask: np.ndarray, num_classes: int, largest_radius: float, rng: np.random.Generator) -> str | None:
    """Per present class, dilate (into background) or erode (to background) by a random radius (in place).

    The radius is drawn uniformly in ``[0, largest_radius * r]`` pixels, ``r`` the class's equivalent radius.
    """
    changes = []
    for label in _present_classes(mask, num_classes):
        region = mask == label
        radius = rng.uniform(0.0, largest_radius) * equivalent_radius(region)
        grow = rng.random() < 0.5
        if radius < 0.5:
            continue
        if grow:
            reach = ndimage.distance_transform_edt(~region) <= radius
            mask[reach & (mask == 0)] = label
        else:
            depth = ndimage.distance_transform_edt(region)
            mask[region & (depth <= radius)] = 0
        changes.append(f"{'dilate' if grow else 'erode'}(class={label},r={radius:.1f}px)")
    return ";".join(changes) if changes else None


def simulate_noise(mask: np.ndarray, num_classes: int, config: NoiseConfig, index: int) -> tuple[np.ndarray, list[str]]:
    """Corrupt one label map as an annotator would; the same ``(config, index)`` gives the same result.

    Args:
        mask: clean labels (*S) with values in ``0..num_classes-1``; 0 is background.
        num_classes: number of classes including background.
        config: the noise settings.
        index: the sample's index in the training split (the per-image seed with ``config.seed``).

    Returns:
        The noisy labels (a new int64 array, same shape) and the operations applied, in order.

    Example:
        >>> clean = np.zeros((64, 64), np.int64); clean[16:48, 16:48] = 1
        >>> noisy, operations = simulate_noise(clean, 2, NoiseConfig("moderate", seed=1), index=0)
        >>> noisy.shape, 0.7 < dice_agreement(noisy, clean, 2) < 1.0
        ((64, 64), True)
    """
    parameters = config.parameters()
    streams = [np.random.default_rng(s) for s in np.random.SeedSequence([config.seed, index]).spawn(6)]
    noisy = np.array(mask, dtype=np.int64, copy=True)
    steps = [
        (parameters["omit_probability"] > 0,
         lambda: omit_structure(noisy, num_classes, parameters["omit_probability"], streams[0])),
        (parameters["swap_probability"] > 0,
         lambda: swap_labels(noisy, num_classes, parameters["swap_probability"], streams[1])),
        (parameters["drop_probability"] > 0,
         lambda: drop_small_components(noisy, num_classes, parameters["drop_probability"], streams[2])),
        (parameters["warp_amplitude"] > 0,
         lambda: warp_boundary(noisy, parameters["warp_amplitude"], parameters["warp_smoothness"], streams[3])),
        (parameters["simplify_tolerance"] > 0,
         lambda: simplify_polygons(noisy, num_classes, parameters["simplify_tolerance"])),
        (parameters["morph_radius"] > 0,
         lambda: dilate_or_erode(noisy, num_classes, parameters["morph_radius"], streams[5])),
    ]
    operations = []
    for active, step in steps:
        if active and np.any(noisy > 0):
            done = step()
            if done:
                operations.append(done)
    return noisy, operations


def homogenise(image: np.ndarray, mask: np.ndarray, sigma: float) -> np.ndarray:
    """The paper's Table 2 experiment: blur the image strongly inside each annotated structure.

    Inside class ``c`` the image becomes its Gaussian blur (width ``sigma * r``, ``r`` the class's
    equivalent radius) normalised within the class region, so no intensity from outside leaks in.

    Args:
        image: (C, *S) float image.
        mask: (*S) labels; 0 is background and stays untouched.
        sigma: blur width as a fraction of the equivalent radius.

    Returns:
        A new (C, *S) float32 image.

    Example:
        >>> image = np.random.default_rng(0).random((1, 32, 32)).astype(np.float32)
        >>> mask = np.zeros((32, 32), np.int64); mask[8:24, 8:24] = 1
        >>> out = homogenise(image, mask, sigma=1.0)
        >>> bool(out[0, 8:24, 8:24].std() < image[0, 8:24, 8:24].std()), bool((out[0, :8] == image[0, :8]).all())
        (True, True)
    """
    result = np.array(image, dtype=np.float32, copy=True)
    for label in np.unique(mask).tolist():
        if label == 0:
            continue
        region = mask == label
        width = max(sigma * equivalent_radius(region), 0.5)
        weight = ndimage.gaussian_filter(region.astype(np.float64), width)
        for channel in range(result.shape[0]):
            blurred = ndimage.gaussian_filter(np.where(region, result[channel], 0.0).astype(np.float64), width)
            result[channel][region] = (blurred[region] / np.maximum(weight[region], 1e-12)).astype(np.float32)
    return result
