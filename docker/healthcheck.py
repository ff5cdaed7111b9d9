"""Docker HEALTHCHECK probe: exit 0 when this container's server answers 200 on ``/readyz``.

Usage: ``healthcheck.py controller|trainer``. The port comes from the same environment variables
the server reads (``FLASK_CONTROLLER_PORT`` / ``FLASK_TRAIN_PORT``); only the standard library is
used, so the image needs no curl.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

DEFAULT_PORTS = {"controller": ("FLASK_CONTROLLER_PORT", "48515"), "trainer": ("FLASK_TRAIN_PORT", "48516")}


def probe(role: str, timeout_s: float = 4.0) -> int:
    """0 when ``GET http://127.0.0.1:<port>/readyz`` answers 200, else 1 (reason on stderr)."""
    variable, default = DEFAULT_PORTS[role]
    port = os.environ.get(variable) or default
    url = f"http://127.0.0.1:{port}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except OSError as exc:
        print(f"{url}: {exc}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"{url}: HTTP {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in DEFAULT_PORTS:
        sys.exit("usage: healthcheck.py controller|trainer")
    sys.exit(probe(sys.argv[1]))
