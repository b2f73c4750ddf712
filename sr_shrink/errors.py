"""One exception type for every user-facing failure; the CLI prints its message as one line."""


class SRShrinkError(Exception):
    """A bad input or a failed step, with a message that says what was wrong and what to do."""
