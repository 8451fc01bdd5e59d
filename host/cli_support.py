"""Command-line support shared by the verbs: progress reporting and user-input checks.

:func:`progress_for` gives a verb's long work one object to report through: calling it prints a
status line on stderr (not with ``--json``), and ``.bar(total, desc)`` opens a tqdm progress bar
that is shown only when stderr is a terminal and ``--json`` is off (a no-op otherwise), so pipes,
logs and machine-readable output stay clean.
"""

from __future__ import annotations

import sys

__all__ = ["Progress", "progress_for", "say"]


def say(msg: str) -> None:
    print(f"[recfabric] {msg}", file=sys.stderr, flush=True)


class _NoBar:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, s: str) -> None:
        pass


class Progress:
    """Status lines and progress bars for one command.

    Parameters
    ----------
    quiet : bool
        No status lines and no bars (``--json``).
    bars : bool, optional
        Show bars; default: stderr is a terminal and not ``quiet``.
    """

    def __init__(self, quiet: bool = False, bars: bool | None = None, stream=None):
        self.stream = stream or sys.stderr
        self.quiet = quiet
        isatty = getattr(self.stream, "isatty", lambda: False)()
        self.bars = (not quiet and isatty) if bars is None else (bars and not quiet)
        self._open = None

    def __call__(self, msg: str) -> None:
        if self.quiet:
            return
        line = f"[recfabric] {msg}"
        if self._open is not None:
            self._open.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)

    def bar(self, total: int | None, desc: str, unit: str = "it"):
        """A context manager with ``update(n)``: a tqdm bar, or a no-op when bars are off."""
        if not self.bars:
            return _NoBar()
        from tqdm import tqdm
        prog = self

        class _Bar(tqdm):
            def __enter__(self):
                prog._open = tqdm
                return super().__enter__()

            def __exit__(self, *exc):
                prog._open = None
                return super().__exit__(*exc)
        return _Bar(total=total, desc=desc, unit=unit, file=self.stream, leave=False,
                    dynamic_ncols=True)


def progress_for(args) -> Progress:
    """The :class:`Progress` of a parsed command (``--json`` makes it quiet)."""
    return Progress(quiet=bool(getattr(args, "json", False)))
