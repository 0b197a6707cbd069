"""`alexnet-predict IMAGE… [--url URL] [--top-k K] [--json]`: classify files with a running server.

Standard library only, so it works wherever Python does. Images are sent as raw bodies; a directory
stands for the image files directly inside it. Exit status: 0 all classified, 1 any image failed,
2 the server could not be reached or the arguments are wrong.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from app.config import DEFAULT_TOP_K, MAX_TOP_K

DEFAULT_URL = "http://127.0.0.1:8000"
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})
TIMEOUT_S = 60.0
EXIT_OK, EXIT_FAILED, EXIT_UNREACHABLE = 0, 1, 2


class ServerUnreachableError(Exception):
    pass


@dataclass(frozen=True)
class Outcome:
    path: Path
    status: int
    body: dict[str, Any]

    @property
    def ok(self) -> bool:
        return self.status == 200


def image_paths(arguments: Sequence[str]) -> list[Path]:
    """Files as given; directories expanded to the image files directly inside them, sorted."""
    paths: list[Path] = []
    for argument in arguments:
        path = Path(argument)
        if path.is_dir():
            paths.extend(sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES))
        else:
            paths.append(path)
    return paths


def classify(path: Path, url: str, top_k: int, api_key: str | None) -> Outcome:
    try:
        data = path.read_bytes()
    except OSError as error:
        return Outcome(path, 0, {"error": {"code": "unreadable_file", "message": error.strerror or str(error)}})
    headers = {"Content-Type": "application/octet-stream"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    request = urllib.request.Request(
        f"{url.rstrip('/')}/v1/predict?top_k={top_k}", data=data, headers=headers, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            return Outcome(path, response.status, json.loads(response.read()))
    except urllib.error.HTTPError as error:
        try:
            body = json.loads(error.read())
        except ValueError:
            body = {"error": {"code": "http_error", "message": f"HTTP {error.code}"}}
        return Outcome(path, error.code, body)
    except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
        reason = getattr(error, "reason", error)
        raise ServerUnreachableError(f"cannot reach {url}: {reason}") from None


def write_table(outcomes: list[Outcome], out: TextIO) -> None:
    for outcome in outcomes:
        out.write(f"{outcome.path}\n")
        if not outcome.ok:
            error = outcome.body.get("error", {})
            out.write(f"  error {outcome.status} {error.get('code', '?')}: {error.get('message', '')}\n")
            continue
        for rank, score in enumerate(outcome.body["predictions"], start=1):
            out.write(f"  {rank:>2}. {score['probability'] * 100:6.2f}%  {score['wnid']}  {score['label']}\n")
        for warning in outcome.body.get("warnings", []):
            out.write(f"  warning: {warning}\n")


def write_json(outcomes: list[Outcome], out: TextIO) -> None:
    records = [{"path": str(o.path), "status": o.status, **o.body} for o in outcomes]
    out.write(json.dumps(records, indent=2) + "\n")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="alexnet-predict", description="Classify images with alexnet-serve.")
    parser.add_argument("images", nargs="+", help="image files or directories of images")
    parser.add_argument("--url", default=DEFAULT_URL, help=f"server base URL (default {DEFAULT_URL})")
    parser.add_argument("--top-k", type=int, default=DEFAULT_TOP_K, help="classes to show per image")
    parser.add_argument("--api-key", default=None, help="bearer token, when the server sets ALEXNET_API_KEY")
    parser.add_argument("--json", action="store_true", help="print the server's answers as JSON")
    arguments = parser.parse_args(argv)
    if not 1 <= arguments.top_k <= MAX_TOP_K:
        parser.error(f"--top-k must be between 1 and {MAX_TOP_K}")
    return arguments


def main(argv: Sequence[str] | None = None) -> int:
    arguments = parse_args(argv)
    paths = image_paths(arguments.images)
    if not paths:
        sys.stderr.write("alexnet-predict: no image files found\n")
        return EXIT_FAILED
    try:
        outcomes = [classify(path, arguments.url, arguments.top_k, arguments.api_key) for path in paths]
    except ServerUnreachableError as error:
        sys.stderr.write(f"alexnet-predict: {error}\n")
        return EXIT_UNREACHABLE
    (write_json if arguments.json else write_table)(outcomes, sys.stdout)
    return EXIT_OK if all(outcome.ok for outcome in outcomes) else EXIT_FAILED


def entry_point() -> None:
    raise SystemExit(main())
