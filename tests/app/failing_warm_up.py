"""`python -m tests.app.failing_warm_up`: the real server (`python -m app`) with a warm-up that raises."""

from __future__ import annotations

from app.__main__ import main
from app.inference import OnnxModel

WARM_UP_ERROR = "CUDA error: out of memory (simulated by tests/app/failing_warm_up.py)"


def failing_warm_up(
    self: OnnxModel, runs: int, batch_sizes: tuple[int, ...] = (1,), solo_batch_sizes: tuple[int, ...] | None = None
) -> None:
    raise RuntimeError(WARM_UP_ERROR)


if __name__ == "__main__":
    setattr(OnnxModel, "warm_up", failing_warm_up)  # noqa: B010 (mypy refuses assigning to a method)
    main()
