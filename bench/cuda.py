"""`python -m bench.cuda MODEL`: exit 0 only if onnxruntime really runs MODEL on CUDAExecutionProvider.

onnxruntime falls back to the CPU silently when CUDA or cuDNN cannot be loaded; this opens a session
the way the service does, runs one batch, and checks `session.get_providers()`, naming what is missing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

from app.config import CPU_PROVIDER, CUDA_PROVIDER
from model.metadata import INPUT_NAME, INPUT_SIZE

NOT_ACTIVE_EXIT_CODE = 3


def check_cuda(model_path: Path, device_id: int) -> list[str]:
    """The providers a CUDA-first session actually uses; raises `RuntimeError` when CUDA is not first."""
    available = ort.get_available_providers()
    if CUDA_PROVIDER not in available:
        raise RuntimeError(
            f"this onnxruntime build has no CUDA support (available: {', '.join(available)}); "
            "install onnxruntime-gpu, not onnxruntime"
        )
    # CUDA and cuDNN come as NVIDIA wheels; onnxruntime finds them only once preloaded.
    ort.preload_dlls(directory="")
    session = ort.InferenceSession(str(model_path), providers=[(CUDA_PROVIDER, {"device_id": device_id}), CPU_PROVIDER])
    active = list(session.get_providers())
    if not active or active[0] != CUDA_PROVIDER:
        raise RuntimeError(
            f"CUDAExecutionProvider is not active (active: {', '.join(active)}): no GPU visible, a driver older "
            "than CUDA 13 needs, or the nvidia-* CUDA 13 / cuDNN 9 wheels are missing; onnxruntime's own "
            "error is printed above"
        )
    session.run(None, {INPUT_NAME: np.zeros((1, 3, INPUT_SIZE, INPUT_SIZE), dtype=np.float32)})
    return active


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cuda", description=__doc__)
    parser.add_argument("model", type=Path)
    parser.add_argument("--device-id", type=int, default=0)
    args = parser.parse_args()
    try:
        active = check_cuda(args.model, args.device_id)
    except RuntimeError as error:
        sys.stderr.write(f"FAIL: {error}\n")
        return NOT_ACTIVE_EXIT_CODE
    sys.stdout.write(f"OK: onnxruntime {ort.__version__} runs on {', '.join(active)} (device {args.device_id})\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
