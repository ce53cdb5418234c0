"""`python -m degradation` is the `degrade` command."""

from degradation.cli import main

main()
