"""
How to run this package's administration commands (C{backup}, C{restore},
C{passwd}), as a message should tell a user to type them.

A bare C{python -m smartplug_backend} fails on most machines: the system's
C{python} has no Twisted (it is installed in the project's C{.venv}), and
from the project directory the C{twisted/plugins} folder hides the real
package.  So the interpreter running now is named, relative to the current
directory when it is below it (C{.venv/bin/python -m smartplug_backend}).
"""

import os
import shlex
import sys


def admin_command() -> str:
    """
    The command line that runs C{python -m smartplug_backend} with this
    interpreter, from the current directory.
    """
    executable = sys.executable or "python3"
    try:
        relative = os.path.relpath(executable)
    except (ValueError, OSError):
        # Another drive, or a working directory that is gone.
        relative = executable
    shown = executable if relative.startswith("..") else relative
    return f"{shlex.quote(shown)} -m smartplug_backend"
