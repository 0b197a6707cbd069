"""`alexnet-predict IMAGE… [--url URL] [--top-k K] [--json] [--explain]`: classify files with a running server.

Standard library only, so it works wherever Python does. Images are sent as raw bodies; a directory
stands for the image files directly inside it. With `--explain`, each image's occlusion heatmap (the
server's /v1/explain overlay PNG) is written next to it as `<name>.explain.png`. Exit status: 0 all
classified (and explained), 1 any image failed, 2 the server could not be reached or the arguments are wrong.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import unquote

from app.config import DEFAULT_EXPLAIN_GRID, DEFAULT_TOP_K, MAX_EXPLAIN_GRID, MAX_TOP_K, MIN_EXPLAIN_GRID

DEFAULT_URL = "http://127.0.0.1:8000"
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})
TIMEOUT_S = 60.0
EXPLANATION_SUFFIX = ".explain.png"
# The server's header carrying the overlay's text alternative (percent-encoded), see app/routes/explain.py.
EXPLANATION_TEXT_HEADER = "X-Explanation-Text"
EXIT_OK, EXIT_FAILED, EXIT_UNREACHABLE = 0, 1, 2


class ServerUnreachableError(Exception):
    pass


@dataclass(frozen=True)
class Explanation:
    status: int
    # The overlay written next to the image and its text alternative, or the server's error.
    path: Path | None = None
    text: str = ""
    error: dict[str, Any] | None = None


@dataclass(frozen=True)
class Outcome:
    path: Path
    status: int
    body: dict[str, Any]
    explanation: Explanation | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200 and (self.explanation is None or self.explanation.status == 200)


def explanation_path(image: Path) -> Path:
    """Where `--explain` writes an image's overlay: beside it, its full name plus `.explain.png`."""
    return image.with_name(image.name + EXPLANATION_SUFFIX)


def image_paths(arguments: Sequence[str]) -> list[Path]:
    """Files as given; directories expanded to the image files directly inside them, sorted."""
    paths: list[Path] = []
    for argument in arguments:
        path = Path(argument)
        if path.is_dir():
            # Overlays written by an earlier `--explain` are outputs, not inputs.
            paths.extend(
                sorted(
                    p
                    for p in path.iterdir()
                    if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.endswith(EXPLANATION_SUFFIX)
                )
            )
        else:
            paths.append(path)
    return paths


def classify(path: Path, url: str, top_k: int, api_key: str | None, *, explain_grid: int | None = None) -> Outcome:
    """Classify one file; with `explain_grid`, also write its occlusion overlay next to it."""
    try:
        data = path.read_bytes()
    except OSError as error:
        return Outcome(path, 0, {"error": {"code": "unreadable_file", "message": error.strerror or str(error)}})
    status, body, _ = _post(f"{url.rstrip('/')}/v1/predict?top_k={top_k}", data, api_key, url=url)
    parsed = _json_body(status, body)
    if status != 200 or explain_grid is None:
        return Outcome(path, status, parsed)
    return Outcome(path, status, parsed, explain(path, data, url, api_key, explain_grid))


def explain(path: Path, data: bytes, url: str, api_key: str | None, grid: int) -> Explanation:
    """POST /v1/explain asking for the overlay PNG, and write it to `explanation_path(path)`."""
    endpoint = f"{url.rstrip('/')}/v1/explain?grid={grid}"
    status, body, headers = _post(endpoint, data, api_key, url=url, accept="image/png")
    if status != 200:
        return Explanation(status, error=_json_body(status, body).get("error", {}))
    output = explanation_path(path)
    try:
        output.write_bytes(body)
    except OSError as error:
        return Explanation(0, error={"code": "unwritable_file", "message": error.strerror or str(error)})
    return Explanation(status, path=output, text=unquote(headers.get(EXPLANATION_TEXT_HEADER.lower(), "")))


