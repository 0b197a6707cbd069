"""`python -m bench --peer torchserve`: TorchServe 0.12 and our server on the same network, in one run.

../shared/peers/torchserve/run.sh serves torchvision's AlexNet with seed-0 weights and writes that checkpoint;
we import the same checkpoint (`python -m model export --weights torchvision --skip-hash-check`) and serve it
with our defaults. Both are driven by the same load generator (../shared/peers/loadgen.py) with the same
500×375 sample JPEG, TorchServe first, then ours. Besides throughput and latency, each side gets a CPU budget
per image at c=16, from /proc:

- ours: the server's CPU (loadgen `--pids`), split into its event-loop thread (HTTP, multipart, JSON: read
  from /proc/PID/task/PID/stat around the level) and its worker threads; those are split into decode,
  preprocess and inference by timing the same image and the model at the level's mean batch size in this
  process (thread CPU), and "other" is what remains.
- TorchServe: its Java frontend (HTTP, queueing, batching) and its Python workers (decode, preprocess,
  inference, JSON), each from /proc.
- both: the load generator's own CPU.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from app.config import CPU_PROVIDER
from app.preprocessing import decode_image, preprocess
from bench.inprocess import load_service_model, measure_model, service_settings
from bench.procfs import cpu_model_name, machine_busy_seconds, process_cpu_seconds, thread_cpu_seconds
from bench.report import write_text
from bench.server import HOST, ServerProcess, free_port
from bench.standin import REPO_ROOT
from bench.tables import Cell, table

logger = logging.getLogger(__name__)

PEERS_DIR = REPO_ROOT.parent / "shared" / "peers"
PEER_CONFIGS = ("w2-b8", "w1-b1")
PEER_CONCURRENCIES = (1, 16)
SATURATED = 16
# run.sh's own timeouts cover TorchServe; this bounds the whole script (venv build included).
RUN_SH_TIMEOUT_S = 1800
EXPORT_TIMEOUT_S = 600
LOADGEN_GRACE_S = 120
OURS = "alexnet-serve"
TORCHSERVE = "TorchServe"
MODEL_NAME = "alexnet-torchvision-seed0.onnx"


class PeerUnavailableError(RuntimeError):
    """Something the peer run needs is missing here; the message says what."""


@dataclass(frozen=True)
class LoadgenRow:
    """One line of loadgen.py's `--json-out`; CPU percentages are of one core."""

    label: str
    concurrency: int
    requests: int
    errors: int
    throughput_rps: float
    p50_ms: float
    p99_ms: float
    client_cpu_percent: float
    server_cpu_percent_by: dict[str, float]

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> LoadgenRow:
        return cls(
            label=str(document["label"]),
            concurrency=int(document["concurrency"]),
            requests=int(document["requests"]),
            errors=int(document["errors"]),
            throughput_rps=float(document["throughput_rps"]),
            p50_ms=float(document["lat_ms_p50"] or "nan"),
            p99_ms=float(document["lat_ms_p99"] or "nan"),
            client_cpu_percent=float(document["client_cpu_pct"] or 0.0),
            server_cpu_percent_by={key: float(value) for key, value in document["server_cpu_pct_by"].items()},
        )

    @property
    def config(self) -> str:
        """The label without its round suffix: `ts-w2-b8-t1/r1` → `ts-w2-b8-t1`."""
        return self.label.rsplit("/r", 1)[0]

    def cpu_ms_per_request(self, percent: float) -> float:
        """`percent` of one core over the run, as CPU milliseconds per successful request."""
        return round(10.0 * percent / self.throughput_rps, 2) if self.throughput_rps > 0 else float("nan")


@dataclass(frozen=True)
class BudgetLine:
    part: str
    cpu_ms: float
    how: str


