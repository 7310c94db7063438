"""The per-item error that every task raises for input it cannot use (its reasons: README.md)."""


class Reject(Exception):
    """An input that becomes a reject row instead of a result; the run goes on."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
