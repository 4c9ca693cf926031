"""The CLI's usage errors; its config file is read by :mod:`confhub._fromconfig`, the one
reader ``Hub.from_config()`` uses too.

Every way a file cannot be used (missing, a directory, not UTF-8, not TOML, a key of the wrong
type) is a :class:`confhub.ConfigFileError` (a ``SpecError``) naming the file, the key and the
fix: the CLI exits 2 for it, never 1, which means "key missing".
"""

from __future__ import annotations


class UsageError(Exception):
    """A bad argument or configuration file: the CLI prints it as one line and exits 2."""
