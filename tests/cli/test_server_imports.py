"""A server started by the CLI imports no HTTP client in its gunicorn master: gevent workers
patch ``ssl`` after the fork, and ``urllib3`` (under ``requests``) imported earlier keeps the
unpatched one (gevent's MonkeyPatchWarning in every worker's log)."""

from __future__ import annotations

import subprocess
import sys

import pytest

MASTER_PATH = """
import sys
from cnnswarm import cli
parser = cli.build_parser()
args = parser.parse_args(["{role}", "--port", "0"])
from cnnswarm.parent_process import die_with_parent
from cnnswarm.serve import serve_controller, serve_trainer
cli._serve_settings(args, "{role}")
print(sorted(name for name in ("requests", "urllib3") if name in sys.modules))
"""


@pytest.mark.parametrize("role", ["controller", "trainer"])
def test_the_master_of_a_server_imports_no_http_client(role: str) -> None:
    out = subprocess.run(
        [sys.executable, "-c", MASTER_PATH.format(role=role)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
