"""The layer contract (``[tool.importlinter]`` in pyproject.toml): no import points up a layer."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Run import-linter on the package found first on the path given, without site-packages'
# .pth files: the editable install's finder would otherwise always answer with this
# checkout's `weir`, whatever tree the check is meant to read.
_LINT = """
import sys
sys.path[:0] = sys.argv[1:3]
from importlinter.cli import lint_imports
sys.exit(lint_imports(config_filename=sys.argv[3], no_cache=True, no_logo=True))
"""


def lint(package_parent: Path, config: Path) -> subprocess.CompletedProcess[str]:
    site = sysconfig.get_paths()["purelib"]
    return subprocess.run(
        [sys.executable, "-S", "-c", _LINT, str(package_parent), site, str(config)],
        cwd=package_parent,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_no_import_points_up_a_layer() -> None:
    result = lint(ROOT, ROOT / "pyproject.toml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout
    # Every module of every layer was read, the linked folders too (an empty graph breaks
    # nothing).
    modules = [
        Path(folder, name)
        for folder, _, names in os.walk(ROOT / "weir", followlinks=True)
        for name in names
        if name.endswith(".py")
    ]
    layers = {p.relative_to(ROOT / "weir").parts[0] for p in modules}
    assert {"core", "schemas", "topics", "streams", "processors", "traces", "cli.py"} <= layers
    assert f"Analyzed {len(modules)} files" in result.stdout


def test_an_import_from_a_higher_layer_breaks_the_contract(tmp_path: Path) -> None:
    # A copy of the package (links resolved) in which the ground layer imports the runtime.
    shutil.copytree(ROOT / "weir", tmp_path / "weir", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    urls = tmp_path / "weir" / "core" / "urls.py"
    urls.write_text(urls.read_text() + "\nfrom weir.streams import Pipeline  # noqa\n")

    result = lint(tmp_path, tmp_path / "pyproject.toml")

    assert result.returncode == 1, result.stdout + result.stderr
    assert "0 kept, 1 broken" in result.stdout
    assert "weir.core.urls -> weir.streams" in result.stdout
