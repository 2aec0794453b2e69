"""The one exception type users see. The CLI prints it as one line, without a traceback."""


class PulseError(Exception):
    """A user-facing error: bad input, bad config, missing file. The message names file, row/ID and field."""


def where(path, row=None, field=None) -> str:
    """Format an error location as `path[, row R][, field F]` for PulseError messages."""
    parts = [str(path)]
    if row is not None:
        parts.append(f"row {row}")
    if field is not None:
        parts.append(f"field {field}")
    return ", ".join(parts)
