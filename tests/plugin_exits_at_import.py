"""A plugin module that calls ``sys.exit()`` while it is imported (a script mistaken for a plugin)."""

import sys

sys.exit(3)
