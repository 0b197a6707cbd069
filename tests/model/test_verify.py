from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from model.errors import VerificationError
from model.export import ExportSummary
from model.verify import TOLERANCE, verify_model


def test_exported_random_model_matches_reference(random_export: ExportSummary) -> None:
    report = verify_model(random_export.output, batch=2)
    assert report.passed
    assert report.max_abs_diff < TOLERANCE
    assert report.card.weights == "random"


def test_a_wrong_graph_is_caught(random_export: ExportSummary, tmp_path: Path) -> None:
    model = onnx.load(str(random_export.output))
    lrn = next(node for node in model.graph.node if node.op_type == "LRN")
    beta = next(attribute for attribute in lrn.attribute if attribute.name == "beta")
    beta.f = 0.5
    tampered = tmp_path / "tampered.onnx"
    onnx.save(model, str(tampered))
    report = verify_model(tampered, batch=2)
    assert not report.passed
    assert "FAILED" in report.lines()[0]


def test_a_model_without_card_is_rejected(random_export: ExportSummary, tmp_path: Path) -> None:
    model = onnx.load(str(random_export.output))
    del model.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(model, str(bare))
    with pytest.raises(VerificationError, match="no alexnet.\\* metadata"):
        verify_model(bare)


def test_a_non_onnx_file_is_rejected(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\xff\xff\xff\xff not a model")
    with pytest.raises(VerificationError, match="is not an ONNX model"):
        verify_model(garbage)


def test_a_missing_file_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(VerificationError, match="cannot read"):
        verify_model(tmp_path / "absent.onnx")
