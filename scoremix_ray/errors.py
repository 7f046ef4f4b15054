"""The one exception users see: the CLI prints its message as a single line, no traceback."""


class ScoreMixError(Exception):
    """Bad input (file, field or value); the message names the culprit."""
