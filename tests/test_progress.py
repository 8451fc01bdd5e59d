"""Progress reporting: bars only on a terminal and never with --json; status lines otherwise."""

import io

from recfabric.host.cli.support import Progress


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
