"""Make the PASCAL-Context 59-class masks and train/val lists from trainval_merged.json.

Writes ``VOC2010/SegmentationClassContext/NAME.png`` (ids 0..58, 255 = ignore) and
``VOC2010/ImageSets/SegmentationContext/{train,val}.txt``, as read by
:class:`picoseg.data.PascalContextDataset`. Needs pycocotools (``pip install pycocotools``).

Example::

    python scripts/prepare_pascal_context.py --root /data/pascal_context
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from picoseg.data.folder import DatasetError
from picoseg.data.pascal_context import find_voc2010, prepare_pascal_context


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--root",
        type=Path,
        required=True,
        help="the directory holding VOCdevkit/VOC2010, or VOC2010 itself",
    )
    parser.add_argument(
        "--annotations",
        type=Path,
        default=None,
        help="the official trainval_merged.json (default: <VOC2010>/trainval_merged.json)",
    )
    args = parser.parse_args(argv)
    try:
        counts = prepare_pascal_context(args.root, args.annotations)
    except (ImportError, DatasetError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    base = find_voc2010(args.root)
    print(
        f"wrote {sum(counts.values())} masks to {base / 'SegmentationClassContext'} "
        f"({', '.join(f'{split}: {n}' for split, n in counts.items())})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
