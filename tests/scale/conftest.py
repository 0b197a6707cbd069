"""The scale tests' measurements, repeated in pytest's closing summary so CI logs carry them."""

from __future__ import annotations

import pytest

SCALE_REPORT = pytest.StashKey[list[str]]()


@pytest.fixture
def scale_report(request: pytest.FixtureRequest) -> list[str]:
    """Lines appended here are printed in a `scale-out` section at the end of the run."""
    return request.config.stash.setdefault(SCALE_REPORT, [])


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    lines = config.stash.get(SCALE_REPORT, [])
    if lines:
        terminalreporter.section("scale-out")
        for line in lines:
            terminalreporter.write_line(line)
