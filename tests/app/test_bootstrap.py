"""First start: `ensure_model` builds a missing model with the model CLI, loudly when the weights are untrained.

The BVLC download is made to fail deterministically (an HTTP proxy on a closed loopback port), so these tests
behave the same offline and online. Each test that builds runs the real `python -m model export` subprocesses.
"""

from __future__ import annotations

import logging
import socket
import subprocess
from pathlib import Path
from typing import Any

import onnxruntime as ort
import pytest

from app.bootstrap import ensure_model
from app.config import CPU_PROVIDER, Settings
from model.metadata import ModelCard


def closed_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every HTTP download is refused at once: urllib goes through a proxy that is not there."""
    proxy = f"http://127.0.0.1:{closed_loopback_port()}"
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"):
        monkeypatch.setenv(name, proxy)
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)


def first_start_settings(tmp_path: Path, **overrides: Any) -> Settings:
    cache = tmp_path / "weights-cache"
    cache.mkdir()
    return Settings(model_path=tmp_path / "served" / "alexnet.onnx", weights_cache_dir=cache, **overrides)


def read_card(path: Path) -> ModelCard:
    session = ort.InferenceSession(str(path), providers=[CPU_PROVIDER])
    return ModelCard.from_props(dict(session.get_modelmeta().custom_metadata_map))


@pytest.mark.usefixtures("offline")
def test_without_trained_weights_it_builds_the_random_model_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = first_start_settings(tmp_path)

    with caplog.at_level(logging.INFO, logger="app.bootstrap"):
        ensure_model(settings)

    assert settings.model_path.is_file()
    card = read_card(settings.model_path)
    assert (card.weights, card.trained) == ("random", False)
    warnings = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert warnings[0].getMessage().startswith("UNTRAINED MODEL: the trained weights cannot be had")
    assert str(settings.model_path) in warnings[0].getMessage()
    assert list(settings.weights_cache_dir.iterdir()) == []


@pytest.mark.usefixtures("offline")
def test_require_trained_exits_without_building_anything(tmp_path: Path) -> None:
    settings = first_start_settings(tmp_path, require_trained=True)

    with pytest.raises(SystemExit) as info:
        ensure_model(settings)

    assert str(info.value.code).startswith("ALEXNET_REQUIRE_TRAINED is set and the BVLC weights cannot be had")
    assert not settings.model_path.exists()
    assert list(settings.model_path.parent.glob("*")) == []


@pytest.mark.parametrize("present", [True, False], ids=["model-present", "auto-export-off"])
def test_nothing_is_built_when_the_model_exists_or_auto_export_is_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, present: bool
) -> None:
    settings = first_start_settings(tmp_path, auto_export=present)
    if present:
        settings.model_path.parent.mkdir()
        settings.model_path.write_bytes(b"an existing model, left alone")

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"ensure_model ran a subprocess: {args}")

    monkeypatch.setattr(subprocess, "run", refuse)
    with caplog.at_level(logging.DEBUG, logger="app.bootstrap"):
        ensure_model(settings)

    assert caplog.records == []
    if present:
        assert settings.model_path.read_bytes() == b"an existing model, left alone"
    else:
        assert not settings.model_path.exists()