@dataclass(frozen=True)
class PeerReport:
    meta: dict[str, Any]
    torchserve: list[LoadgenRow]
    ours: list[LoadgenRow]
    ours_budget: list[BudgetLine]
    torchserve_budget: list[BudgetLine]
    throughput_ratio_c16: float
    p50_c1_ours_ms: float
    p50_c1_torchserve_ms: float
    best_c16_config: str
    best_c1_config: str
    # Server processes' CPU ms per image at c=16 (ours: the server; TorchServe: frontend + workers): what decides
    # throughput when each gets the whole CPU, and what a shared machine's changing load distorts least.
    server_cpu_ms_c16: dict[str, float] = field(default_factory=dict)

    @property
    def cpu_efficiency_ratio_c16(self) -> float:
        """TorchServe's server CPU per image ÷ ours: our throughput over TorchServe's on a CPU-bound machine."""
        ours, peer = self.server_cpu_ms_c16.get(OURS, math.nan), self.server_cpu_ms_c16.get(TORCHSERVE, math.nan)
        return round(peer / ours, 3) if ours > 0 else math.nan


def parse_rows(text: str) -> list[LoadgenRow]:
    return [LoadgenRow.from_json(json.loads(line)) for line in text.splitlines() if line.strip()]


def missing_prerequisites(peers_dir: Path) -> list[str]:
    """Why the peer run cannot happen here (empty when it can)."""
    missing = []
    if shutil.which("java") is None:
        missing.append("java is not installed (TorchServe needs Java 11+: apt-get install -y default-jre-headless)")
    for needed in (peers_dir / "torchserve" / "run.sh", peers_dir / "loadgen.py", peers_dir / "sample.jpg"):
        if not needed.is_file():
            missing.append(f"{needed} is absent (the peer folder comes with ../shared/peers)")
    return missing


def run_sh_env(peer_tmp: Path, configs: Sequence[str], seconds: float, warmup_s: float) -> dict[str, str]:
    """run.sh's knobs for this run: free loopback ports, so another run on the machine cannot collide."""
    grpc = free_port()
    return {
        "PEER_TMP": str(peer_tmp),
        "CONFIGS": " ".join(configs),
        "CONCURRENCIES": " ".join(str(c) for c in PEER_CONCURRENCIES),
        "DURATION": f"{seconds:g}",
        "WARMUP": f"{warmup_s:g}",
        "ROUNDS": "1",
        "MODE": "multipart",
        "MODEL_BENCH_SECONDS": "0",
        "PORT_INF": str(free_port()),
        "PORT_MGMT": str(free_port()),
        "PORT_MET": str(free_port()),
        "PORT_GRPC": str(grpc),
    }


def best_row(rows: Sequence[LoadgenRow], concurrency: int, *, fastest: bool) -> LoadgenRow:
    """At `concurrency`: the highest throughput (`fastest`) or the lowest p50, among error-free rows if any."""
    candidates = [row for row in rows if row.concurrency == concurrency]
    clean = [row for row in candidates if row.errors == 0] or candidates
    if not clean:
        raise ValueError(f"no results at c={concurrency}")
    if fastest:
        return max(clean, key=lambda row: row.throughput_rps)
    return min(clean, key=lambda row: row.p50_ms)


def torchserve_budget(row: LoadgenRow) -> list[BudgetLine]:
    return [
        BudgetLine(
            "frontend (Java: HTTP, queue, batching)", row.cpu_ms_per_request(row.server_cpu_percent_by["java"]), "/proc"
        ),
        BudgetLine(
            "workers (Python: decode, preprocess, inference, JSON)",
            row.cpu_ms_per_request(row.server_cpu_percent_by["workers"]),
            "/proc",
        ),
        BudgetLine("load generator", row.cpu_ms_per_request(row.client_cpu_percent), "/proc (loadgen's own)"),
    ]


def ours_budget(
    row: LoadgenRow, event_loop_share: float, decode_ms: float, preprocess_ms: float, inference_ms: float
) -> list[BudgetLine]:
    server = row.cpu_ms_per_request(row.server_cpu_percent_by["server"])
    http = round(server * event_loop_share, 2)
    other = round(server - http - decode_ms - preprocess_ms - inference_ms, 2)
    return [
        BudgetLine("decode", decode_ms, "same image in process, thread CPU"),
        BudgetLine("preprocess", preprocess_ms, "same image in process, thread CPU"),
        BudgetLine("inference", inference_ms, "model alone at the level's mean batch, in process"),
        BudgetLine("HTTP + JSON (event-loop thread)", http, "/proc/PID/task/PID share of the server's /proc CPU"),
        BudgetLine("other (batcher, thread hand-offs, GC)", other, "server /proc CPU minus the lines above"),
        BudgetLine("load generator", row.cpu_ms_per_request(row.client_cpu_percent), "/proc (loadgen's own)"),
    ]


