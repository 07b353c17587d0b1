"""``python -m seqtwins`` (and ``torchrun -m seqtwins``) runs the CLI."""

from seqtwins.cli import main

main()
