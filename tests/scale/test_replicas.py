"""Three replicas of the real server behind HAProxy on this machine: what a third of the work per replica buys on
two cores, and a replica sent SIGTERM mid-load leaving the rotation without a single failed request."""

from __future__ import annotations

import io
import json
import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.scale.cluster import (
    LoadBalancer,
    LoadResult,
    Replica,
    generate_load,
    start_load_balancer,
    start_replicas,
)

pytestmark = pytest.mark.slow

REPLICA_COUNT = 3
DRAIN_DELAY_S = 4.0
GRACEFUL_SHUTDOWN_S = 5.0
# One inference run of one thread and one decode thread per replica, like a pod whose threads follow a 1-CPU limit:
# three replicas then share two cores without oversubscribing them (docs/kubernetes.md, has the 2-thread measurement
# too). No solo session: with one CPU it would add nothing.
REPLICA_ENV = {
    "ALEXNET_INFERENCE_INSTANCES": "1",
    "ALEXNET_INTRA_OP_THREADS": "1",
    "ALEXNET_SOLO_SESSION": "false",
    "ALEXNET_DECODE_THREADS": "1",
    "ALEXNET_DRAIN_DELAY_S": str(DRAIN_DELAY_S),
    "ALEXNET_GRACEFUL_SHUTDOWN_S": str(GRACEFUL_SHUTDOWN_S),
}
# One process with nothing pinned: its default plan (model instances and threads per usable CPU) should use the
# whole machine by itself, as three one-CPU replicas do together (issue 12).
WHOLE_ENV = {key: value for key, value in REPLICA_ENV.items() if key.endswith("_S")}
WHOLE = "whole"
# Enough clients that each of three replicas still forms batches; the same load for 1 and for 3 replicas.
CONCURRENCY = 24
MAX_REQUESTS = 5_000
WARM_UP_S = 1.5
ROUND_S = 5.0
# 1 and 3 pinned replicas and the whole process, interleaved, so drift on a shared machine favours none of them.
ROUNDS: tuple[int | str, ...] = (1, REPLICA_COUNT, WHOLE, 1, REPLICA_COUNT, WHOLE)
# A sanity bound, not a speed-up claim: on two shared cores the ratio measured 0.6 to 1.9 with other work running
# (docs/kubernetes.md); below half, something is wrong (replicas crashing, the balancer misrouting).
MIN_THROUGHPUT_RATIO = 0.5
# With three replicas, each must take a real part of the load (a third each, ideally).
MIN_SHARE = 0.15
DRAIN_LOAD_S = 12.0
VICTIM_REQUESTS_BEFORE_SIGTERM = 10
STATUS_POLL_S = 0.02


def _jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.linear_gradient("L").convert("RGB").resize((320, 240)).save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.fixture
def cluster(
    served_model_path: Path, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[list[Replica], LoadBalancer]]:
    # The admin socket goes in a short directory: a Unix socket path is limited to 107 bytes.
    with (
        start_replicas(REPLICA_COUNT, served_model_path, tmp_path, REPLICA_ENV) as replicas,
        start_load_balancer(replicas, tmp_path_factory.mktemp("lb")) as balancer,
    ):
        yield replicas, balancer


@pytest.fixture
def cluster_and_whole(
    served_model_path: Path, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[list[Replica], Replica, LoadBalancer]]:
    """The pinned replicas and one process at its defaults, all behind one balancer (so both pay for it)."""
    with (
        start_replicas(REPLICA_COUNT, served_model_path, tmp_path, REPLICA_ENV) as replicas,
        start_replicas(1, served_model_path, tmp_path, WHOLE_ENV, prefix=WHOLE) as (whole,),
        start_load_balancer([*replicas, whole], tmp_path_factory.mktemp("lb")) as balancer,
    ):
        yield replicas, whole, balancer


def _serve_only(balancer: LoadBalancer, everyone: list[Replica], chosen: list[Replica]) -> None:
    """Put `chosen` in rotation and everyone else in maintenance, and wait until HAProxy agrees."""
    names = {replica.name for replica in chosen}
    for replica in everyone:
        balancer.set_enabled(replica.name, replica.name in names)
    balancer.wait_for({replica.name: "UP" if replica.name in names else "MAINT" for replica in everyone}, 10.0)


def _throughput(results: list[LoadResult]) -> float:
    return sum(result.statuses[200] for result in results) / sum(result.seconds for result in results)


