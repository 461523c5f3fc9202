#!/usr/bin/env bash
# Download COCO 2017 detection/segmentation data into ../datasets/coco (the layout of
# cfg/data/coco.yaml). Needs internet and ~25 GB of disk. Usage: bash scripts/get_coco.sh [DIR]
set -euo pipefail
dir=${1:-"$(cd "$(dirname "$0")/.." && pwd)/../datasets/coco"}
mkdir -p "$dir/images" && cd "$dir"
base=http://images.cocodataset.org
for f in annotations/annotations_trainval2017.zip zips/val2017.zip zips/train2017.zip; do
  name=$(basename "$f")
  [ -f "$name.done" ] && continue
  curl -fL --retry 3 -C - -o "$name" "$base/$f"
  case $name in
    annotations_*) unzip -q -o "$name" ;;
    *) unzip -q -o "$name" -d images ;;
  esac
  rm -f "$name" && touch "$name.done"
done
echo "COCO 2017 is in $dir"
