"""The marketers' commands: `encore flows lint|schema|preview`, `encore sweep`."""

from __future__ import annotations

import click


@click.group()
def flows() -> None:
    """Work with flow files."""


COMMANDS: list[click.Command] = [flows]
