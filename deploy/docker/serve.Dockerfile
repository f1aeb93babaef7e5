# syntax=docker/dockerfile:1
# `naslung serve` as a container: the gRPC ensemble service, CPU torch, the shipped bundle baked in.
#
#   docker build -f deploy/docker/serve.Dockerfile -t registry.example.com/naslung-serve:0.1.0 .
#   docker run --rm -p 50051:50051 -p 50052:50052 registry.example.com/naslung-serve:0.1.0 \
#       serve --host 0.0.0.0 --insecure --health-port 50052           # local try-out only (no TLS, no token)
#
# Kubernetes manifests (TLS and token from Secrets, gRPC probes on --health-port): deploy/k8s/serve/,
# docs/scale-out.md. Another bundle: mount it and pass --bundle DIR (or set NASLUNG_BUNDLE).
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/tmp MPLCONFIGDIR=/tmp/matplotlib
WORKDIR /opt/naslung

# torch first, alone and exact, the CPU wheel from PyTorch's CPU index: nothing later can pull a CUDA build.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
# The pinned dependencies (requirements.txt) without the test tools.
COPY requirements.txt ./
RUN grep -vE '^(pytest|hypothesis)' requirements.txt > /tmp/requirements-run.txt \
    && pip install -r /tmp/requirements-run.txt \
    && python -c "import torch; assert torch.__version__.startswith('2.13.0') and not torch.version.cuda, torch.__version__"

COPY setup.py README.md ./
COPY proto ./proto
COPY naslung ./naslung
COPY service ./service
COPY search_spaces ./search_spaces
COPY models ./models
# Editable, so the shipped models/ next to the sources stays the default bundle (naslung.ensemble.bundle).
RUN pip install --no-deps --no-build-isolation -e . && naslung serve --help > /dev/null

# Not root; nothing in the image is writable by the server (HOME and caches live in /tmp).
USER 10001:10001
# 50051: gRPC (naslung.v1, health, reflection); 50052: --health-port (plaintext grpc.health.v1 only)
EXPOSE 50051 50052
ENTRYPOINT ["naslung"]
CMD ["serve", "--host", "0.0.0.0", "--port", "50051", "--health-port", "50052"]
