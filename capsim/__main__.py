"""``python -m capsim`` runs the command line."""

from simulator.cli import main

main()
