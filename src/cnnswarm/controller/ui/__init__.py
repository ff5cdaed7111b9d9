"""The web dashboard at ``/ui/``: Jobs, Job, Models, Datasets, Sweeps and Trainers pages.

The pages are Flask templates plus static scripts; every figure on them and every action they
take goes through the public API routes (``/api/v1/...``), the same ones the CLI uses, so the
dashboard adds no second code path on the server. Nothing is fetched from another origin: the
one third-party asset, uPlot, is vendored under ``static/vendor/uplot/`` (see its
``VENDORED.md``). Every response of this blueprint carries a Content-Security-Policy that
allows no inline script and no other origin; user-supplied names reach the page only as text
(Jinja autoescaping on the server, ``textContent`` in the scripts). The API token, when the API
asks for one, is kept in the tab's ``sessionStorage`` and sent as the ``Authorization`` header:
never in a URL, a cookie or a log.
"""

from cnnswarm.controller.ui.pages import CONTENT_SECURITY_POLICY, bp

__all__ = ["CONTENT_SECURITY_POLICY", "bp"]