def run_torchserve(peers_dir: Path, env: Mapping[str, str], log_path: Path) -> list[LoadgenRow]:
    """run.sh from start to end (it stops TorchServe itself); the rows it measured."""
    logger.info("TorchServe: run.sh with %s (about 3 minutes for two configurations)", env["CONFIGS"])
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        completed = subprocess.run(
            ["bash", str(peers_dir / "torchserve" / "run.sh")],
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=RUN_SH_TIMEOUT_S,
            check=False,
        )
    results = Path(env["PEER_TMP"]) / "run" / "results.jsonl"
    if completed.returncode != 0 or not results.is_file():
        raise RuntimeError(f"run.sh failed (exit {completed.returncode}); see {log_path}")
    return parse_rows(results.read_text())


def export_same_network(checkpoint: Path, output: Path, log_path: Path) -> None:
    logger.info("importing %s into %s", checkpoint, output)
    command = [sys.executable, "-m", "model", "export", "--weights", "torchvision", "--checkpoint", str(checkpoint)]
    command += ["--skip-hash-check", "--output", str(output)]
    with log_path.open("ab") as log:
        subprocess.run(
            command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, timeout=EXPORT_TIMEOUT_S, check=True
        )


def run_ours(
    model_path: Path, python: Path, peers_dir: Path, seconds: float, warmup_s: float, log_dir: Path
) -> tuple[list[LoadgenRow], float, float]:
    """Our server under loadgen.py at each concurrency: the rows, the event loop's share of the server's CPU at
    c=16, and the mean batch size at c=16."""
    env = {
        "ALEXNET_MODEL_PATH": str(model_path),
        "ALEXNET_AUTO_EXPORT": "false",
        "ALEXNET_PROVIDERS": CPU_PROVIDER,
    }
    rows = []
    share = batch = float("nan")
    results = log_dir / "ours.jsonl"
    results.unlink(missing_ok=True)
    with ServerProcess(env, cwd=REPO_ROOT, log_path=log_dir / "ours-server.log") as server:
        for concurrency in PEER_CONCURRENCIES:
            command = [str(python), str(peers_dir / "loadgen.py"), "--url", server.url("/v1/predict")]
            command += ["--file", str(peers_dir / "sample.jpg"), "--mode", "multipart", "-c", str(concurrency)]
            command += ["-d", f"{seconds:g}", "--warmup", f"{warmup_s:g}", "--label", f"{OURS}/r1"]
            command += ["--json-out", str(results), "--pids", f"server={server.pid}"]
            metrics_before = server.scrape_metrics()
            loop_before, total_before = thread_cpu_seconds(server.pid, server.pid), process_cpu_seconds(server.pid)
            completed = subprocess.run(
                command, capture_output=True, text=True, timeout=seconds + warmup_s + LOADGEN_GRACE_S, check=False
            )
            loop_after, total_after = thread_cpu_seconds(server.pid, server.pid), process_cpu_seconds(server.pid)
            metrics_after = server.scrape_metrics()
            logger.info("ours c=%d: %s", concurrency, completed.stdout.strip())
            if concurrency == SATURATED:
                share = (loop_after - loop_before) / max(1e-9, total_after - total_before)
                batches = metrics_after["alexnet_batch_size_count"] - metrics_before["alexnet_batch_size_count"]
                images = metrics_after["alexnet_batch_size_sum"] - metrics_before["alexnet_batch_size_sum"]
                batch = images / batches if batches else float("nan")
        rows = parse_rows(results.read_text())
    return rows, share, batch


