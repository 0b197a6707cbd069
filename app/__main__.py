"""`python -m app` / `alexnet-serve`: build the model if missing, then serve with uvicorn."""

from __future__ import annotations

import asyncio
import ctypes
import logging
import signal
import socket
import sys
import threading
from types import FrameType

import uvicorn
from PIL import _imaging as pillow_core
from pydantic import ValidationError

from app.bootstrap import ensure_model
from app.config import get_settings
from app.errors import ModelLoadError
from app.inference import load_model
from app.logs import configure_logging
from app.main import create_app

logger = logging.getLogger("app.server")
STARTUP_FAILURE_EXIT_CODE = 3
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
MMAP_THRESHOLD_BYTES = 1 << 20
# After the listener closes, how long connections already accepted get to deliver the request their client sent.
ACCEPTED_REQUEST_GRACE_S = 0.1


class DrainingServer(uvicorn.Server):
    """uvicorn, with a drain phase on SIGTERM/SIGINT and exit status 0 after a clean shutdown.

    The first signal makes /health/ready answer 503 at once, keeps serving for `drain_delay_s` so load
    balancers notice, then lets uvicorn stop accepting and finish in-flight requests. uvicorn itself
    would re-raise the signal after shutting down (exit status 143); a drained server exits 0.
    """

    def __init__(
        self, config: uvicorn.Config, drain: threading.Event, drain_delay_s: float, fatal: threading.Event
    ) -> None:
        super().__init__(config)
        self._drain = drain
        self._drain_delay_s = drain_delay_s
        self._fatal = fatal

    async def on_tick(self, counter: int) -> bool:
        # The app sets `fatal` when it can no longer serve (its log says why): shut down like on SIGTERM.
        if self._fatal.is_set():
            self.should_exit = True
        return await super().on_tick(counter)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._drain.is_set():
            # A second signal: stop waiting for the drain delay; a third SIGINT forces exit.
            if self.should_exit and sig == signal.SIGINT:
                self.force_exit = True
            self.should_exit = True
            return
        self._drain.set()
        logger.info(
            "received %s: reporting not-ready, draining for %.1f s, then finishing in-flight requests",
            signal.Signals(sig).name,
            self._drain_delay_s,
        )
        if self._drain_delay_s <= 0:
            self.should_exit = True
            return
        timer = threading.Timer(self._drain_delay_s, self._stop_accepting)
        timer.daemon = True
        timer.start()

    def _stop_accepting(self) -> None:
        self.should_exit = True

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # uvicorn closes every connection with no request in progress as soon as it stops listening: a request
        # its client had already sent, still unread in the socket, then met a TCP reset instead of an answer.
        # Stop listening first and read what accepted connections send for a moment; those requests are served.
        for server in self.servers:
            server.close()
        await asyncio.sleep(ACCEPTED_REQUEST_GRACE_S)
        await super().shutdown(sockets)


def _return_large_buffers_to_the_system() -> None:
    """Serve buffers of 1 MiB or more (decoded photos, batches) with mmap, so freeing them returns the memory.

    glibc's default threshold adapts upwards, after which freed multi-megabyte buffers stay in fragmented
    heaps: the batched server's RSS then crept up 21-32% under 12 MP JPEGs; with this it stayed flat.
    Same as MALLOC_MMAP_THRESHOLD_=1048576; a no-op where the C library is not glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)


def _reuse_image_memory(cache_bytes: int) -> None:
    """Let Pillow keep up to `cache_bytes` of freed image blocks for the next decode.

    With the mmap threshold above, every large image got fresh pages from the kernel and faulted each one in:
    ~25 ms of CPU for a 12 MP photo. Pillow's block cache reuses them, and unlike glibc's heaps it is bounded.
    """
    pillow_core.set_blocks_max(cache_bytes // pillow_core.get_block_size())


def main() -> None:
    _return_large_buffers_to_the_system()
    try:
        settings = get_settings()
    except ValidationError as error:
        # Before logging is configured (it needs the settings): one line on stderr, no traceback.
        problems = "; ".join(f"ALEXNET_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in error.errors())
        sys.stderr.write(f"error: invalid configuration: {problems}\n")
        sys.exit(STARTUP_FAILURE_EXIT_CODE)
    configure_logging(settings.log_level, settings.log_format)
    _reuse_image_memory(settings.image_block_cache_bytes)
    ensure_model(settings)
    try:
        model = load_model(settings)
    except ModelLoadError as error:
        logger.error("cannot serve the model: %s", error)
        sys.exit(STARTUP_FAILURE_EXIT_CODE)
    drain = threading.Event()
    fatal = threading.Event()
    # One worker: the micro-batcher only batches requests that reach the same process.
    config = uvicorn.Config(
        create_app(settings, drain, model, fatal),
        host=settings.host,
        port=settings.port,
        log_config=None,
        log_level=settings.log_level,
        # app.access writes one structured line per request instead.
        access_log=False,
        # uvicorn annotates an int but passes it to asyncio.wait_for, which takes fractions; int() made 0.5 s
        # into 0, which cancelled every request in flight at once.
        timeout_graceful_shutdown=settings.graceful_shutdown_s,  # type: ignore[arg-type]
    )
    server = DrainingServer(config, drain, settings.drain_delay_s, fatal)
    server.run()
    if not server.started or fatal.is_set():
        sys.exit(STARTUP_FAILURE_EXIT_CODE)


if __name__ == "__main__":
    main()
