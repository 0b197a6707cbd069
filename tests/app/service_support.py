"""Helpers for tests that run the app in-process: settings for a test app, readiness, error bodies, predictions."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from starlette.testclient import TestClient

from app.config import CPU_PROVIDER, Settings
from app.inference import UNTRAINED_WARNING
from model.labels import imagenet_labels

READY_TIMEOUT_S = 30.0
READY_POLL_INTERVAL_S = 0.01
PROBABILITY_SUM_EPSILON = 1e-6


def service_settings(model_path: Path, **overrides: Any) -> Settings:
    """Settings for an in-process app on the CPU; the model is never exported, warm-up is short, and there is no
    solo session (a second copy of the model per app; tests/app/test_runtime.py covers it)."""
    values: dict[str, Any] = {
        "model_path": model_path,
        "providers": [CPU_PROVIDER],
        "auto_export": False,
        "warmup_runs": 1,
        "decode_threads": 2,
        "solo_session": False,
        **overrides,
    }
    return Settings(**values)


def wait_until_ready(client: TestClient) -> None:
    """Poll /health/ready until it is 200; fail with its last answer after READY_TIMEOUT_S."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        response = client.get("/health/ready")
        if response.status_code == 200:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not ready within {READY_TIMEOUT_S} s: {response.status_code} {response.text}")
        time.sleep(READY_POLL_INTERVAL_S)


def error_body(code: str, message: str) -> dict[str, object]:
    return {"error": {"code": code, "message": message}}


def untrained_model_summary(weights_sha256: str) -> dict[str, object]:
    """What every response says about the session's random-weights model."""
    return {"name": "bvlc_alexnet", "weights": "random", "sha256": weights_sha256, "trained": False}


def check_prediction(body: dict[str, Any], *, top_k: int, weights_sha256: str) -> None:
    """The issue's contract for one prediction of the untrained model."""
    assert set(body) >= {"top1", "top5", "predictions", "model", "timing_ms", "warnings"}
    top5, predictions = body["top5"], body["predictions"]
    assert len(top5) == 5
    assert body["top1"] == top5[0]
    probabilities = [entry["probability"] for entry in top5]
    assert probabilities == sorted(probabilities, reverse=True)
    assert all(0.0 <= probability <= 1.0 for probability in probabilities)
    assert sum(probabilities) <= 1.0 + PROBABILITY_SUM_EPSILON
    labels = imagenet_labels()
    for entry in [*top5, *predictions]:
        label = labels[entry["index"]]
        assert entry == {
            "index": label.index,
            "wnid": label.wnid,
            "label": label.label,
            "probability": entry["probability"],
        }
    assert len(predictions) == top_k
    shared = min(top_k, 5)
    assert predictions[:shared] == top5[:shared]
    assert body["model"] == untrained_model_summary(weights_sha256)
    assert UNTRAINED_WARNING in body["warnings"]
    timing = body["timing_ms"]
    for stage in ("decode", "preprocess", "inference", "total"):
        assert timing[stage] >= 0.0
    assert timing["total"] >= timing["inference"]
