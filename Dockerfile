# alexnet-serve: AlexNet (ONNX) behind a REST API, on onnxruntime-gpu (CUDA, or CPU without a GPU).
#
#   docker build -t alexnet-serve .                                   # GPU image, trained BVLC weights
#   docker build --build-arg CUDA=false -t alexnet-serve:cpu .        # CPU image, no CUDA libraries
#   docker build --build-arg CHECKPOINT=checkpoints/bvlc_alexnet.caffemodel -t alexnet-serve .
#   docker build --build-arg BASE_IMAGE=alexnet-serve-base:bookworm ...   # see docker/build-base.sh
#
# Needs BuildKit (the default since Docker 23; DOCKER_BUILDKIT=1 on Docker 20.10). Build arguments:
#   BASE_IMAGE   any image with python3.11 and its venv module (default python:3.11-slim)
#   CUDA         true: onnxruntime-gpu with the CUDA 13 + cuDNN 9 wheels; false: a CPU image without them
#   WEIGHTS      bvlc | torchvision | random (random: untrained, for tests; labelled and logged as such)
#   CHECKPOINT   a weights file inside the build context's checkpoints/ (the only checkpoints the
#                .dockerignore lets in), used instead of downloading
#   EXPORT_ARGS  more `python -m model export` flags, e.g. "--precision fp16" (GPU) or "--seed 1"
ARG BASE_IMAGE=python:3.11-slim
ARG CUDA=true
ARG WEIGHTS=bvlc

# ---- venv: pinned dependencies, then the package itself, in /opt/venv (PEP 668-safe on Debian's python)
FROM ${BASE_IMAGE} AS venv
ARG CUDA
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python3 -m venv /opt/venv
WORKDIR /src
COPY requirements/runtime.lock requirements/cuda.lock requirements/
# Dependencies first, in their own layer, so editing app/ or model/ does not reinstall them. The venv's own
# pip installs them: upgrading pip from PyPI first would fetch an unpinned, unhashed package past the lock.
RUN --mount=type=cache,target=/root/.cache/pip \
    case "$CUDA" in \
        true) lock=requirements/cuda.lock ;; \
        false) lock=requirements/runtime.lock ;; \
        *) echo "CUDA must be true or false, not '$CUDA'" >&2; exit 1 ;; \
    esac \
    && /opt/venv/bin/pip install --require-hashes -r "$lock"
COPY pyproject.toml README.md ./
COPY model model
COPY app app
RUN --mount=type=cache,target=/root/.cache/pip \
    /opt/venv/bin/pip install --no-deps . \
    && /opt/venv/bin/pip check

# ---- model: alexnet.onnx from the model CLI; a failed download fails the build with its message
FROM venv AS model
ARG WEIGHTS
ARG CHECKPOINT=
ARG EXPORT_ARGS=
RUN --mount=type=bind,source=.,target=/context \
    /opt/venv/bin/python -m model export --weights "$WEIGHTS" \
        ${CHECKPOINT:+--checkpoint "/context/$CHECKPOINT"} $EXPORT_ARGS \
        --cache-dir /tmp/weights --output /models/alexnet.onnx \
    && rm -rf /tmp/weights \
    && chmod 0444 /models/alexnet.onnx
# Trained-weights images set ALEXNET_REQUIRE_TRAINED=true: fail here, not at every container start.
RUN [ "$WEIGHTS" = random ] || /opt/venv/bin/python -c 'import sys, onnx; \
props = {p.key: p.value for p in onnx.load(sys.argv[1], load_external_data=False).metadata_props}; \
sys.exit(None if props.get("alexnet.trained") == "true" else \
    "error: the exported model is marked untrained (a checkpoint accepted with --skip-hash-check?), " \
    "so this image would refuse to start; serve such a file by mounting it: " \
    "-v FILE:/models/alexnet.onnx -e ALEXNET_REQUIRE_TRAINED=false")' /models/alexnet.onnx

# ---- runtime: the venv and the model on a clean base; no compilers, no torch, no build leftovers
FROM ${BASE_IMAGE} AS runtime
# tini is PID 1 and runs Python as its child. As PID 1, Python ignored SIGTERM until uvicorn installed its
# handlers, so `docker stop` during the seconds of model loading waited out the grace period and ended in
# SIGKILL; as a child, Python dies of it at once (exit 143), and after startup drains as before (exit 0).
# Debian's package, verified by apt's signed repository.
RUN apt-get update \
    && apt-get install --yes --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --gid 10001 alexnet \
    && useradd --uid 10001 --gid alexnet --create-home --home-dir /home/alexnet --shell /usr/sbin/nologin alexnet
COPY --from=venv /opt/venv /opt/venv
COPY --from=model /models /models
COPY docker/healthcheck.py /opt/alexnet-serve/healthcheck.py
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    ALEXNET_HOST=0.0.0.0 \
    ALEXNET_PORT=8000 \
    ALEXNET_MODEL_PATH=/models/alexnet.onnx \
    ALEXNET_AUTO_EXPORT=false \
    ALEXNET_GRACEFUL_SHUTDOWN_S=8
EXPOSE 8000
# `docker stop` waits 10 s by default: the graceful shutdown above fits inside it.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "/opt/alexnet-serve/healthcheck.py"]
LABEL org.opencontainers.image.title="alexnet-serve" \
      org.opencontainers.image.description="AlexNet (ONNX) REST inference service on onnxruntime-gpu" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="0.1.0"

# One stage per choice, so labels and defaults can follow the build arguments.
FROM runtime AS cuda-true
# For the NVIDIA Container Toolkit (`docker run --gpus all`): mount the compute libraries of the driver,
# and refuse to start on a driver too old for the CUDA 13 wheels rather than fail inside onnxruntime.
ENV ALEXNET_PROVIDERS=CUDAExecutionProvider,CPUExecutionProvider \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    NVIDIA_REQUIRE_CUDA="cuda>=13.0"
LABEL io.alexnet-serve.cuda="true"

FROM runtime AS cuda-false
ENV ALEXNET_PROVIDERS=CPUExecutionProvider
LABEL io.alexnet-serve.cuda="false"

FROM cuda-${CUDA} AS weights-bvlc
ENV ALEXNET_REQUIRE_TRAINED=true
LABEL io.alexnet-serve.trained="true"

FROM weights-bvlc AS weights-torchvision

FROM cuda-${CUDA} AS weights-random
# Untrained on purpose (tests, smoke runs): the server logs "UNTRAINED MODEL" and every answer says trained: false.
ENV ALEXNET_REQUIRE_TRAINED=false
LABEL io.alexnet-serve.trained="false"

FROM weights-${WEIGHTS} AS final
ARG WEIGHTS
ARG VCS_REF=unknown
LABEL io.alexnet-serve.weights="${WEIGHTS}" \
      org.opencontainers.image.revision="${VCS_REF}"
USER alexnet:alexnet
WORKDIR /home/alexnet
ENTRYPOINT ["tini", "--"]
CMD ["python", "-m", "app"]
