"""
C{python -m smartplug_backend}: the administration commands (backup, restore).
Run the server itself with C{twistd smartplug}.
"""

import sys

from .state.cli import main

sys.exit(main())
