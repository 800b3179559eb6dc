"""User-facing errors. The CLI prints their message (no traceback) and exits with status 2:
every message names the file/row/URI at fault and says what to do."""


class KGOpsError(RuntimeError):
    """Base class of errors caused by input or configuration, not by a bug."""
