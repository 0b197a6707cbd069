"""`python -m bench [--quick] [--model PATH] [--output PATH] ...`: run the benchmark, print the tables, write JSON.

`python -m bench --peer torchserve`: TorchServe 0.12 and this server on the same network, side by side."""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

from bench.peer import run_peer
from bench.plan import CUDA_MODEL_BATCH_SIZES, FULL_PLAN, QUICK_PLAN
from bench.report import write_json, write_text
from bench.suite import REPO_ROOT, Options, run_suite
from bench.tables import render, summary

DEFAULT_OUTPUT = REPO_ROOT / "bench" / "results" / "latest.json"
DEFAULT_CACHE_DIR = Path(tempfile.gettempdir()) / "alexnet-serve-bench"
DEFAULT_PEER_TMP = Path(tempfile.gettempdir()) / "torchserve-peer"
DEFAULT_PEER_OUTPUT = REPO_ROOT / "bench" / "results" / "peer-torchserve.json"
# Exit status when the run completed but a target failed (distinct from a crash's 1).
TARGETS_FAILED_EXIT_CODE = 2
# run.sh's default warm-up, for both servers.
PEER_WARMUP_S = 3.0


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a short run that exercises every phase (smoke test)")
    parser.add_argument("--model", type=Path, help="benchmark this ONNX file instead of a cached random-weights export")
    parser.add_argument("--fp16-model", type=Path, help="also time this fp16 export alone (GPU check)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="cuda: require the CUDA provider")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help=f"JSON results (default {DEFAULT_OUTPUT})")
    parser.add_argument(
        "--cache-dir", type=Path, default=DEFAULT_CACHE_DIR, help="generated images, model, server logs"
    )
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="ALEXNET_KEY=VALUE",
        help="a server setting for both servers (repeatable), e.g. ALEXNET_BATCH_TIMEOUT_MS=0",
    )
    parser.add_argument(
        "--print",
        dest="printed",
        choices=("full", "summary"),
        default="full",
        help="every table, or one summary table (the full report is written beside the JSON, as .md)",
    )
    parser.add_argument("--strict", action="store_true", help=f"exit {TARGETS_FAILED_EXIT_CODE} when a target fails")
    parser.add_argument(
        "--peer", choices=("torchserve",), help="instead: the peer and this server on the same network (slow)"
    )
    parser.add_argument(
        "--peer-tmp", type=Path, default=DEFAULT_PEER_TMP, help=f"run.sh's PEER_TMP (default {DEFAULT_PEER_TMP})"
    )
    parser.add_argument("--peer-seconds", type=float, default=15.0, help="measured seconds per level (peer mode)")
    return parser.parse_args(argv)


def _server_env(pairs: list[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, separator, value = pair.partition("=")
        if not separator or not key.startswith("ALEXNET_"):
            raise SystemExit(f"--server-env takes ALEXNET_KEY=VALUE, got {pair!r}")
        env[key] = value
    return env


def main(argv: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else argv
    args = parse_args(arguments)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s", stream=sys.stderr)
    # The app's own startup warnings (untrained weights) repeat once per session; the report says it once.
    logging.getLogger("app").setLevel(logging.ERROR)
    if args.peer is not None:
        output = DEFAULT_PEER_OUTPUT if args.output == DEFAULT_OUTPUT else args.output
        return run_peer(args.peer_tmp, args.cache_dir, output, seconds=args.peer_seconds, warmup_s=PEER_WARMUP_S)
    plan = QUICK_PLAN if args.quick else FULL_PLAN
    if args.device == "cuda":
        plan = plan.with_batch_sizes(CUDA_MODEL_BATCH_SIZES)
    options = Options(
        plan=plan,
        device=args.device,
        model=args.model,
        fp16_model=args.fp16_model,
        cache_dir=args.cache_dir,
        server_env=_server_env(args.server_env),
        argv=arguments,
    )
    report = run_suite(options)
    write_json(report, args.output)  # first: a rendering problem must not lose the measurements
    full = render(report)
    markdown = args.output.with_suffix(".md")
    write_text(markdown, full)
    sys.stdout.write(summary(report) if args.printed == "summary" else full)
    sys.stdout.write(f"\nJSON: {args.output}\nreport: {markdown}\n")
    if args.strict and not report.passed:
        return TARGETS_FAILED_EXIT_CODE
    return 0


if __name__ == "__main__":
    sys.exit(main())
