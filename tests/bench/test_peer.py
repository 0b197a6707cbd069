"""The peer mode's plumbing: loadgen.py's JSON lines, the best configuration, the CPU budgets, the skip."""

from __future__ import annotations

import json
import logging
import math
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import peer
from bench.__main__ import main
from bench.peer import LoadgenRow, best_row, missing_prerequisites, ours_budget, parse_rows, torchserve_budget
from bench.procfs import process_cpu_seconds, thread_cpu_seconds

# Two lines as ../shared/peers/loadgen.py writes them (from the run in issue 12).
TORCHSERVE_LINES = """\
{"label": "ts-w2-b8-t1/r1", "url": "http://127.0.0.1:18080/predictions/alexnet", "mode": "multipart", \
"concurrency": 16, "duration_s": 15.079, "requests": 1336, "ok": 1336, "errors": 0, "error_kinds": {}, \
"throughput_rps": 88.599, "lat_ms_mean": 180.09, "lat_ms_p50": 175.76, "lat_ms_p95": 207.67, "lat_ms_p99": 255.27, \
"lat_ms_max": 266.94, "client_cpu_pct": 2.1, "server_cpu_pct": 191.5, \
"server_cpu_pct_by": {"java": 12.3, "workers": 179.2}, "image_bytes": 44436, "time": "2026-11-29T19:05:02"}

{"label": "ts-w1-b1-t2/r1", "url": "http://127.0.0.1:18080/predictions/alexnet", "mode": "multipart", \
"concurrency": 16, "duration_s": 15.358, "requests": 601, "ok": 601, "errors": 0, "error_kinds": {}, \
"throughput_rps": 39.133, "lat_ms_mean": 404.11, "lat_ms_p50": 394.53, "lat_ms_p95": 498.63, "lat_ms_p99": 536.85, \
"lat_ms_max": 543.22, "client_cpu_pct": 2.5, "server_cpu_pct": 165.5, \
"server_cpu_pct_by": {"java": 10.9, "workers": 154.6}, "image_bytes": 44436, "time": "2026-11-29T19:05:48"}
"""


def _row(label: str, concurrency: int, rps: float, p50: float, errors: int = 0) -> LoadgenRow:
    return LoadgenRow(label, concurrency, 100, errors, rps, p50, 2 * p50, 2.0, {"server": 150.0})


def test_parse_rows_reads_loadgen_lines_and_skips_blank_ones() -> None:
    rows = parse_rows(TORCHSERVE_LINES)
    assert [(row.config, row.concurrency, row.throughput_rps, row.p50_ms) for row in rows] == [
        ("ts-w2-b8-t1", 16, 88.599, 175.76),
        ("ts-w1-b1-t2", 16, 39.133, 394.53),
    ]
    assert rows[0].server_cpu_percent_by == {"java": 12.3, "workers": 179.2}
    assert rows[0].client_cpu_percent == 2.1


def test_a_run_without_answers_has_no_latency() -> None:
    document = json.loads(TORCHSERVE_LINES.splitlines()[0])
    document.update(lat_ms_p50=None, lat_ms_p99=None, client_cpu_pct=None)
    row = LoadgenRow.from_json(document)
    assert math.isnan(row.p50_ms), "nothing was answered"
    assert row.client_cpu_percent == 0.0


def test_cpu_per_request_turns_percent_of_a_core_into_milliseconds() -> None:
    row = parse_rows(TORCHSERVE_LINES)[0]
    # 179.2% of one core at 88.599 requests/s: 1.792 s of CPU per second / 88.599 = 20.23 ms per request.
    assert row.cpu_ms_per_request(179.2) == 20.23
    assert math.isnan(_row("x/r1", 16, 0.0, 1.0).cpu_ms_per_request(50.0)), "no requests, no cost per request"


def test_torchserve_budget_splits_frontend_workers_and_loadgen() -> None:
    budget = torchserve_budget(parse_rows(TORCHSERVE_LINES)[0])
    assert [(line.part.split(" ")[0], line.cpu_ms) for line in budget] == [
        ("frontend", 1.39),
        ("workers", 20.23),
        ("load", 0.24),
    ]


def test_ours_budget_leaves_the_remainder_as_other() -> None:
    row = _row("alexnet-serve/r1", 16, 100.0, 50.0)  # server 150% at 100/s: 15 ms per request
    budget = {line.part.split(" ")[0]: line.cpu_ms for line in ours_budget(row, 0.2, 1.5, 2.0, 8.0)}
    assert budget == {"decode": 1.5, "preprocess": 2.0, "inference": 8.0, "HTTP": 3.0, "other": 0.5, "load": 0.2}


def test_best_row_prefers_error_free_rows() -> None:
    rows = [
        _row("a/r1", 16, 90.0, 170.0, errors=3),
        _row("b/r1", 16, 80.0, 180.0),
        _row("c/r1", 16, 70.0, 160.0),
        _row("a/r1", 1, 30.0, 26.0),
        _row("b/r1", 1, 35.0, 28.0),
    ]
    assert best_row(rows, 16, fastest=True).config == "b"
    assert best_row(rows, 16, fastest=False).config == "c"
    assert best_row(rows, 1, fastest=False).config == "a"
    with pytest.raises(ValueError, match="no results at c=4"):
        best_row(rows, 4, fastest=True)


