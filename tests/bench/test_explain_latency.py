"""`python -m bench.explain_latency`: a tiny run through the server's own Runtime prints every row."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.explain_latency import main


def test_tiny_run_reports_explain_against_single_predictions(
    served_model_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--model", str(served_model_path), "--cache-dir", str(tmp_path), "--grid", "2", "--rounds", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"model {served_model_path.name}: random (untrained) weights")
    assert lines[1] == "explanation at grid 2 (5 model rows), medians of 1 interleaved rounds:"
    labels = [line.split("  ")[1].strip() for line in lines[2:5]]
    assert labels == ["explain", "5 single predictions, one by one", "5 single predictions, all at once"]
    assert lines[5].startswith("  explain / one by one:  wall ")
    assert lines[6].startswith("  explain / all at once: wall ")
