# gradpath with CUDA: the pinned torch wheels from PyPI carry their own CUDA 13 runtime and cuDNN,
# so a slim Python base is enough; the host needs an NVIDIA driver and the container toolkit.
#   docker build -t gradpath .
#   docker run --gpus all --ipc=host -v /path/to/datasets:/datasets -v $PWD/runs:/gradpath/runs gradpath \
#       python train.py --data cfg/data/coco.yaml --cfg cfg/models/yolor-elan-seg.yaml --batch-size 32
# cfg/data/coco.yaml points at ../datasets/coco, i.e. /datasets/coco inside the container.
FROM python:3.11-slim-bookworm
ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
RUN apt-get update && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /gradpath
COPY requirements.txt .
RUN pip install -r requirements.txt
COPY . .
CMD ["python", "train.py", "--help"]
