"""`python -m bench --quick` runs every phase end to end and writes its report (speed is not asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

QUICK_RUN_TIMEOUT_S = 600


def test_quick_benchmark_writes_every_section(served_model_path: Path, tmp_path: Path) -> None:
    output = tmp_path / "bench.json"
    command = [
        sys.executable,
        "-m",
        "bench",
        "--quick",
        "--model",
        str(served_model_path),
        "--output",
        str(output),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--print",
        "summary",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=QUICK_RUN_TIMEOUT_S)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(output.read_text())
    for section in ("meta", "decode", "model_speed", "pipeline", "servers", "ratios", "targets"):
        assert report[section], f"empty section {section}"
    targets = {target["name"]: target for target in report["targets"]}
    assert targets["errors under load"]["value"] == 0, "the server answered every benchmark request"
    assert "end-to-end saturated ÷ in-process pipeline" in targets
    assert report["ratios"]["largest_jpeg_draft_probability_delta"] > 0, "draft decoding must be compared with full"
    full_rows = [row for row in report["decode"]["per_size"] if row["mode"] == "full"]
    assert full_rows, "the full-decode rows are the reference"
    assert all(row["max_probability_delta"] is None for row in full_rows)
    ceilings = [check for check in report["cross_checks"] if check["name"].startswith("c=16 batching ceiling")]
    assert [check["name"] for check in ceilings] == [
        "c=16 batching ceiling, Amdahl estimate (multipart)",
        "c=16 batching ceiling, Amdahl estimate (raw)",
    ]
    workloads = {workload["name"]: workload for workload in report["workloads"]}
    assert len(workloads) + len(report["skipped_workloads"]) == 3, "photos, sample and 12 MP: run or said skipped"
    for workload in workloads.values():
        assert workload["ceiling"]["images_per_s"] > 0, workload["name"]
        assert [level["concurrency"] for level in workload["levels"]] == [1, 16], workload["name"]
        assert all(level["workload"] == workload["name"] for level in workload["levels"])
    assert [level["concurrency"] for level in workloads["12mp"]["baseline_levels"]] == [1, 16]
    for name in ("photos", "sample"):
        if name in workloads:  # the quick plan's 2 rounds of c=16, each between two ceilings
            assert len(workloads[name]["ceiling"]["rounds_images_per_s"]) == 3, name
            assert [level["concurrency"] for level in workloads[name]["repeated_levels"]] == [16], name
    assert len(workloads["12mp"]["ceiling"]["rounds_images_per_s"]) == 1
    workload_targets = {target["name"]: target for target in report["workload_targets"]}
    assert workload_targets["errors under load, workloads"]["value"] == 0
    assert "12mp: c=16 images/s ÷ 38da6f0 defaults" in workload_targets
    assert output.with_suffix(".md").read_text().startswith("## alexnet-serve benchmark")
    assert "images/s" in result.stdout