def test_three_replicas_against_one_behind_the_same_balancer(
    cluster_and_whole: tuple[list[Replica], Replica, LoadBalancer], tmp_path: Path, scale_report: list[str]
) -> None:
    replicas, whole, balancer = cluster_and_whole
    everyone = [*replicas, whole]
    body = _jpeg()
    results: dict[int | str, list[LoadResult]] = {round_: [] for round_ in ROUNDS}
    routed = Counter[str]()
    for round_ in ROUNDS:
        _serve_only(balancer, everyone, [whole] if round_ == WHOLE else replicas[: int(round_)])
        generate_load(balancer.url, body, concurrency=CONCURRENCY, seconds=WARM_UP_S, max_requests=MAX_REQUESTS)
        before = balancer.stats()
        result = generate_load(balancer.url, body, concurrency=CONCURRENCY, seconds=ROUND_S, max_requests=MAX_REQUESTS)
        assert result.errors == [] and set(result.statuses) == {200}, (result.statuses, result.errors[:5])
        results[round_].append(result)
        if round_ == REPLICA_COUNT:
            routed.update(
                {
                    replica.name: balancer.stats()[replica.name].sessions_total - before[replica.name].sessions_total
                    for replica in replicas
                }
            )
    one, many, single = (_throughput(results[round_]) for round_ in (1, REPLICA_COUNT, WHOLE))
    shares = {name: round(sessions / routed.total(), 3) for name, sessions in sorted(routed.items())}
    report = {
        "replicas": REPLICA_COUNT,
        "throughput_1_replica_rps": round(one, 2),
        f"throughput_{REPLICA_COUNT}_replicas_rps": round(many, 2),
        "throughput_whole_process_rps": round(single, 2),
        "ratio": round(many / one, 2),
        "whole_process_vs_replicas": round(single / many, 2),
        "share_per_replica": shares,
        "concurrency": CONCURRENCY,
        "seconds_per_round": ROUND_S,
        "rounds": list(ROUNDS),
        "replica_env": REPLICA_ENV,
        "whole_process_env": WHOLE_ENV,
        "cpu_count": os.cpu_count(),
    }
    report_path = tmp_path / "scale-out.json"
    report_path.write_text(json.dumps(report, indent=2))
    scale_report.append(
        f"{REPLICA_COUNT} replicas vs 1 behind HAProxy, {CONCURRENCY} clients, {os.cpu_count()} CPUs: "
        f"{many:.1f} vs {one:.1f} images/s, ratio {many / one:.2f}; one process at its defaults {single:.1f} "
        f"images/s, {single / many:.2f}x the {REPLICA_COUNT} replicas ({report_path})"
    )
    assert one > 0 and many / one >= MIN_THROUGHPUT_RATIO, report
    # The same sanity bound for the whole process: far below the replicas, its plan is not using the machine.
    assert single / many >= MIN_THROUGHPUT_RATIO, report
    assert min(shares.values()) >= MIN_SHARE, report


def test_sigterm_takes_a_replica_out_of_rotation_without_failed_requests(
    cluster: tuple[list[Replica], LoadBalancer], scale_report: list[str]
) -> None:
    replicas, balancer = cluster
    victim, survivors = replicas[-1], replicas[:-1]
    body = _jpeg()
    with ThreadPoolExecutor(1) as pool:
        load = pool.submit(
            generate_load, balancer.url, body, concurrency=CONCURRENCY, seconds=DRAIN_LOAD_S, max_requests=MAX_REQUESTS
        )
        # Mid-load: once the victim has served its share of a few dozen requests.
        deadline = time.monotonic() + DRAIN_LOAD_S / 2
        while balancer.stats()[victim.name].sessions_total < VICTIM_REQUESTS_BEFORE_SIGTERM:
            assert time.monotonic() < deadline, "the victim got too little traffic before SIGTERM"
            time.sleep(STATUS_POLL_S)
        victim.process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        while not balancer.stats()[victim.name].status.startswith("DOWN"):
            assert time.monotonic() - signalled < DRAIN_DELAY_S, "HAProxy still routes to the draining replica"
            time.sleep(STATUS_POLL_S)
        out_of_rotation_s = time.monotonic() - signalled
        at_down = balancer.stats()
        # Taken out because /health/ready said 503, while the replica still served: not because its port closed.
        assert (at_down[victim.name].check_status, at_down[victim.name].check_code) == ("L7STS", "503")
        assert httpx.get(f"{victim.server.url}/health/live", timeout=5.0).status_code == 200
        assert victim.process.wait(timeout=DRAIN_DELAY_S + GRACEFUL_SHUTDOWN_S + 10.0) == 0, victim.server.log()
        exited_s = time.monotonic() - signalled
        result = load.result()
    final = balancer.stats()

    assert result.errors == [], result.errors[:5]
    assert set(result.statuses) == {200}, result.statuses
    # Not one request reached the victim after HAProxy marked it DOWN; the survivors took them all.
    assert final[victim.name].sessions_total == at_down[victim.name].sessions_total
    for survivor in survivors:
        assert final[survivor.name].sessions_total > at_down[survivor.name].sessions_total
    scale_report.append(
        f"SIGTERM under load: out of rotation after {out_of_rotation_s:.2f} s, exited 0 after {exited_s:.1f} s "
        f"(drain delay {DRAIN_DELAY_S:.0f} s); {result.statuses[200]} requests, all 200"
    )
