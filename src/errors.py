"""The project's error for problems a user can fix: reported as one line, never a traceback."""


class PipelineError(Exception):
    """Bad input (a config value, a data file, a tracking URI): the message names what is
    wrong and how to fix it."""
