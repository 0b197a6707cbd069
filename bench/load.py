"""The load generator: a separate process driving the server over keep-alive HTTP/1.1 connections.

`python -m bench.load` reads a `LoadSpec` as JSON on stdin and writes a `LoadRun` as JSON on stdout.
It is a closed loop: each of `concurrency` connections sends its next request as soon as the last one
answered, cycling through the image set. Request bytes are built once, before the clock starts, and the
client speaks HTTP over bare asyncio streams, so it takes as little CPU as possible from a machine it
shares with the server; the CPU it did use is reported with the results.

Requests issued in the first `warmup_s` are not measured. Throughput counts successful responses that
arrive inside the measured window; latencies are those of requests issued inside it. A run stops issuing
at the window's end or after `max_requests` measured requests, whichever comes first.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.plan import BodyKind

PREDICT_PATH = "/v1/predict"
MULTIPART_BOUNDARY = "alexnet-bench-7d3c2f1e9a"
# Past this, a request counts as an error and its connection is replaced.
REQUEST_TIMEOUT_S = 60.0
# Extra wall time the parent allows the child beyond the planned run, for start-up and draining.
CHILD_GRACE_S = 90.0
MAX_ERROR_SAMPLES = 5


class ProtocolError(Exception):
    """The server's reply is not HTTP/1.1 as this client understands it."""


@dataclass(frozen=True)
class LoadSpec:
    host: str
    port: int
    body: BodyKind
    concurrency: int
    warmup_s: float
    duration_s: float
    max_requests: int
    image_paths: list[str]


@dataclass(frozen=True)
class RequestRecord:
    """One measured request; `server_ms` holds the Server-Timing stages: decode, preprocess, queue, infer, total."""

    image: int
    latency_ms: float
    status: int
    server_ms: list[float] | None


@dataclass(frozen=True)
class LoadRun:
    spec: LoadSpec
    window_s: float
    ok_in_window: int
    # Successful responses over the whole run (warm-up and drain too), for per-image CPU costs.
    ok_total: int
    records: list[RequestRecord]
    errors: int
    error_samples: list[str]
    client_cpu_s: float
    wall_s: float

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> LoadRun:
        records = [RequestRecord(**record) for record in document.pop("records")]
        spec = LoadSpec(**document.pop("spec"))
        return cls(spec=spec, records=records, **document)


def run_load(spec: LoadSpec, cwd: Path) -> LoadRun:
    """Run the load generator in its own process and return what it measured."""
    completed = subprocess.run(
        [sys.executable, "-m", "bench.load"],
        input=json.dumps(asdict(spec)),
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=spec.warmup_s + spec.duration_s + REQUEST_TIMEOUT_S + CHILD_GRACE_S,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"the load generator failed (exit {completed.returncode}): {completed.stderr.strip()}")
    run: LoadRun = LoadRun.from_json(json.loads(completed.stdout))
    return run


