"""`alexnet-predict` against the real server: a file, a directory, errors, JSON output."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.client import EXIT_FAILED, EXIT_OK, EXIT_UNREACHABLE, explanation_path, main
from app.explain import OVERLAY_SCALE
from model.labels import imagenet_labels
from tests.app.live_server import LiveServer, free_port, live_server

pytestmark = pytest.mark.slow


def _write_jpeg(path: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)).save(buffer, format="JPEG")
    path.write_bytes(buffer.getvalue())
    return path


@pytest.fixture(scope="module")
def server(served_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with live_server(served_model_path, tmp_path_factory.mktemp("cli-server")) as running:
        yield running


def test_one_file_prints_a_table(server: LiveServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = _write_jpeg(tmp_path / "one.jpg", 1)
    assert main([str(image), "--url", server.url, "--top-k", "3"]) == EXIT_OK
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == str(image)
    ranked = lines[1:4]
    assert [line.split(".", 1)[0].strip() for line in ranked] == ["1", "2", "3"]
    wnids = {label.wnid for label in imagenet_labels()}
    assert all(line.split()[2] in wnids for line in ranked)
    assert lines[4] == "  warning: the model has random, untrained weights: its predictions are noise"


def test_directory_with_a_bad_file_exits_1(
    server: LiveServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write_jpeg(tmp_path / "a.jpg", 2)
    (tmp_path / "b.png").write_bytes(b"not a png")
    (tmp_path / "notes.txt").write_text("ignored: not an image suffix")
    assert main([str(tmp_path), "--url", server.url, "--json"]) == EXIT_FAILED
    records = json.loads(capsys.readouterr().out)
    assert [Path(record["path"]).name for record in records] == ["a.jpg", "b.png"]
    assert records[0]["status"] == 200
    assert len(records[0]["predictions"]) == 5
    assert records[1] == {
        "path": str(tmp_path / "b.png"),
        "status": 415,
        "error": {
            "code": "unsupported_media_type",
            "message": "unsupported image format; send one of: JPEG, PNG, WebP, GIF, BMP, TIFF",
        },
    }


def test_explain_writes_the_overlay_next_to_each_image(
    server: LiveServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = _write_jpeg(tmp_path / "cat.jpg", 5)
    assert main([str(tmp_path), "--url", server.url, "--explain", "--grid", "2", "--top-k", "1"]) == EXIT_OK
    overlay = tmp_path / "cat.jpg.explain.png"
    assert explanation_path(image) == overlay
    with Image.open(overlay) as written:
        assert (written.format, written.width) == ("PNG", 227 * OVERLAY_SCALE)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == str(image)
    assert lines[3] == f"  explanation: {overlay}"
    assert lines[4].startswith("  The ") or lines[4].startswith("  No region matters")
    # A second run over the folder explains the photo again, not its overlay.
    assert main([str(tmp_path), "--url", server.url, "--explain", "--grid", "2", "--json"]) == EXIT_OK
    [record] = json.loads(capsys.readouterr().out)
    assert record["path"] == str(image)
    assert record["explanation"]["path"] == str(overlay)
    assert record["explanation"]["status"] == 200


def test_explain_grid_out_of_range_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["x.jpg", "--explain", "--grid", "15"])
    assert exit_info.value.code == 2
    assert "--grid must be between 2 and 14" in capsys.readouterr().err


def test_unreachable_server_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = _write_jpeg(tmp_path / "x.jpg", 3)
    url = f"http://127.0.0.1:{free_port()}"
    assert main([str(image), "--url", url]) == EXIT_UNREACHABLE
    assert capsys.readouterr().err.startswith(f"alexnet-predict: cannot reach {url}: ")


def test_installed_entry_point(server: LiveServer, tmp_path: Path) -> None:
    executable = Path(sys.executable).with_name("alexnet-predict")
    assert executable.is_file(), "pip install -e . installs the alexnet-predict script beside the interpreter"
    image = _write_jpeg(tmp_path / "e.jpg", 4)
    result = subprocess.run(
        [executable, str(image), "--url", server.url, "--top-k", "1"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == str(image)
    assert result.stdout.splitlines()[1].lstrip().startswith("1. ")
