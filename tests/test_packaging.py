"""The built wheel installs one import root, `weir`, and works beside users' own modules."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYER_PACKAGES = ("core", "streams", "topics", "processors", "schemas", "traces", "replays")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # Built from a copy, so setuptools' build/ folder does not land in the checkout.
    source = out / "source"
    shutil.copytree(
        ROOT,
        source,
        symlinks=True,
        ignore=shutil.ignore_patterns(".venv", ".git", "build", "test-artifacts", "*_cache"),
    )
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(source)],
        check=True,
        timeout=300,
    )
    (built,) = out.glob("weir-*.whl")
    return built


def test_the_wheel_installs_only_the_weir_package(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/", 1)[0] for name in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"weir"}
    for package in LAYER_PACKAGES:
        assert f"weir/{package}/__init__.py" in names
    # Data files travel with their packages.
    assert "weir/schemas/request.avsc" in names
    assert not any(name.startswith("examples/") for name in names)


def test_the_wheel_works_in_a_fresh_venv_beside_a_users_schemas_module(
    wheel: Path, tmp_path: Path
) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "--no-deps", "--quiet", str(wheel)],
        check=True,
        timeout=300,
    )
    # weir's dependencies come from this environment's site-packages as a plain path entry:
    # the .pth files there (this checkout's editable install) are not processed.
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    (site / "_weir_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    app = tmp_path / "app"
    (app / "streams").mkdir(parents=True)
    (app / "schemas.py").write_text("OWNER = 'the application'\n")
    (app / "topics.py").write_text("OWNER = 'the application'\n")
    (app / "streams" / "__init__.py").write_text("OWNER = 'the application'\n")
    check = textwrap.dedent(
        f"""
        import schemas, streams, topics
        import weir, weir.cli, weir.processors, weir.schemas, weir.streams, weir.topics
        from weir import Pipeline, Worker
        from weir.schemas import Request

        assert weir.__file__.startswith({str(site)!r}), weir.__file__
        assert weir.streams.Pipeline is Pipeline
        for module in (schemas, streams, topics):
            assert module.OWNER == "the application", module
        print("ok")
        """
    )
    done = subprocess.run(
        [str(python), "-c", check], cwd=app, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
    cli = subprocess.run(
        [str(venv / "bin" / "weir"), "--help"], cwd=app, capture_output=True, text=True
    )
    assert cli.returncode == 0, cli.stderr


def test_no_module_imports_a_layer_by_its_bare_name() -> None:
    offenders = []
    for path in ROOT.glob("**/*.py"):
        if {".venv", "build", "test-artifacts"} & set(path.parts):
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            words = line.split()
            if (
                len(words) >= 2
                and words[0] in ("import", "from")
                and words[1].split(".")[0] in LAYER_PACKAGES
            ):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders, "import these through weir (weir.streams, ...):\n" + "\n".join(offenders)
