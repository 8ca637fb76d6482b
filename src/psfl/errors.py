"""User-facing errors: raised at the edges (config, data, checkpoints) with one clear
message naming the problem; the CLI prints the message, never a stack trace."""


class PsflError(Exception):
    """A problem with the user's input (file, config value, data) - not a bug."""
