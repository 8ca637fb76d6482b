"""User-facing errors: raised at the edges (config, data, checkpoints) with one clear
message naming the problem; the CLI prints the message, never a stack trace."""


class PsflError(Exception):
    """A problem with the user's input (file, config value, data) - not a bug."""


class DivergenceError(Exception):
    """Training produced a non-finite loss, weight or upload. The runner keeps every
    completed round and the CLI exits with status 3 and this one-line message."""

    def __init__(self, rnd: int, cid: int | None, quantity: str, value: float | None = None) -> None:
        self.rnd, self.cid, self.quantity = rnd, cid, quantity
        who = "server" if cid is None else f"client {cid}"
        val = "" if value is None else f" ({value})"
        super().__init__(f"diverged in round {rnd + 1}, {who}: non-finite {quantity}{val}; "
                         f"the {rnd} completed round(s) are kept (lower train.lr or set train.grad_clip)")


class RoundFailedError(Exception):
    """Too few clients answered with an acceptable upload in a round. The runner keeps
    every completed round (the run resumes with ``--resume``); the CLI exits with status 3."""
