"""Interactive API docs: Swagger UI at ``/api/v1/docs``.

Everything the page loads comes from this controller, so the docs work offline: Swagger UI is
vendored in the package (``docs_assets/swagger-ui/``; its version and licence are in
``VENDORED.md`` there), the initializer is ``docs_assets/api-docs.js`` and the document is
this app's ``/api/v1/openapi.json``. The page has no inline script or style, so it is sent
with a Content-Security-Policy that loads everything from this origin only.
"""

from __future__ import annotations

from html import escape

from flask import Blueprint, Response, url_for

bp = Blueprint(
    "api_docs", __name__, static_folder="docs_assets", static_url_path="/api/v1/docs/assets"
)

# Swagger UI's stylesheet draws its icons as data: images; nothing else is let in (no inline
# script or style: a headless browser renders the page under this policy in the tests).
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "img-src 'self' data:",
        "style-src 'self'",
        "script-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>cnn-swarm API</title>
<link rel="stylesheet" href="{stylesheet}">
</head>
<body>
<div id="swagger-ui" data-openapi-url="{openapi}"></div>
<script src="{bundle}"></script>
<script src="{initializer}"></script>
</body>
</html>
"""


@bp.get("/api/v1/docs")
def docs() -> Response:
    """The Swagger UI page for this controller's OpenAPI document."""
    html = PAGE.format(
        stylesheet=_asset("swagger-ui/swagger-ui.css"),
        bundle=_asset("swagger-ui/swagger-ui-bundle.js"),
        initializer=_asset("api-docs.js"),
        openapi=escape(url_for("openapi")),
    )
    response = Response(html, mimetype="text/html")
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


@bp.after_request
def no_sniffing(response: Response) -> Response:
    """The page and its assets are taken only as the type they are sent as."""
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def _asset(name: str) -> str:
    return escape(url_for("api_docs.static", filename=name))
