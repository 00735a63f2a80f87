"""
The test suite.  Its hypothesis profile (L{tests.strategies}: derandomized,
no deadline, no example database) is loaded before any test module, so that
every test's own C{@settings(...)} builds on it rather than on hypothesis'
random default.
"""

from . import strategies  # noqa: F401
