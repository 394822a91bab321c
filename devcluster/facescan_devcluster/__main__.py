"""``scripts/dev-cluster``: build, start and stop a dev cluster (see cli.py)."""

from facescan_devcluster.cli import main

main()
