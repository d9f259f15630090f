"""`python -m encore_retention.cli`: the `encore` command."""

from encore_retention.cli import main

main()