def in_process_costs(model_path: Path, sample: Path, batch_size: float) -> tuple[float, float, float]:
    """CPU ms of decode, preprocess and inference per image for `sample`, at the server's default settings."""
    settings = service_settings(model_path, [CPU_PROVIDER], {})
    model = load_service_model(settings)
    data = sample.read_bytes()
    pre = model.card.preprocessing
    draft = pre.resize_size if settings.fast_jpeg_decode else None
    decode_cpu, preprocess_cpu = [], []
    for _ in range(30):
        started = time.thread_time()
        decoded = decode_image(data, max_pixels=settings.max_image_pixels, draft_size=draft)
        decoded_at = time.thread_time()
        preprocess(decoded.image, pre)
        decode_cpu.append(decoded_at - started)
        preprocess_cpu.append(time.thread_time() - decoded_at)
    rows = measure_model(model, [max(1, round(batch_size))], seconds=3.0)
    return (
        round(1000.0 * float(np.median(decode_cpu)), 2),
        round(1000.0 * float(np.median(preprocess_cpu)), 2),
        rows[0].cpu_ms_per_image,
    )


def run_peer(peer_tmp: Path, cache_dir: Path, output: Path, *, seconds: float, warmup_s: float) -> int:
    peers_dir = PEERS_DIR
    missing = missing_prerequisites(peers_dir)
    if missing:
        sys.stdout.write("peer run skipped: " + "; ".join(missing) + "\n")
        return 0
    started_at = datetime.now(UTC)
    log_dir = cache_dir / "peer" / started_at.strftime("%Y%m%dT%H%M%S")
    # TorchServe daemonises, so its CPU cannot be told from other processes'; the machine's load is shown instead.
    busy_before, load_before, clock = machine_busy_seconds(), os.getloadavg(), time.perf_counter()
    env = run_sh_env(peer_tmp, PEER_CONFIGS, seconds, warmup_s)
    torchserve = run_torchserve(peers_dir, env, log_dir / "run-sh.log")
    model_path = cache_dir / MODEL_NAME
    export_same_network(peer_tmp / "run" / "alexnet_seed0.pth", model_path, log_dir / "export.log")
    python = peer_tmp / "venv" / "bin" / "python"
    ours, share, batch = run_ours(model_path, python, peers_dir, seconds, warmup_s, log_dir)
    decode_ms, preprocess_ms, inference_ms = in_process_costs(model_path, peers_dir / "sample.jpg", batch)
    busy_percent = 100.0 * (machine_busy_seconds() - busy_before) / (time.perf_counter() - clock)
    load = [round(value, 2) for value in (*load_before, *os.getloadavg())]
    ts_fast, ts_quick = best_row(torchserve, SATURATED, fastest=True), best_row(torchserve, 1, fastest=False)
    ours_fast, ours_quick = best_row(ours, SATURATED, fastest=True), best_row(ours, 1, fastest=False)
    report = PeerReport(
        meta=_meta(started_at, env, batch, busy_percent, load),
        torchserve=torchserve,
        ours=ours,
        ours_budget=ours_budget(ours_fast, share, decode_ms, preprocess_ms, inference_ms),
        torchserve_budget=torchserve_budget(ts_fast),
        throughput_ratio_c16=round(ours_fast.throughput_rps / ts_fast.throughput_rps, 3),
        p50_c1_ours_ms=ours_quick.p50_ms,
        p50_c1_torchserve_ms=ts_quick.p50_ms,
        best_c16_config=ts_fast.config,
        best_c1_config=ts_quick.config,
        server_cpu_ms_c16={
            OURS: ours_fast.cpu_ms_per_request(sum(ours_fast.server_cpu_percent_by.values())),
            TORCHSERVE: ts_fast.cpu_ms_per_request(sum(ts_fast.server_cpu_percent_by.values())),
        },
    )
    write_text(output, json.dumps(asdict(report), indent=2, default=str) + "\n")
    text = render(report)
    write_text(output.with_suffix(".md"), text)
    sys.stdout.write(text + f"\nJSON: {output}\n")
    return 0


