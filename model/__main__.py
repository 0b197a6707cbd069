"""`python -m model export|verify`: build the served ONNX file and check it against the reference."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from model.errors import ModelToolError
from model.export import DEFAULT_OUTPUT, export_model
from model.metadata import ModelCardError
from model.sources import DEFAULT_CACHE_DIR, SOURCES
from model.verify import DEFAULT_BATCH, verify_model

log = logging.getLogger("model")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m model", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    export = commands.add_parser("export", help="write the ONNX model from official or random weights")
    export.add_argument("--weights", choices=sorted(SOURCES), default="bvlc", help="weights source (default: bvlc)")
    export.add_argument("--checkpoint", type=Path, help="use this weights file instead of downloading it")
    export.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help=f"default: {DEFAULT_OUTPUT}")
    export.add_argument("--cache-dir", type=Path, help=f"download cache (default: {DEFAULT_CACHE_DIR})")
    export.add_argument("--seed", type=int, default=0, help="seed for --weights random (default: 0)")
    export.add_argument(
        "--precision",
        choices=["fp32", "fp16"],
        default="fp32",
        help="fp16: half-precision weights and activations, for GPUs (default: fp32)",
    )
    export.add_argument(
        "--skip-hash-check",
        action="store_true",
        help="accept a --checkpoint that is not the pinned release; the model is then marked trained: false",
    )

    verify = commands.add_parser("verify", help="compare onnxruntime with the numpy reference")
    verify.add_argument("path", type=Path)
    verify.add_argument(
        "--batch", type=int, default=DEFAULT_BATCH, help=f"images to compare (default: {DEFAULT_BATCH})"
    )
    verify.add_argument("--seed", type=int, default=0, help="seed of the test images (default: 0)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        if arguments.command == "export":
            return run_export(arguments)
        return run_verify(arguments)
    except (ModelToolError, ModelCardError) as error:
        sys.stderr.write(f"error: {error}\n")
        return 1


def run_export(arguments: argparse.Namespace) -> int:
    summary = export_model(
        arguments.weights,
        checkpoint=arguments.checkpoint,
        output=arguments.output,
        cache_dir=arguments.cache_dir,
        seed=arguments.seed,
        check_hash=not arguments.skip_hash_check,
        precision=arguments.precision,
    )
    sys.stdout.write("\n".join(summary.lines()) + "\n")
    if not summary.trained:
        log.warning("warning: these weights are not the trained release; predictions are not meaningful")
    return 0


def run_verify(arguments: argparse.Namespace) -> int:
    report = verify_model(arguments.path, batch=arguments.batch, seed=arguments.seed)
    sys.stdout.write("\n".join(report.lines()) + "\n")
    return 0 if report.passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
