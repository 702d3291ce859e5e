"""``python -m gateway``: the ``whatsapp-gateway`` command (gateway/cli/)."""

import sys

from gateway.cli import main

if __name__ == "__main__":
    sys.exit(main())
