#!/usr/bin/env bash
# Wheels for a GPU machine without a package index (Python 3.12, x86-64) whose image has torch,
# onnx, onnxruntime and opencv but not the rest of requirements.txt, pinned to the versions tested
# here. `.whl/` is in .gitignore; copy it along and install it as README "On a GPU" says.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
    platforms+=(--platform "$p")
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" \
    -d .whl pycocotools==2.0.11 faster-coco-eval==1.8.0 albumentations==2.0.8 albucore==0.0.24 pydantic==2.13.4 \
    pydantic-core==2.46.4 annotated-types==0.7.0 typing-inspection==0.4.2 stringzilla==5.3.2 simsimd==6.5.16
du -sh .whl