def _post(
    endpoint: str, data: bytes, api_key: str | None, *, url: str, accept: str = "application/json"
) -> tuple[int, bytes, dict[str, str]]:
    headers = {"Content-Type": "application/octet-stream", "Accept": accept}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    request = urllib.request.Request(endpoint, data=data, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            return response.status, response.read(), _lowercase_keys(response.headers.items())
    except urllib.error.HTTPError as error:
        return error.code, error.read(), _lowercase_keys(error.headers.items())
    except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
        reason = getattr(error, "reason", error)
        raise ServerUnreachableError(f"cannot reach {url}: {reason}") from None


def _lowercase_keys(headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    return {name.lower(): value for name, value in headers}


def _json_body(status: int, body: bytes) -> dict[str, Any]:
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        return {"error": {"code": "http_error", "message": f"HTTP {status}"}}
    return parsed


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
        explanation = outcome.explanation
        if explanation is not None and explanation.path is not None:
            out.write(f"  explanation: {explanation.path}\n  {explanation.text}\n")
        elif explanation is not None and explanation.error is not None:
            error = explanation.error
            out.write(f"  explain error {explanation.status} {error.get('code', '?')}: {error.get('message', '')}\n")


def write_json(outcomes: list[Outcome], out: TextIO) -> None:
    records = [{"path": str(o.path), "status": o.status, **o.body, **_explanation_record(o)} for o in outcomes]
    out.write(json.dumps(records, indent=2) + "\n")


def _explanation_record(outcome: Outcome) -> dict[str, Any]:
    explanation = outcome.explanation
    if explanation is None:
        return {}
    if explanation.path is None:
        return {"explanation": {"status": explanation.status, "error": explanation.error}}
    return {"explanation": {"status": explanation.status, "path": str(explanation.path), "text": explanation.text}}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="alexnet-predict", description="Classify images with alexnet-serve.")
    parser.add_argument("images", nargs="+", help="image files or directories of images")
    parser.add_argument("--url", default=DEFAULT_URL, help=f"server base URL (default {DEFAULT_URL})")
    parser.add_argument("--top-k", type=int, default=DEFAULT_TOP_K, help="classes to show per image")
    parser.add_argument("--api-key", default=None, help="bearer token, when the server sets ALEXNET_API_KEY")
    parser.add_argument("--json", action="store_true", help="print the server's answers as JSON")
    parser.add_argument(
        "--explain",
        action="store_true",
        help=f"also write each image's occlusion heatmap next to it as <name>{EXPLANATION_SUFFIX}",
    )
    parser.add_argument(
        "--grid",
        type=int,
        default=DEFAULT_EXPLAIN_GRID,
        help=f"occlusion cells per side with --explain (default {DEFAULT_EXPLAIN_GRID})",
    )
    arguments = parser.parse_args(argv)
    if not 1 <= arguments.top_k <= MAX_TOP_K:
        parser.error(f"--top-k must be between 1 and {MAX_TOP_K}")
    if not MIN_EXPLAIN_GRID <= arguments.grid <= MAX_EXPLAIN_GRID:
        parser.error(f"--grid must be between {MIN_EXPLAIN_GRID} and {MAX_EXPLAIN_GRID}")
    return arguments


def main(argv: Sequence[str] | None = None) -> int:
    arguments = parse_args(argv)
    paths = image_paths(arguments.images)
    if not paths:
        sys.stderr.write("alexnet-predict: no image files found\n")
        return EXIT_FAILED
    try:
        grid = arguments.grid if arguments.explain else None
        outcomes = [
            classify(path, arguments.url, arguments.top_k, arguments.api_key, explain_grid=grid) for path in paths
        ]
    except ServerUnreachableError as error:
        sys.stderr.write(f"alexnet-predict: {error}\n")
        return EXIT_UNREACHABLE
    (write_json if arguments.json else write_table)(outcomes, sys.stdout)
    return EXIT_OK if all(outcome.ok for outcome in outcomes) else EXIT_FAILED


def entry_point() -> None:
    raise SystemExit(main())
