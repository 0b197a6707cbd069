"""CORS is closed unless origins are configured, and then open to those origins only."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app

ALLOWED = "https://photos.example"
PREFLIGHT = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"}


def _client(model_path: Path, origins: list[str]) -> TestClient:
    settings = Settings(model_path=model_path, providers=["CPUExecutionProvider"], warmup_runs=0, cors_origins=origins)
    return TestClient(create_app(settings))


def test_closed_by_default(served_model_path: Path) -> None:
    with _client(served_model_path, []) as client:
        response = client.get("/health/live", headers={"Origin": ALLOWED})
        assert response.status_code == 200
        assert "access-control-allow-origin" not in response.headers
        preflight = client.options("/v1/predict", headers={"Origin": ALLOWED, **PREFLIGHT})
        assert preflight.status_code == 405
        assert "access-control-allow-origin" not in preflight.headers


def test_open_to_configured_origins_only(served_model_path: Path) -> None:
    with _client(served_model_path, [ALLOWED]) as client:
        preflight = client.options("/v1/predict", headers={"Origin": ALLOWED, **PREFLIGHT})
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == ALLOWED
        simple = client.get("/health/live", headers={"Origin": ALLOWED})
        assert simple.headers["access-control-allow-origin"] == ALLOWED
        assert "x-request-id" in simple.headers["access-control-expose-headers"].lower()
        other = client.options("/v1/predict", headers={"Origin": "https://evil.example", **PREFLIGHT})
        assert other.status_code == 400
        assert "access-control-allow-origin" not in other.headers


@pytest.mark.parametrize(
    ("raw", "parsed"), [("", []), ("https://a.example, https://b.example", ["https://a.example", "https://b.example"])]
)
def test_origins_from_the_environment(monkeypatch: pytest.MonkeyPatch, raw: str, parsed: list[str]) -> None:
    monkeypatch.setenv("ALEXNET_CORS_ORIGINS", raw)
    assert Settings().cors_origins == parsed
