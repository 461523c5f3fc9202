"""Run under the official YOLOv5 code's Python (a separate venv, never this project's): the
official training loader's label indexing (LoadImagesAndLabels and its labels .cache) on a
YOLO-layout image folder, cold (cache removed first) or warm, seconds and peak RSS of this process.

    python benchmarks/official_label_cache.py --repo YOLOV5_CHECKOUT IMAGES_DIR [--warm]

Prints "N images, M instances: S s, peak RSS R MiB" (the line benchmarks/scale.py reads). Imports
nothing of gradpath: the official loader is used through its public class, not copied.
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repo", type=Path, required=True, help="a checkout of the official YOLOv5 repository")
    p.add_argument("images", type=Path, help="images/<split> with labels/<split> beside it")
    p.add_argument("--warm", action="store_true", help="keep the cache an earlier run wrote")
    args = p.parse_args()
    sys.path.insert(0, str(args.repo.resolve()))
    from utils.dataloaders import LoadImagesAndLabels  # the official package, from --repo

    cache = Path(str(args.images).replace("/images/", "/labels/")).with_suffix(".cache")
    if not args.warm:
        cache.unlink(missing_ok=True)
    t = time.perf_counter()
    d = LoadImagesAndLabels(str(args.images), img_size=640, batch_size=16, augment=False)
    secs = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{len(d.labels)} images, {sum(len(lb) for lb in d.labels)} instances: {secs:.1f} s, peak RSS {peak:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
