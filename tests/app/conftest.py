"""Session fixtures for the tests on real photos: the trained stand-in model, its reference answers, its server.

They skip, naming the folder, only when `../shared/data` is absent (see tests/app/standin.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from tests.app.live_server import LiveServer, live_server
from tests.app.standin import (
    PHOTO_COUNT,
    STANDIN_FILENAME,
    Photo,
    check_squeezenet,
    reference_probabilities,
    sample_photos,
    shared_data_missing,
    write_standin,
)

# What the accuracy test reports, printed at the end of the run (ruff bans print; -s is not needed).
ACCURACY_SUMMARY = pytest.StashKey[str]()
# What the explanation faithfulness (deletion) test reports, the same way.
FAITHFULNESS_SUMMARY = pytest.StashKey[str]()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    summary = config.stash.get(ACCURACY_SUMMARY, None)
    if summary is not None:
        terminalreporter.write_sep("-", "accuracy of the served stand-in on real photos")
        terminalreporter.write_line(summary)
    faithfulness = config.stash.get(FAITHFULNESS_SUMMARY, None)
    if faithfulness is not None:
        terminalreporter.write_sep("-", "occlusion explanations on real photos: the deletion test")
        terminalreporter.write_line(faithfulness)


@pytest.fixture(scope="session")
def photos() -> list[Photo]:
    """The 500 shared ImageNet photos, after checking the shared network is the one its README describes."""
    reason = shared_data_missing()
    if reason is not None:
        pytest.skip(reason)
    check_squeezenet()
    found = sample_photos()
    assert len(found) == PHOTO_COUNT, f"expected {PHOTO_COUNT} photos, found {len(found)}"
    return found


@pytest.fixture(scope="session")
def standin_model_path(photos: list[Photo], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trained stand-in: the shared SqueezeNet wearing the BVLC model card, trained: true."""
    output = tmp_path_factory.mktemp("standin") / STANDIN_FILENAME
    write_standin(output)
    return output


@pytest.fixture(scope="session")
def reference(photos: list[Photo]) -> npt.NDArray[np.float32]:
    """[500, 1000]: what the independent reference makes of each photo, in `photos` order."""
    return reference_probabilities([photo.read() for photo in photos])


@pytest.fixture(scope="session")
def standin_server(standin_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """`python -m app` serving the stand-in, shared by the accuracy and web page tests."""
    with live_server(standin_model_path, tmp_path_factory.mktemp("standin-server")) as server:
        yield server
