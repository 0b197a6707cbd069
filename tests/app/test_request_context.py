"""Request IDs, access log and request metrics hold for every answer, failures included."""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from app.errors import INTERNAL_ERROR_MESSAGE
from app.main import create_app
from app.request_context import RequestIdFilter, new_request_id
from app.runtime import Runtime
from tests.app.service_support import error_body, service_settings, wait_until_ready

ORIGIN = "https://photos.example"


def test_an_unexpected_500_keeps_its_request_id_and_cors_headers_and_is_logged_once(
    served_model_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken_summary(self: Runtime) -> object:
        raise RuntimeError("password=hunter2")

    settings = service_settings(served_model_path, warmup_runs=0, cors_origins=[ORIGIN])
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        wait_until_ready(client)
        monkeypatch.setattr(Runtime, "model_summary", broken_summary)
        caplog.handler.addFilter(RequestIdFilter())
        with caplog.at_level(logging.INFO):
            response = client.get("/health", headers={"X-Request-ID": "trace-500", "Origin": ORIGIN})

    assert response.status_code == 500
    assert response.json() == error_body("internal_error", INTERNAL_ERROR_MESSAGE)
    assert "hunter2" not in response.text
    assert response.headers["x-request-id"] == "trace-500"
    assert response.headers["access-control-allow-origin"] == ORIGIN
    errors = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert [(record.exc_info is not None, getattr(record, "request_id", None)) for record in errors] == [
        (True, "trace-500")
    ]
    access = [record for record in caplog.records if record.name == "app.access"]
    assert [(record.getMessage().split()[2], getattr(record, "request_id", None)) for record in access] == [
        ("500", "trace-500")
    ]


def test_generated_request_ids_are_version_4_uuids_that_do_not_repeat() -> None:
    ids = [new_request_id() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    parsed = [uuid.UUID(hex=value) for value in ids]
    assert {(value.version, value.variant) for value in parsed} == {(4, uuid.RFC_4122)}
    assert [value.hex for value in parsed] == ids


def test_a_request_id_does_not_ask_the_os_for_randomness(monkeypatch: pytest.MonkeyPatch) -> None:
    # os.urandom releases the GIL, and the event loop then waits to get it back from busy threads (see the docstring).
    def refuse(size: int) -> bytes:
        raise AssertionError(f"os.urandom({size}) on the event loop")

    monkeypatch.setattr(os, "urandom", refuse)
    assert len(new_request_id()) == 32
