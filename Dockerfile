# Docker image of ICAM; same content as pytorch.def (Apptainer/Singularity): base image, system
# packages and pip installs are kept identical (tests/test_data_prep.py checks this).
#     docker build -t icam .
#     docker run --gpus all --shm-size 16g -v /scratch/data:/data -v /scratch/exp:/exp \
#         -v /scratch/pretrained:/opt/icam/pretrained \
#         -e DATA_ROOT=/data/VOCdevkit/VOC2012 -e EXPDIR=/exp/voc -e NPROC=4 icam [RUNNER.sh] [ARGS...]
# BASE_IMAGE and TORCH_INDEX exist for tools/container/container_check.sh (a Debian base and CPU wheels on a
# machine without registry access); a real build keeps both defaults.
ARG BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
FROM ${BASE_IMAGE}

ENV DEBIAN_FRONTEND=noninteractive
# build-essential + python3-dev: pydensecrf2 compiles from source where no wheel matches.
# wget, unzip, ca-certificates: config_voc.sh / config_coco.sh. No GUI libraries
# (opencv-python-headless needs none).
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        python3 python3-venv python3-dev build-essential ca-certificates wget unzip \
    && rm -rf /var/lib/apt/lists/*

# Ubuntu 24.04's python is externally managed (PEP 668): install into a venv.
# torch/torchvision first from the CUDA 12.8 wheel index (driver >= 570; use .../whl/cu126 for
# older drivers, or --build-arg TORCH_INDEX=...), with the version bounds of requirements.txt;
# then everything else.
ARG TORCH_INDEX
COPY requirements.txt /opt/icam/requirements.txt
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --upgrade pip \
    && /opt/venv/bin/pip install --no-cache-dir --index-url "${TORCH_INDEX:-https://download.pytorch.org/whl/cu128}" \
        $(grep -E '^(torch|torchvision)([<>=!~ ]|$)' /opt/icam/requirements.txt) \
    && /opt/venv/bin/pip install --no-cache-dir -r /opt/icam/requirements.txt

# The repository (minus what .dockerignore excludes: venvs, data, experiments, weights).
COPY . /opt/icam
# Mount point: ImageNet weights are bound here at run time, not baked into the image.
RUN mkdir -p /opt/icam/pretrained \
    && /opt/venv/bin/python -c "import torch, torchvision, cv2, scipy, pydensecrf, pycocotools, PIL, tqdm; print('torch', torch.__version__)"

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/opt/icam \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    LC_ALL=C.UTF-8
WORKDIR /opt/icam

# usage: docker run ... icam [RUNNER.sh] [ARGS...]   (default runner: run_all_voc.sh)
# The first argument, when it names a script (absolute, relative, or in /opt/icam), is the runner;
# the remaining arguments are passed to it (same logic as the %runscript of pytorch.def).
ENTRYPOINT ["/bin/bash", "-c", "runner=/opt/icam/run_all_voc.sh; if [ $# -ge 1 ]; then if [ -f \"$1\" ]; then runner=$1; shift; elif [ -f \"/opt/icam/$1\" ]; then runner=/opt/icam/$1; shift; fi; fi; exec bash \"$runner\" \"$@\"", "icam-run"]
