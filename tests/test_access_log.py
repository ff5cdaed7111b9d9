"""The servers' access line is gunicorn's own "combined" line, built without gunicorn's atoms."""

from __future__ import annotations

import base64
import datetime
from dataclasses import dataclass, field
from typing import Any

import pytest
from gunicorn import glogging
from gunicorn.config import Config

from cnnswarm.serve import combined_log_line


@dataclass
class Response:
    status: Any
    sent: int | None
    headers: list[tuple[str, str]] = field(default_factory=list)


def environ(**extra: str) -> dict[str, Any]:
    return {
        "REQUEST_METHOD": "POST",
        "RAW_URI": "/api/v1/models/m0/predict?top_k=3",
        "PATH_INFO": "/api/v1/models/m0/predict",
        "QUERY_STRING": "top_k=3",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        **extra,
    }


BASIC = "Basic " + base64.b64encode(b'ann"x:secret').decode()


@pytest.mark.parametrize(
    ("env", "response"),
    [
        (environ(), Response(200, 314)),
        (environ(), Response("404 NOT FOUND", None)),
        (environ(), Response(204, 0)),
        (
            environ(HTTP_USER_AGENT='curl/8 "quoted"', HTTP_REFERER='http://x/?a="b"'),
            Response(201, 9),
        ),
        (environ(RAW_URI='/datasets/"x"'), Response(400, 120)),
        (environ(HTTP_AUTHORIZATION=BASIC), Response(200, 5)),
        ({k: v for k, v in environ().items() if k != "REMOTE_ADDR"}, Response(200, 5)),
    ],
)
def test_the_line_is_gunicorns_default_line(env: dict[str, Any], response: Response) -> None:
    logger = glogging.Logger(Config())
    took = datetime.timedelta(milliseconds=7)
    atoms = logger.atoms(response, [], env, took)
    expected = Config().access_log_format % glogging.SafeAtoms(atoms)
    user = logger._get_user(env) if "HTTP_AUTHORIZATION" in env else None
    assert combined_log_line(env, response.status, response.sent, user, atoms["t"]) == expected
