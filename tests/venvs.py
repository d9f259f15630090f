"""New virtual environments for the tests that install something built here (Encore's wheel, a plug-in's).

Nothing is downloaded: the dependencies come from this environment's site-packages through a `.pth`
file of plain paths (so the editable install's finder there is not run, unless asked for).
"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import venv
from pathlib import Path


def build_wheel(source: Path, dist: Path, name: str) -> Path:
    """`pip wheel` a project folder without build isolation or an index; the one wheel named `name-*.whl`."""
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index", str(source)]
        + ["-w", str(dist)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    [wheel] = dist.glob(f"{name}-*.whl")
    return wheel


def new_environment(folder: Path, *, with_encore_editable: bool = False) -> tuple[Path, Path]:
    """A new virtual environment seeing this one's dependencies: (its python, its site-packages).

    `with_encore_editable`: Encore too, as `make` installs it (the editable finder over the checkout).
    """
    venv.EnvBuilder(with_pip=False).create(folder)
    python = folder / "bin" / "python"
    site_packages = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    ours = sysconfig.get_path("purelib")
    lines = [f"{path}\n" for path in dict.fromkeys([ours, sysconfig.get_path("platlib")])]
    if with_encore_editable:
        editable = sorted(Path(ours).glob("__editable__.encore_retention-*.pth"))
        assert editable, "Encore is not installed editable here: run `make test`, which installs it"
        lines += [line for pth in editable for line in pth.read_text().splitlines(True)]
    (site_packages / "encore-dependencies.pth").write_text("".join(lines))
    return python, site_packages


def install(python: Path, wheel: Path) -> None:
    """Install a wheel, alone, into the environment of `python`."""
    done = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index", str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