def test_run_sh_env_asks_for_both_concurrencies_on_distinct_free_ports(tmp_path: Path) -> None:
    env = peer.run_sh_env(tmp_path, ("w2-b8", "w1-b1"), 15.0, 3.0)
    assert env["CONFIGS"] == "w2-b8 w1-b1"
    assert env["CONCURRENCIES"] == "1 16"
    assert (env["DURATION"], env["WARMUP"], env["ROUNDS"], env["MODE"]) == ("15", "3", "1", "multipart")
    assert env["PEER_TMP"] == str(tmp_path)
    ports = [int(env[key]) for key in ("PORT_INF", "PORT_MGMT", "PORT_MET", "PORT_GRPC")]
    assert len(set(ports)) == 4


def test_missing_peer_folder_and_java_are_each_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("bench.peer.shutil.which", lambda name: None)
    missing = missing_prerequisites(tmp_path)
    assert missing[0].startswith("java is not installed")
    assert [message.split(" is absent")[0] for message in missing[1:]] == [
        str(tmp_path / "torchserve" / "run.sh"),
        str(tmp_path / "loadgen.py"),
        str(tmp_path / "sample.jpg"),
    ]


@pytest.fixture
def app_log_level() -> Iterator[None]:
    """The bench's `main` quiets the app's loggers for its run; tests after this one need them back."""
    app_logger = logging.getLogger("app")
    level = app_logger.level
    yield
    app_logger.setLevel(level)


@pytest.mark.usefixtures("app_log_level")
def test_peer_mode_skips_with_a_message_when_the_peer_is_absent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(peer, "PEERS_DIR", tmp_path / "no-peers")
    assert main(["--peer", "torchserve", "--cache-dir", str(tmp_path / "cache")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("peer run skipped: ")
    assert f"{tmp_path / 'no-peers' / 'torchserve' / 'run.sh'} is absent" in out
    assert not (tmp_path / "cache").exists(), "nothing is started or written when the peer is missing"


def test_thread_cpu_is_part_of_the_process_cpu() -> None:
    deadline = process_cpu_seconds(os.getpid()) + 0.05
    while process_cpu_seconds(os.getpid()) < deadline:
        sum(range(10_000))
    own = thread_cpu_seconds(os.getpid(), threading.get_native_id())
    assert 0.0 < own <= process_cpu_seconds(os.getpid())


def test_render_puts_both_servers_side_by_side() -> None:
    torchserve = [*parse_rows(TORCHSERVE_LINES), _row("ts-w1-b1-t2/r1", 1, 35.0, 26.4)]
    ours = [_row("alexnet-serve/r1", 16, 100.0, 150.0), _row("alexnet-serve/r1", 1, 40.0, 24.0)]
    report = peer.PeerReport(
        meta={
            "command": "python -m bench --peer torchserve",
            "started_at": "2026-11-29T20:00:00+00:00",
            "commit": "abc1234",
            "cpu": "Test CPU",
            "cpu_count": 2,
            "machine_busy_percent": 190.0,
            "load_average_before": [1.0, 1.0, 1.0],
            "load_average_after": [2.0, 1.0, 1.0],
            "run_sh": {"CONFIGS": "w2-b8 w1-b1"},
            "ours_mean_batch_c16": 7.5,
        },
        torchserve=torchserve,
        ours=ours,
        ours_budget=ours_budget(ours[0], 0.2, 1.5, 2.0, 8.0),
        torchserve_budget=torchserve_budget(torchserve[0]),
        throughput_ratio_c16=round(100.0 / 88.599, 3),
        p50_c1_ours_ms=24.0,
        p50_c1_torchserve_ms=26.4,
        best_c16_config="ts-w2-b8-t1",
        best_c1_config="ts-w1-b1-t2",
        server_cpu_ms_c16={peer.OURS: 15.0, peer.TORCHSERVE: 21.62},
    )
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in peer.render(report).splitlines()]
    rows = [row for row in rows if len(row) > 1]
    assert ["c=16 req/s", "100.0", "88.599 (ts-w2-b8-t1)", "1.13", ">= 1.1", "PASS"] in rows
    assert ["c=1 p50 ms", "24.0", "26.4 (ts-w1-b1-t2)", "0.91", "<= 1", "PASS"] in rows
    # 1000 / 15 ms and 1000 / 21.62 ms of server CPU per image: 1.44x on a machine where each has the whole CPU.
    assert ["c=16 images per server CPU-second", "66.7", "46.3", "1.44", ">= 1.1", "PASS"] in rows
    # Ours: 15 ms of server CPU per image plus 0.2 ms of load generator; TorchServe: 1.39 + 20.23 + 0.24.
    assert ["total", "alexnet-serve", "15.2", ""] in rows
    assert ["total", "TorchServe", "21.9", ""] in rows
