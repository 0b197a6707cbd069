from __future__ import annotations

import hashlib
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
import pytest

from model import export as export_module
from model.architecture import AlexNetWeights
from model.errors import WeightsFormatError, WeightsHashError, WeightsUnavailableError
from model.export import ExportSummary, export_default_model, export_model
from model.metadata import INPUT_NAME, OUTPUT_NAME, TORCHVISION_PREPROCESSING
from model.sources import SOURCES, SourceSpec, WeightsFile
from model.verify import TOLERANCE, sample_images, verify_model
from tests.model.torch_alexnet import torchvision_probabilities

REPOSITORY = Path(__file__).resolve().parents[2]


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_v1_caffemodel_exports_and_verifies(v1_caffemodel: Path, tmp_path: Path) -> None:
    output = tmp_path / "alexnet.onnx"
    summary = export_model("bvlc", checkpoint=v1_caffemodel, output=output, check_hash=False, progress=False)
    assert (summary.source, summary.architecture, summary.trained) == ("bvlc", "bvlc_alexnet", False)
    assert summary.weights_sha256 == file_sha256(v1_caffemodel)
    assert summary.size_bytes == output.stat().st_size > 240_000_000
    report = verify_model(output)
    assert report.card.weights_sha256 == summary.weights_sha256
    assert report.max_abs_diff < TOLERANCE
    assert report.passed


def test_torchvision_checkpoint_exports_and_matches_torch(
    torchvision_checkpoint: Path, torchvision_weights: AlexNetWeights, tmp_path: Path
) -> None:
    output = tmp_path / "alexnet.onnx"
    summary = export_model(
        "torchvision", checkpoint=torchvision_checkpoint, output=output, check_hash=False, progress=False
    )
    assert summary.architecture == "torchvision_alexnet"
    graph = onnx.load(str(output)).graph
    assert "LRN" not in {node.op_type for node in graph.node}
    groups = [attribute.i for node in graph.node for attribute in node.attribute if attribute.name == "group"]
    assert groups == [1] * 5
    assert verify_model(output).max_abs_diff < TOLERANCE
    # torch's own module, adaptive 6x6 average pool included, agrees with the graph that omits it.
    images = sample_images(TORCHVISION_PREPROCESSING, 2, seed=7)
    session = onnxruntime.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    (probabilities,) = session.run([OUTPUT_NAME], {INPUT_NAME: images})
    assert float(np.abs(probabilities - torchvision_probabilities(torchvision_weights, images)).max()) < TOLERANCE


def test_checkpoint_that_is_not_the_pinned_release_is_refused(v1_caffemodel: Path, tmp_path: Path) -> None:
    output = tmp_path / "alexnet.onnx"
    with pytest.raises(WeightsHashError, match="official bvlc_alexnet.caffemodel has SHA-1 9116a64c"):
        export_model("bvlc", checkpoint=v1_caffemodel, output=output, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_malformed_checkpoint_leaves_previous_output_untouched(v1_caffemodel: Path, tmp_path: Path) -> None:
    truncated = tmp_path / "in" / "truncated.caffemodel"
    truncated.parent.mkdir()
    truncated.write_bytes(v1_caffemodel.read_bytes()[:1_000_000])
    output = tmp_path / "out" / "alexnet.onnx"
    output.parent.mkdir()
    output.write_bytes(b"previous model")
    with pytest.raises(WeightsFormatError, match="truncated"):
        export_model("bvlc", checkpoint=truncated, output=output, check_hash=False, progress=False)
    assert output.read_bytes() == b"previous model"
    assert [entry.name for entry in output.parent.iterdir()] == ["alexnet.onnx"]


def test_random_export_is_reproducible(random_export: ExportSummary, tmp_path: Path) -> None:
    again = export_model("random", output=tmp_path / "again.onnx", progress=False)
    assert again.weights_sha256 == random_export.weights_sha256
    assert (tmp_path / "again.onnx").read_bytes() == random_export.output.read_bytes()


def test_random_with_checkpoint_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(WeightsUnavailableError, match="--checkpoint makes no sense"):
        export_model("random", checkpoint=tmp_path / "x", output=tmp_path / "m.onnx")


def test_default_model_from_cache_is_trained(
    v1_caffemodel: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Pretend the fixture is the pinned release, then serve it from the cache.
    sha1 = hashlib.sha1(v1_caffemodel.read_bytes()).hexdigest()
    pinned = WeightsFile("bvlc_alexnet.caffemodel", "http://invalid/bvlc_alexnet.caffemodel", "sha1", sha1)
    fake = SourceSpec("bvlc", "bvlc_alexnet", SOURCES["bvlc"].preprocessing, SOURCES["bvlc"].license, pinned)
    monkeypatch.setattr(export_module, "SOURCES", {**SOURCES, "bvlc": fake})
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "bvlc_alexnet.caffemodel").symlink_to(v1_caffemodel)
    summary = export_default_model(tmp_path / "alexnet.onnx", cache_dir=cache)
    assert summary.trained
    assert summary.source == "bvlc"


def test_default_model_offline_raises_unavailable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args: Any, **kwargs: Any) -> Any:
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    output = tmp_path / "alexnet.onnx"
    with pytest.raises(WeightsUnavailableError, match="cannot get bvlc_alexnet.caffemodel.*--checkpoint PATH"):
        export_default_model(output, cache_dir=tmp_path / "cache")
    assert not output.exists()


# Runs the real CLI in a fresh interpreter with name resolution and connections failing, as offline.
OFFLINE_CLI = """
import socket, sys
def offline(*args, **kwargs):
    raise socket.gaierror(-3, "Temporary failure in name resolution")
socket.getaddrinfo = offline
socket.create_connection = offline
from model.__main__ import main
sys.exit(main())
"""


def test_offline_cli_export_prints_one_actionable_line(tmp_path: Path) -> None:
    output = tmp_path / "alexnet.onnx"
    arguments = ["export", "--weights", "bvlc", "--output", str(output), "--cache-dir", str(tmp_path / "cache")]
    result = subprocess.run(
        [sys.executable, "-c", OFFLINE_CLI, *arguments],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1
    assert "cannot get bvlc_alexnet.caffemodel" in error_lines[0]
    assert "http://dl.caffe.berkeleyvision.org/bvlc_alexnet.caffemodel" in error_lines[0]
    assert "SHA-1 9116a64c0fbe4459d18f4bb6b56d647b63920377" in error_lines[0]
    assert "--checkpoint PATH" in error_lines[0]
    assert result.stdout == ""
    assert not output.exists()
