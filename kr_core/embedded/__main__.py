"""``python -m kr_core.embedded`` runs the embedded API server (same as ``kr apiserver``)."""

import sys

from kr_core.embedded.cli import main

sys.exit(main())
