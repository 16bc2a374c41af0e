"""Draw docs/corruptions-sheet.png: one real CIFAR-10 test image (from the shipped sample) under each of the 15
corruptions at severities 1, 3 and 5, as `cifarlab evaluate --corruptions` generates them (seed 0).

    python tools/corruptions_sheet.py [--index 0] [--out docs/corruptions-sheet.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cifarlab.data.corruptions import NAMES, corrupt
from cifarlab.data.sources import load_dataset
from cifarlab.report.corruptions import sheet
from cifarlab.sample import DATA_DIR as SAMPLE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", type=int, default=0, help="which test image of the sample")
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).resolve().parents[1] / "docs" / "corruptions-sheet.png")
    args = parser.parse_args()
    data = load_dataset("cifar10", SAMPLE, download_missing=False)
    image = data.test.images[args.index:args.index + 1]
    examples = {name: {s: corrupt(image, name, s, seed=0)[0] for s in (1, 3, 5)} for name in NAMES}
    label = data.classes[int(data.test.labels[args.index])]
    sheet(image[0], examples, args.out, f"A CIFAR-10 test image ({label}) under the 15 corruptions, severities 1, 3, 5")
    print(args.out)


if __name__ == "__main__":
    main()
