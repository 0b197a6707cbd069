"""`python -m app` / `alexnet-serve`: build the model if missing, then serve with uvicorn."""

from __future__ import annotations

import uvicorn

from app.bootstrap import ensure_model
from app.config import get_settings
from app.logs import configure_logging


def main() -> None:
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)
    ensure_model(settings)
    # One worker: the micro-batcher only batches requests that reach the same process.
    uvicorn.run(
        "app.main:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        log_config=None,
        log_level=settings.log_level,
        # app.access writes one structured line per request instead.
        access_log=False,
        timeout_graceful_shutdown=int(settings.graceful_shutdown_s),
    )


if __name__ == "__main__":
    main()
