"""URL building shared by every caller of the HTTP API (the client and the trainer): a value put
into a path is always exactly one path segment, whatever characters it holds."""

from __future__ import annotations

from urllib.parse import quote


def quote_segment(value: str) -> str:
    """``value`` as one URL path segment: every reserved character percent-encoded, ``/``
    included, and ``.`` or ``..`` encoded so no HTTP library resolves it as a dot segment."""
    if value in (".", ".."):
        # quote() leaves dots alone, and requests would turn /models/.. into the parent path.
        return value.replace(".", "%2E")
    return quote(value, safe="")
