"""``python -m diffspeed`` (also what ``accelerate launch -m diffspeed`` runs)."""

import sys

from diffspeed.cli import main

sys.exit(main())
