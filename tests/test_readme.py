"""The embedding example runs as README.md (and ``runtara.runtime``) show it: copied
out of the text and run as a program, unchanged."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import runtara.runtime

REPO = Path(__file__).resolve().parents[1]
FENCED_PYTHON = re.compile(r"^( *)```python\n(.*?)^\1```", re.MULTILINE | re.DOTALL)
FINGERPRINT = r"(?:[0-9A-F]{2}:){31}[0-9A-F]{2}"


def readme_example() -> str:
    """The README's code block that starts runtara-core in a Twisted program."""
    text = (REPO / "README.md").read_text()
    [code] = [block for _, block in FENCED_PYTHON.findall(text) if "start_core(" in block]
    return textwrap.dedent(code)


def runtime_example() -> str:
    """The example of ``runtara.runtime``'s docstring (the block after ``::``)."""
    doc = runtara.runtime.__doc__ or ""
    block = doc.split("::\n", 1)[1]
    lines = []
    for line in block.splitlines():
        if line and not line.startswith("    "):
            break
        lines.append(line)
    return textwrap.dedent("\n".join(lines))


@pytest.mark.e2e
@pytest.mark.parametrize("example", [readme_example, runtime_example], ids=["readme", "runtime"])
def test_the_embedding_example_runs_as_shown(tmp_path: Path, example) -> None:
    script = tmp_path / "embedded.py"
    script.write_text(example())
    env = {name: value for name, value in os.environ.items() if not name.startswith("RUNTARA_")}
    env.update(PYTHONPATH=str(REPO), HOME=str(tmp_path), RUNTARA_STATE_DIR=str(tmp_path / "state"))
    result = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    certificate = tmp_path / "state" / "tls-cert.pem"
    assert re.fullmatch(
        rf"[1-9][0-9]* {FINGERPRINT} {certificate} http://127\.0\.0\.1:[1-9][0-9]*\n",
        result.stdout,
    ), result.stdout
