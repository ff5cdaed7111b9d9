"""Hostile dataset uploads through POST /api/v1/datasets: each is a 400 with a message, the
service keeps serving and nothing is listed or written outside HOME_DIR.

Images of mixed colour modes (L/RGB/RGBA) are converted to one mode on import by design, so
they are not in this list; examples of the wrong channel count are refused by predict (400).
"""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from flask.testing import FlaskClient
from PIL import Image

from support import png_bytes

GOOD = png_bytes(np.zeros((8, 8, 3), np.uint8))


def zip_of(entries: dict[str, bytes], symlink: str | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
        if symlink:
            info = zipfile.ZipInfo("a/link.png")
            info.external_attr = 0o120777 << 16  # a symlink entry
            archive.writestr(info, symlink)
    return buffer.getvalue()


def tar_with_absolute_path() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name in ("/tmp/evil/a/0.png", "b/0.png"):
            info = tarfile.TarInfo(name)
            info.size = len(GOOD)
            archive.addfile(info, io.BytesIO(GOOD))
    return buffer.getvalue()


def bomb_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (20000, 20000)).save(buffer, format="PNG")  # 400 Mpx, a few hundred kB
    return buffer.getvalue()


CASES = {
    "zip-slip": zip_of({"../../outside/a/0.png": GOOD, "b/0.png": GOOD}),
    "symlink": zip_of({"b/0.png": GOOD}, symlink="/etc/passwd"),
    "tar-absolute": tar_with_absolute_path(),
    "zip-bomb": zip_of({"a/0.png": b"\0" * (300 * 1024 * 1024), "b/0.png": GOOD}),
    "png-bomb": zip_of({"a/0.png": bomb_png(), "b/0.png": GOOD}),
    "truncated": zip_of({"a/0.png": GOOD[: len(GOOD) // 2], "b/0.png": GOOD}),
    "not-an-image": zip_of({"a/0.png": b"#!/bin/sh\necho hi\n", "b/0.png": GOOD}),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_upload_is_400_and_leaves_nothing(
    client: FlaskClient, tmp_path: Path, name: str
) -> None:
    before = sorted(p.name for p in tmp_path.iterdir())
    response = client.post(
        "/api/v1/datasets",
        data={"file": (io.BytesIO(CASES[name]), f"{name}.zip"), "name": name},
        content_type="multipart/form-data",
    )
    assert response.status_code == 400, (response.status_code, response.json)
    assert response.json["error"]
    listed = client.get("/api/v1/datasets").json["datasets"]
    assert [d["id"] for d in listed] == ["cifar10", "digits", "synthetic"]
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert client.get("/healthz").status_code == 200