def _meta(
    started_at: datetime, env: Mapping[str, str], batch: float, busy_percent: float, load: list[float]
) -> dict[str, Any]:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=False
    ).stdout.strip()
    return {
        "started_at": started_at.isoformat(timespec="seconds"),
        "command": "python -m bench --peer torchserve",
        "commit": commit,
        "cpu": cpu_model_name(),
        "cpu_count": os.cpu_count(),
        "run_sh": {key: env[key] for key in ("CONFIGS", "CONCURRENCIES", "DURATION", "WARMUP", "MODE")},
        "ours_mean_batch_c16": round(batch, 2),
        "machine_busy_percent": round(busy_percent, 1),
        "load_average_before": load[:3],
        "load_average_after": load[3:],
        "host": HOST,
    }


MIN_THROUGHPUT_RATIO = 1.1


def render(report: PeerReport) -> str:
    meta = report.meta
    rows: list[list[Cell]] = [
        [
            row.config,
            row.concurrency,
            row.throughput_rps,
            row.p50_ms,
            row.p99_ms,
            row.errors,
            row.client_cpu_percent,
            ", ".join(f"{key} {value:.0f}" for key, value in row.server_cpu_percent_by.items()),
        ]
        for row in [*report.torchserve, *report.ours]
    ]
    budget: list[list[Cell]] = [[line.part, OURS, line.cpu_ms, line.how] for line in report.ours_budget]
    budget += [[line.part, TORCHSERVE, line.cpu_ms, line.how] for line in report.torchserve_budget]
    for name, lines in ((OURS, report.ours_budget), (TORCHSERVE, report.torchserve_budget)):
        budget.append(["total", name, round(sum(line.cpu_ms for line in lines), 2), ""])
    ratio, p50_ours, p50_peer = report.throughput_ratio_c16, report.p50_c1_ours_ms, report.p50_c1_torchserve_ms
    headline: list[list[Cell]] = [
        [
            f"c={SATURATED} req/s",
            best_row(report.ours, SATURATED, fastest=True).throughput_rps,
            f"{best_row(report.torchserve, SATURATED, fastest=True).throughput_rps} ({report.best_c16_config})",
            ratio,
            f">= {MIN_THROUGHPUT_RATIO}",
            "PASS" if ratio >= MIN_THROUGHPUT_RATIO else "FAIL",
        ],
        [
            f"c={SATURATED} images per server CPU-second",
            round(1000.0 / report.server_cpu_ms_c16[OURS], 1),
            round(1000.0 / report.server_cpu_ms_c16[TORCHSERVE], 1),
            report.cpu_efficiency_ratio_c16,
            f">= {MIN_THROUGHPUT_RATIO}",
            "PASS" if report.cpu_efficiency_ratio_c16 >= MIN_THROUGHPUT_RATIO else "FAIL",
        ],
        [
            "c=1 p50 ms",
            p50_ours,
            f"{p50_peer} ({report.best_c1_config})",
            round(p50_ours / p50_peer, 3),
            "<= 1",
            "PASS" if p50_ours <= p50_peer else "FAIL",
        ],
    ]
    return (
        "## alexnet-serve vs TorchServe 0.12, same network (torchvision AlexNet, seed-0 weights)\n\n"
        f"- `{meta['command']}` at {meta['started_at']}, commit {meta['commit']}; {meta['cpu']} "
        f"({meta['cpu_count']} cores)\n"
        f"- machine: {meta['machine_busy_percent']}% busy on average (100 = one core; ours and everyone else's), "
        f"load average {meta['load_average_before']} before, {meta['load_average_after']} after; a server "
        "whose CPU % stays well below the cores' total at c=16 was starved by other processes\n"
        f"- run.sh: {meta['run_sh']}; ours: our defaults, same loadgen.py, same 500×375 sample, multipart\n\n"
        + table(
            "Headline (TorchServe: its best configuration per line)",
            ["measure", OURS, TORCHSERVE, "ours ÷ TorchServe", "want", "result"],
            headline,
        )
        + "\n"
        + table(
            "Every configuration (loadgen.py)",
            ["server", "c", "req/s", "p50 ms", "p99 ms", "errors", "loadgen CPU %", "server CPU % by process"],
            rows,
        )
        + "\n"
        + table(
            f"CPU per image at c={SATURATED} (ms of CPU; ours at mean batch {meta['ours_mean_batch_c16']}, "
            f"TorchServe {report.best_c16_config})",
            ["part", "server", "CPU ms/image", "how"],
            budget,
        )
    )
