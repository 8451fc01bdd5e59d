"""Progress reporting: bars only on a terminal and never with --json; status lines otherwise,
and with --json only on a terminal."""

import argparse
import io
import sys

from recfabric.host.cli.support import Progress, progress_for


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_bars_on_a_terminal():
    out = _Tty()
    prog = Progress(stream=out)
    assert prog.bars
    with prog.bar(3, "steps", unit="step", ticks=True) as bar:
        prog("one")
        prog("two")
        assert bar.n == 2
    text = out.getvalue()
    assert "[recfabric] one" in text and "[recfabric] two" in text
    assert "steps:" in text and "/3 [" in text  # the bar (redraws are rate-limited)


def test_no_bars_off_a_terminal_status_lines_stay():
    out = io.StringIO()
    prog = Progress(stream=out)
    assert not prog.bars
    with prog.bar(3, "steps", ticks=True) as bar:
        prog("one")
        bar.update(1)
    assert out.getvalue() == "[recfabric] one\n"


def test_json_is_quiet_even_on_a_terminal():
    out = _Tty()
    prog = Progress(quiet=True, stream=out)
    with prog.bar(3, "steps") as bar:
        prog("one")
        bar.update(1)
    assert out.getvalue() == ""


def test_json_keeps_status_lines_on_a_terminal_only(monkeypatch):
    """``report resources --json > r.json`` run by a user at a terminal shows its progress
    (status lines, no bars); the same command in a pipe or log writes nothing on stderr."""
    for stream, quiet in ((_Tty(), False), (io.StringIO(), True)):
        monkeypatch.setattr(sys, "stderr", stream)
        prog = progress_for(argparse.Namespace(json=True))
        assert (prog.quiet, prog.bars) == (quiet, False)
        with prog.bar(3, "steps", ticks=True) as bar:
            prog("synthesising block 1 of 3")
            bar.update(1)
        assert stream.getvalue() == ("" if quiet else "[recfabric] synthesising block 1 of 3\n")
    monkeypatch.setattr(sys, "stderr", _Tty())
    prog = progress_for(argparse.Namespace(json=False))
    assert (prog.quiet, prog.bars) == (False, True)
