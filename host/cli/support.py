"""Command-line support shared by the verbs: progress reporting and user-input checks.

:func:`progress_for` gives a verb's long work one object to report through: calling it prints a
status line on stderr (with ``--json`` only when stderr is a terminal), and ``.bar(total, desc)``
opens a tqdm progress bar that is shown only when stderr is a terminal and ``--json`` is off (a
no-op otherwise), so pipes, logs and machine-readable output stay clean.
"""

from __future__ import annotations

import sys

__all__ = ["Progress", "progress_for", "say"]


def say(msg: str) -> None:
    print(f"[recfabric] {msg}", file=sys.stderr, flush=True)


class _NoBar:
    n = 0
    ticks = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n: int = 1) -> None:
        self.n += n

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
        bar = self._open
        if bar is not None:
            bar.write(line, file=self.stream)
            if bar.ticks:
                bar.update(1)
        else:
            print(line, file=self.stream, flush=True)

    def bar(self, total: int | None, desc: str, unit: str = "it", ticks: bool = False):
        """A context manager with ``update(n)``: a tqdm bar, or a no-op when bars are off.

        With ``ticks``, every status line printed while the bar is open advances it by one
        (a bar over a command's steps)."""
        if not self.bars:
            return _NoBar()
        from tqdm import tqdm
        prog = self

        class _Bar(tqdm):
            def __enter__(self):
                self.ticks = ticks
                prog._open = self
                return super().__enter__()

            def __exit__(self, *exc):
                prog._open = None
                return super().__exit__(*exc)
        return _Bar(total=total, desc=desc, unit=unit, file=self.stream, leave=False,
                    dynamic_ncols=True)


def progress_for(args) -> Progress:
    """The :class:`Progress` of a parsed command. With ``--json`` (the JSON goes to stdout) it
    is quiet unless stderr is a terminal, where status lines stay and bars do not: a user who
    runs ``recfabric report resources --json > r.json`` sees a long run progress, while pipes
    and logs get nothing on stderr."""
    if not getattr(args, "json", False):
        return Progress()
    tty = getattr(sys.stderr, "isatty", lambda: False)()
    return Progress(quiet=not tty, bars=False)


# ---- user-input checks, before any long work ----------------------------------------------------

#: Device memory of the backends that model one (bytes): the sim backend's simulated memory and
#: the reference backend's (their constructors' defaults).
BACKEND_MEMORY = {"sim": 64 << 20, "reference": 1 << 30, "verilator": 1 << 40}


def available_memory() -> int | None:
    """Bytes of RAM the kernel reports as available (``MemAvailable``), or None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def host_bytes_per_inference(spec, record_bytes: int, result_bytes: int) -> int:
    """Host memory one request costs a demo run (inputs, wire records, float and integer
    inference intermediates), generously rounded up: an estimate for refusing absurd batches
    (about 4.6 KB for ``small``; issue 13 saw a 10M batch of it peak at 14.6 GB, 1.5 KB each)."""
    bags = sum(f.bag for f in spec.sparse)
    widths = [spec.layer_shapes()["top"][0][0], *spec.top_mlp, *spec.bottom_mlp]
    emb = sum(f.dim * f.bag for f in spec.sparse)
    return (2 * (record_bytes + result_bytes) + 8 * spec.dense + 17 * bags
            + 16 * len(spec.sparse) + 24 * sum(widths) + 12 * emb)


def check_batch(spec, config, batch: int, backend: str | None = None,
                flag: str = "--batch") -> None:
    """Refuse a batch of 0, or one the backend's memory or this machine's RAM cannot hold."""
    from ..runtime.wire_format import RequestLayout
    if not isinstance(batch, int) or batch < 1:
        raise ValueError(f"{flag} must be at least 1, not {batch}")
    if config is not None:
        lay = RequestLayout.for_config(spec, config)
        record, result = lay.record_bytes, lay.result_record_bytes
    else:  # host memory only: wire records as if 16-bit in 64-byte words
        record = 64 * -(-(8 * sum(f.bag for f in spec.sparse) + 2 * spec.dense + 8) // 64)
        result = 64
    device_need = batch * (record + result)
    device_have = None if config is None else \
        BACKEND_MEMORY.get(backend, config.channel_bytes if backend else None)
    if device_have is not None and device_need > device_have:
        most = device_have // (record + result)
        raise ValueError(f"{flag} {batch:,} needs {device_need / 2**20:,.0f} MiB of "
                         f"{backend} device memory for requests and results "
                         f"({record} + {result} bytes each); it has "
                         f"{device_have / 2**20:,.0f} MiB: at most {most:,} per batch")
    host_need = batch * host_bytes_per_inference(spec, record, result)
    avail = available_memory()
    if avail is not None and host_need > avail:
        raise ValueError(f"{flag} {batch:,} needs about {host_need / 2**30:,.1f} GiB of host "
                         f"memory; {avail / 2**30:,.1f} GiB are available: use a smaller batch")


def check_file(path, what: str) -> None:
    """One-line error for a missing input file."""
    from pathlib import Path
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what} {str(path)!r} does not exist"
                                + (" (it is a directory)" if p.is_dir() else ""))
