"""The README runs as printed: its ``sh`` and ``python`` code blocks, in order, in one directory.

A block may be marked on the line before its opening fence:

- ``<!-- readme-test: skip: REASON -->``: never run here (the reason is printed in the README,
  e.g. installing the toolchain, which CI does itself, or an ``xrt`` block that needs a card);
- ``<!-- readme-test: slow -->``: run only by the slow suite (``make test-slow``).

Python blocks share one namespace (a later block uses an earlier block's names, as a reader
pasting them into one session would); ``sh`` blocks run under ``bash -euo pipefail`` with this
venv's ``bin`` first on PATH. All blocks run in one fresh working directory.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).parents[1] / "README.md"
_FENCE = re.compile(r"^```(\w*)\s*$")
_MARK = re.compile(r"^<!--\s*readme-test:\s*(skip|slow)\s*(?::\s*(.*?))?\s*-->\s*$")


def readme_blocks(text: str) -> list[dict]:
    """``[{"lang", "code", "line", "mark", "reason"}]`` for every fenced block."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start, lang = i, m.group(1)
        j = i + 1
        while j < len(lines) and lines[j].strip() != "```":
            j += 1
        mark = _MARK.match(lines[start - 1]) if start else None
        blocks.append({"lang": lang, "code": "\n".join(lines[start + 1:j]) + "\n",
                       "line": start + 1, "mark": mark.group(1) if mark else None,
                       "reason": mark.group(2) if mark else None})
        i = j + 1
    return blocks


def _run(blocks, tmp_path, include_slow: bool):
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    namespace = {"__name__": "__readme__"}
    ran = 0
    old = os.getcwd()
    os.chdir(tmp_path)
    try:
        for b in blocks:
            if b["lang"] not in ("sh", "python") or b["mark"] == "skip":
                continue
            if b["mark"] == "slow" and not include_slow:
                continue
            where = f"README.md line {b['line']}"
            if b["lang"] == "sh":
                r = subprocess.run(["bash", "-euo", "pipefail", "-c", b["code"]], env=env,
                                   capture_output=True, text=True, timeout=900)
                assert r.returncode == 0, f"{where}: exit {r.returncode}\n{r.stdout}\n{r.stderr}"
            else:
                exec(compile(b["code"], where, "exec"), namespace)  # noqa: S102 - the README
            ran += 1
    finally:
        os.chdir(old)
    return ran


def test_every_marked_block_says_why():
    blocks = readme_blocks(README.read_text())
    assert blocks
    for b in blocks:
        if b["mark"] == "skip":
            assert b["reason"], f"README.md line {b['line']}: a skipped block needs a reason"
        assert b["lang"] in ("sh", "python", "text", ""), \
            f"README.md line {b['line']}: unexpected block language {b['lang']!r}"


def test_readme_runs_as_printed(tmp_path):
    assert _run(readme_blocks(README.read_text()), tmp_path, include_slow=False) >= 3


@pytest.mark.slow
def test_readme_runs_as_printed_with_slow_blocks(tmp_path):
    assert _run(readme_blocks(README.read_text()), tmp_path, include_slow=True) >= 4


def test_a_readme_mistake_fails_the_test(tmp_path):
    text = "```python\nx = 1\n```\n\n```python\nprint(dense)\n```\n"
    with pytest.raises(NameError, match="dense"):
        _run(readme_blocks(text), tmp_path, include_slow=False)
    text = "<!-- readme-test: skip: needs a card -->\n```sh\nexit 3\n```\n```sh\nexit 4\n```\n"
    blocks = readme_blocks(text)
    assert blocks[0]["mark"] == "skip" and blocks[0]["reason"] == "needs a card"
    with pytest.raises(AssertionError, match="line 5: exit 4"):
        _run(blocks, tmp_path, include_slow=False)
