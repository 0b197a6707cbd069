"""Docker HEALTHCHECK: exit 0 when the server in this container answers 200 on /health/ready.

Standard library only, so the image needs no curl or wget.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

READY_PATH = "/health/ready"
TIMEOUT_S = 4.0


def ready_url() -> str:
    port = os.environ.get("ALEXNET_PORT", "8000")
    return f"http://127.0.0.1:{port}{READY_PATH}"


def main() -> int:
    url = ready_url()
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            status: int = response.status
    except urllib.error.HTTPError as error:
        status = error.code
    except OSError as error:
        sys.stderr.write(f"{url}: {error}\n")
        return 1
    if status != 200:
        sys.stderr.write(f"{url}: HTTP {status}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
