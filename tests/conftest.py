"""Fixtures shared by every test package.

The served model is exported once per session (random weights, about 4 s and 240 MB) and shared; tests
never see the developer's own `ALEXNET_*` settings.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.exceptions import StarletteDeprecationWarning

from model.export import ExportSummary, export_model
from tests.fuzz_cases import FUZZ_CASES

with warnings.catch_warnings():
    # Starlette 1.x asks for httpx2 under its TestClient; with plain httpx it warns once, at import. Import it
    # here, before any test module does, so that one warning does not fail every API test (warnings are errors).
    warnings.filterwarnings("ignore", message="Using `httpx`", category=StarletteDeprecationWarning)
    import starlette.testclient  # noqa: F401

SETTINGS_ENV_PREFIX = "ALEXNET_"


@pytest.fixture(scope="session", autouse=True)
def _isolated_settings_environment() -> Iterator[None]:
    """Remove every ALEXNET_* variable for the session, so only what a test sets reaches `Settings`."""
    with pytest.MonkeyPatch.context() as patch:
        for name in list(os.environ):
            if name.upper().startswith(SETTINGS_ENV_PREFIX):
                patch.delenv(name)
        yield


@pytest.fixture(scope="session")
def served_model(tmp_path_factory: pytest.TempPathFactory) -> ExportSummary:
    """The model the app tests serve: the seeded random-weights export (BVLC architecture and preprocessing)."""
    output = tmp_path_factory.mktemp("served-model") / "alexnet.onnx"
    return export_model("random", output=output, cache_dir=output.parent / "cache", progress=False)


@pytest.fixture(scope="session")
def served_model_path(served_model: ExportSummary) -> Path:
    return served_model.output


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say how many cases each fuzz suite ran, so CI output shows the fuzzing was not skipped or cut short."""
    if FUZZ_CASES:
        counts = ", ".join(f"{suite} {count}" for suite, count in sorted(FUZZ_CASES.items()))
        terminalreporter.write_line(f"fuzz cases run: {counts}")
