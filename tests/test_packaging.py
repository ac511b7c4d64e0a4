"""The wheel: what it carries, and that an installed copy finds its SQL and plugin.

The build runs on a copy of the checkout, so a stale ``build/`` directory or
another build running in the work tree cannot leak into what is inspected.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BUILD_TIMEOUT = 300.0
NOT_SOURCE = shutil.ignore_patterns(
    ".git",
    ".venv",
    "venv",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    "*.pyc",
    "dropin.cache",
    ".pytest_cache",
    ".ruff_cache",
    ".hypothesis",
)

INSTALLED_CHECK = """
import json, sys
sys.path.insert(0, sys.argv[1])
import runtara
import twisted.plugins
from runtara.persistence.migrations import load_migrations
from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins
makers = [p for p in getPlugins(IServiceMaker) if p.tapname == "runtara-core"]
print(json.dumps({
    "runtara": runtara.__file__,
    "plugin_path": twisted.plugins.__path__,
    "options": sorted(makers[0].options().docs) if makers else [],
    "tap": sys.modules["runtara.tap"].__file__ if makers else "",
    "migrations": {d: [m.name for m in load_migrations(d)] for d in ("sqlite", "postgresql")},
}))
"""


def migration_files(dialect: str) -> list[Path]:
    """The checkout's migration files of ``dialect``, in order."""
    return sorted((REPO / "sql" / dialect).glob("*.sql"))


def pip(*arguments: str, cwd: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *arguments],
        cwd=cwd,
        check=True,
        timeout=BUILD_TIMEOUT,
    )


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built from a copy of the checkout (setuptools from this environment)."""
    work = tmp_path_factory.mktemp("packaging")
    source = work / "source"
    shutil.copytree(REPO, source, ignore=NOT_SOURCE)
    dist = work / "dist"
    pip("wheel", "--no-deps", "--no-build-isolation", "-w", str(dist), str(source), cwd=work)
    (built,) = dist.glob("runtara-*.whl")
    return built


@pytest.fixture(scope="module")
def names(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as archive:
        return set(archive.namelist())


def test_wheel_carries_the_plugin_but_no_twisted_package(names: set[str]) -> None:
    assert "twisted/plugins/runtara_core.py" in names
    assert "twisted/__init__.py" not in names
    assert "twisted/plugins/__init__.py" not in names
    assert not [name for name in names if name.endswith(("dropin.cache", ".pyc"))]


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_wheel_carries_every_migration(names: set[str], dialect: str) -> None:
    expected = {f"runtara/sql/{dialect}/{path.name}" for path in migration_files(dialect)}
    assert expected
    assert expected <= names


def test_wheel_carries_every_module_and_the_type_marker(names: set[str]) -> None:
    modules = {path.relative_to(REPO).as_posix() for path in (REPO / "runtara").rglob("*.py")}
    assert modules - names == set()
    assert "runtara/py.typed" in names


def test_wheel_carries_the_dashboard_assets_and_the_openapi_document(names: set[str]) -> None:
    web = REPO / "runtara" / "web"
    assets = {path.relative_to(REPO).as_posix() for path in (web / "static").iterdir()}
    assert {"runtara/web/static/dashboard.js", "runtara/web/static/dashboard.css"} <= assets
    assert assets | {"runtara/web/openapi.json"} <= names


def test_wheel_declares_the_runtara_command(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        (entry_points,) = [name for name in archive.namelist() if name.endswith("entry_points.txt")]
        text = archive.read(entry_points).decode()
    assert "[console_scripts]" in text
    assert "runtara = runtara.cli:main" in text


def test_installed_wheel_finds_its_migrations_and_plugin(wheel: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    pip("install", "--no-deps", "--no-index", "--target", str(site), str(wheel), cwd=tmp_path)
    result = subprocess.run(
        [sys.executable, "-I", "-c", INSTALLED_CHECK, str(site)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
        timeout=BUILD_TIMEOUT,
    )
    found = json.loads(result.stdout)
    assert Path(found["runtara"]).is_relative_to(site)
    assert str(site / "twisted" / "plugins") in found["plugin_path"]
    assert {"port", "database", "state-dir"} <= set(found["options"])
    assert Path(found["tap"]).is_relative_to(site)
    for dialect in ("sqlite", "postgresql"):
        checkout = [path.stem.split("_", 1)[1] for path in migration_files(dialect)]
        assert found["migrations"][dialect] == checkout
