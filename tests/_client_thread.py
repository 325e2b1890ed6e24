"""A client thread for zero-downtime tests: calls a served model over and over while something else swaps it."""

from __future__ import annotations

import threading


class ClientThread:
    """`with Sub(...) as c:` runs `c._run()` in a thread until the block ends; `ok` and `errors` count calls.

    Subclasses implement `_run`, looping `while not self.stopped()`.
    """

    def __init__(self) -> None:
        self.ok, self.errors = 0, []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self.thread.join(30)

    def stopped(self) -> bool:
        return self._stop.is_set()

    def _run(self) -> None:
        raise NotImplementedError
