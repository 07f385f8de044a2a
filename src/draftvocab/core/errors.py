"""The one exception type users see.

Anything raised as `DraftVocabError` is a problem with the user's input or environment; the
CLI prints its message on one red line and exits 1. Anything else is a bug and keeps its
traceback.
"""


class DraftVocabError(Exception):
    """A user-facing error: bad input, unreachable constraint, unwritable output."""
