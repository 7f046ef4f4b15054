"""The one exception users see: the CLI prints its message as a single line, no traceback."""


class ScoreMixError(Exception):
    """Bad input (file, field or value); the message names the culprit."""


def first_line(e: BaseException) -> str:
    """An exception's first line (torch's and Ray's run to pages), for a one-line error."""
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:300]
