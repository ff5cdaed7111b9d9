"""The README's Docker section shows only commands the Docker tier runs: every line in its shell
blocks is one of the tier's command templates filled with the documented names, and the other
way round. (Runs without Docker: it only reads files.)"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"


def _docker_section() -> str:
    text = README.read_text()
    start = text.index("\n## Docker\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def _documented_commands() -> list[str]:
    blocks = re.findall(r"```sh\n(.*?)```", _docker_section(), flags=re.DOTALL)
    lines = [line.strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


@pytest.mark.docker
def test_docs_show_exactly_the_commands_the_tier_runs(request: pytest.FixtureRequest) -> None:
    conftest = request.config.pluginmanager.get_plugin(str(Path(__file__).with_name("conftest.py")))
    assert conftest is not None
    expected = {t.format(**conftest.DOC_VALUES) for t in conftest.COMMANDS.values()}
    documented = _documented_commands()
    strays = [line for line in documented if line not in expected]
    assert not strays, f"the README shows commands no test runs: {strays}"
    missing = expected - set(documented)
    assert not missing, f"the README lacks commands the tier runs: {sorted(missing)}"
