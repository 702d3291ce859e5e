"""``python -m gateway.simulator serve|call``: see gateway/simulator/cli.py."""

import sys

from gateway.simulator.cli import main

sys.exit(main())