def request_bytes(spec: LoadSpec, data: bytes, name: str) -> bytes:
    """The complete request (head + body) for one image, as `spec.body` says to send it."""
    if spec.body == "multipart":
        body = b"".join(
            (
                f"--{MULTIPART_BOUNDARY}\r\n".encode(),
                f'Content-Disposition: form-data; name="file"; filename="{name}"\r\n'.encode(),
                b"Content-Type: image/jpeg\r\n\r\n",
                data,
                f"\r\n--{MULTIPART_BOUNDARY}--\r\n".encode(),
            )
        )
        content_type = f"multipart/form-data; boundary={MULTIPART_BOUNDARY}"
    else:
        body, content_type = data, "image/jpeg"
    head = (
        f"POST {PREDICT_PATH} HTTP/1.1\r\nHost: {spec.host}:{spec.port}\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("ascii") + body


async def exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> tuple[int, dict[str, str], bytes]:
    """Send one request and read its response: (status, lower-cased headers, body)."""
    writer.write(request)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise ProtocolError(f"bad status line {status_line!r}")
    headers: dict[str, str] = {}
    for line in header_lines:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        body = await _read_chunked(reader)
    else:
        raise ProtocolError("response has neither Content-Length nor chunked encoding")
    return int(parts[1]), headers, body


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    chunks: list[bytes] = []
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            return b"".join(chunks)
        chunks.append(await reader.readexactly(size))
        await reader.readexactly(2)


def parse_server_timing(header: str | None) -> list[float] | None:
    """`decode;dur=1.2, preprocess;dur=…` → the five durations in order, or None when absent."""
    if not header:
        return None
    durations = {}
    for entry in header.split(","):
        name, _, parameters = entry.strip().partition(";")
        for parameter in parameters.split(";"):
            key, _, value = parameter.partition("=")
            if key.strip() == "dur":
                durations[name] = float(value)
    stages = ("decode", "preprocess", "queue", "infer", "total")
    return [durations[stage] for stage in stages] if all(stage in durations for stage in stages) else None


async def drive(spec: LoadSpec) -> LoadRun:
    paths = [Path(path) for path in spec.image_paths]
    requests = [request_bytes(spec, path.read_bytes(), path.name) for path in paths]
    counter = itertools.count()
    records: list[RequestRecord] = []
    error_samples: list[str] = []
    errors = 0
    ok_in_window = 0
    ok_total = 0
    measured = 0
    cpu_started = _cpu_seconds()
    started = time.perf_counter()
    window_start = started + spec.warmup_s
    window_end = window_start + spec.duration_s

    async def connection() -> None:
        nonlocal errors, ok_in_window, ok_total, measured, window_end
        reader, writer = await asyncio.open_connection(spec.host, spec.port)
        try:
            while (issued_at := time.perf_counter()) < window_end:
                in_window = issued_at >= window_start
                if in_window:
                    measured += 1
                    if measured > spec.max_requests:
                        window_end = issued_at
                        break
                image = next(counter) % len(requests)
                try:
                    async with asyncio.timeout(REQUEST_TIMEOUT_S):
                        status, headers, body = await exchange(reader, writer, requests[image])
                except (
                    OSError,
                    EOFError,
                    asyncio.IncompleteReadError,
                    asyncio.LimitOverrunError,
                    TimeoutError,
                    ProtocolError,
                ) as error:
                    errors += 1
                    _sample(error_samples, f"{type(error).__name__}: {error}")
                    writer.close()
                    reader, writer = await asyncio.open_connection(spec.host, spec.port)
                    continue
                finished_at = time.perf_counter()
                ok = status == 200 and b'"top1"' in body
                if not ok:
                    errors += 1
                    _sample(error_samples, f"HTTP {status}: {body[:200].decode('utf-8', 'replace')}")
                else:
                    ok_total += 1
                    ok_in_window += window_start <= finished_at < window_end
                if in_window:
                    records.append(
                        RequestRecord(
                            image=image,
                            latency_ms=round((finished_at - issued_at) * 1000.0, 3),
                            status=status,
                            server_ms=parse_server_timing(headers.get("server-timing")),
                        )
                    )
                if headers.get("connection", "").lower() == "close":
                    writer.close()
                    reader, writer = await asyncio.open_connection(spec.host, spec.port)
        finally:
            writer.close()

    await asyncio.gather(*(connection() for _ in range(spec.concurrency)))
    return LoadRun(
        spec=spec,
        window_s=round(max(0.0, window_end - window_start), 3),
        ok_in_window=ok_in_window,
        ok_total=ok_total,
        records=records,
        errors=errors,
        error_samples=error_samples,
        client_cpu_s=round(_cpu_seconds() - cpu_started, 3),
        wall_s=round(time.perf_counter() - started, 3),
    )


def _sample(samples: list[str], message: str) -> None:
    if len(samples) < MAX_ERROR_SAMPLES:
        samples.append(message)


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    spec = LoadSpec(**json.loads(sys.stdin.read()))
    run = asyncio.run(drive(spec))
    sys.stdout.write(json.dumps(asdict(run)))


if __name__ == "__main__":
    main()
