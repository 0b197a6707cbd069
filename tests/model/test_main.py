from __future__ import annotations

from pathlib import Path

import pytest

from model.__main__ import main
from model.export import ExportSummary


def test_export_random_prints_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    output = tmp_path / "out" / "alexnet.onnx"
    code = main(["export", "--weights", "random", "--seed", "3", "--output", str(output), "--cache-dir", str(tmp_path)])
    captured = capsys.readouterr()
    assert code == 0
    assert output.is_file()
    assert "trained    false" in captured.out
    assert "time       " in captured.out
    assert "not the trained release" in caplog.text


def test_verify_prints_max_difference(random_export: ExportSummary, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["verify", str(random_export.output), "--batch", "1"])
    assert code == 0
    assert "max |diff|" in capsys.readouterr().out


def test_missing_checkpoint_is_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        ["export", "--weights", "bvlc", "--checkpoint", str(tmp_path / "nope"), "--output", str(tmp_path / "m")]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("error: checkpoint")
    assert "Traceback" not in err
    assert not (tmp_path / "m").exists()


def test_verify_of_garbage_is_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    garbage = tmp_path / "x.onnx"
    garbage.write_bytes(b"\x00\x01garbage")
    assert main(["verify", str(garbage)]) == 1
    assert capsys.readouterr().err.startswith("error: ")
