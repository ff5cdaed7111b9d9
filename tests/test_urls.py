"""cnnswarm.urls: a value put into a URL path is one segment, whatever it holds."""

from __future__ import annotations

from cnnswarm.urls import quote_segment


def test_reserved_characters_and_dot_segments_are_encoded() -> None:
    assert quote_segment("m-1_v2.pth~") == "m-1_v2.pth~"
    assert quote_segment("a/b?c=1#d e%") == "a%2Fb%3Fc%3D1%23d%20e%25"
    assert quote_segment("..") == "%2E%2E"
    assert quote_segment(".") == "%2E"
    assert quote_segment("...") == "..."  # not a dot segment: no library resolves it
    assert quote_segment("café") == "caf%C3%A9"
