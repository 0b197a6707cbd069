"""Logging setup for the server process (called from `python -m app`, never at import)."""

from __future__ import annotations

import logging

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT, force=True)
    # onnxruntime and Pillow are chatty at DEBUG; keep their noise out of the service log.
    logging.getLogger("PIL").setLevel(max(logging.INFO, logging.getLogger().level))
