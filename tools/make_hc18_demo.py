"""Build the packaged demo subset of HC18 (src/seglosses/lab/demo_data/hc18) from the shared copy.

HC18 (van den Heuvel et al., PLoS ONE 2018; Zenodo 10.5281/zenodo.1327317) is CC BY 4.0, the only
dataset here that may ship inside the package. The subset: ``--subjects`` subjects drawn with a
seeded generator among those whose first frame ``NNN_HC.png`` has the common 400x270 size, one
image per subject (so any split is a split by subject), downsampled once more by an exact factor
of 2.5 to 160x108 (width x height): images with a box filter, masks with a box filter thresholded
at 0.5 (as the shared copy was made). The pixel sizes are scaled by the same factor, so they stay
isotropic and exact. Run from the repository root:

    python tools/make_hc18_demo.py --source ../shared/data/hc18
"""

from __future__ import annotations

import argparse
import csv
import random
import shutil
from pathlib import Path

from PIL import Image

COMMON_SIZE = (400, 270)
FACTOR = 2.5
DEMO_SIZE = (160, 108)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=Path("../shared/data/hc18"))
    parser.add_argument("--target", type=Path, default=Path("src/seglosses/lab/demo_data/hc18"))
    parser.add_argument("--subjects", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    with open(args.source / "pixel_size_and_hc.csv", newline="") as handle:
        rows = {row["filename"]: row for row in csv.DictReader(handle)}
    eligible = sorted(name for name in rows if name.endswith("_HC.png") and "_" not in name[:-7]
                      and Image.open(args.source / "images" / name).size == COMMON_SIZE)
    chosen = sorted(random.Random(args.seed).sample(eligible, args.subjects))

    for folder in ("images", "masks"):
        shutil.rmtree(args.target / folder, ignore_errors=True)
        (args.target / folder).mkdir(parents=True)
    for name in chosen:
        image = Image.open(args.source / "images" / name).convert("L").resize(DEMO_SIZE, Image.BOX)
        image.save(args.target / "images" / name, optimize=True)
        mask = Image.open(args.source / "masks" / name).convert("L").resize(DEMO_SIZE, Image.BOX)
        mask.point(lambda value: 255 if value >= 128 else 0).save(args.target / "masks" / name, optimize=True)
    with open(args.target / "pixel_size_and_hc.csv", "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["filename", "pixel_size_mm", "head_circumference_mm"])
        for name in chosen:
            pixel_size = float(rows[name]["pixel_size_mm"]) * FACTOR
            writer.writerow([name, f"{pixel_size:.6f}", rows[name]["head_circumference_mm"]])
    print(f"{len(chosen)} of {len(eligible)} eligible subjects written to {args.target}")


if __name__ == "__main__":
    main()
