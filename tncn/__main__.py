"""``python -m tncn`` runs the command line."""
import sys

from tncn.cli import main

sys.exit(main())
