"""`python -m tuner` runs the greentune CLI."""

from tuner.cli import main

main()
