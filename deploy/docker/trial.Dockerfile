# syntax=docker/dockerfile:1
# The image NNI's FrameworkController training service runs each search trial in
# (examples/k8s/search-frameworkcontroller.yml, docs/scale-out.md): python, NNI 3.0 and naslung, whose
# `python -m search_spaces.trial` trains one architecture and reports it to NNI.
#
#   docker build -f deploy/docker/trial.Dockerfile -t registry.example.com/naslung-trial:0.1.0 .
#   docker build -f deploy/docker/trial.Dockerfile --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 \
#       -t registry.example.com/naslung-trial:0.1.0-cuda .        # GPU trials (gpuNumber > 0)
#
# NNI starts the pod with `sh <run script>` from the NFS export it mounts at /tmp/mount; the script
# needs `sh` and `python` on PATH, which this image has.
FROM python:3.11-slim-bookworm

# CPU wheel by default; a CUDA index for GPU trials. torch goes first, alone and exact.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /opt/naslung

RUN pip install --index-url ${TORCH_INDEX} torch==2.13.0
COPY requirements.txt ./
RUN grep -vE '^(pytest|hypothesis)' requirements.txt > /tmp/requirements-run.txt \
    && pip install -r /tmp/requirements-run.txt \
    && python -c "import torch, nni; assert torch.__version__.startswith('2.13.0'), torch.__version__; assert nni.__version__ == '3.0'"

COPY setup.py README.md ./
COPY proto ./proto
COPY naslung ./naslung
COPY service ./service
COPY search_spaces ./search_spaces
COPY examples ./examples
RUN pip install --no-deps --no-build-isolation -e . && python -m search_spaces.trial --help > /dev/null

CMD ["python", "-m", "search_spaces.trial", "--help"]
