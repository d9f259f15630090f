"""Data files shipped inside Encore's packages (templates, flows, migrations, samples), found on disk."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def folder(package: str, name: str = "") -> Path:
    """The folder `name` inside `package` (the package's own folder when empty), as pip installs it.

    Read through `importlib.resources`: the folder in site-packages when Encore is installed from its
    wheel, the checkout's when it is installed editable (`pip install -e .`, which `make` runs), where
    `encore_retention.flows.templates` is the repository's top-level templates/ (mapped in pyproject.toml).
    Jinja, Alembic and the flow loader walk these folders, so they must be real ones, not inside a zip.
    """
    try:
        root = files(package)
    except ModuleNotFoundError as exc:
        if exc.name is None or not (package == exc.name or package.startswith(exc.name + ".")):
            raise
        raise RuntimeError(
            f"Encore's package {package!r} is not installed: run `pip install -e .` in the "
            "checkout (`make` does), or install the wheel"
        ) from None
    found = root.joinpath(name) if name else root
    if not isinstance(found, Path):
        raise RuntimeError(f"Encore's package {package!r} is not on disk ({found}): install it unzipped, as pip does")
    if not found.is_dir():
        raise RuntimeError(f"{found} is missing: this install of Encore lacks its data files")
    return found
