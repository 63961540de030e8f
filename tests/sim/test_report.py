"""The simulator's report helpers."""

from __future__ import annotations

import pytest


def test_progress_off_a_terminal_prints_a_line_per_quarter(capsys: pytest.CaptureFixture[str]) -> None:
    """`make demo | tee` printed a hundred carriage-return redraws run together on one line."""
    from llmscale.sim.report import Progress

    p = Progress("llmscale", True)
    for i in range(0, 1001):
        p(i / 1000)
    err = capsys.readouterr().err
    assert "\r" not in err
    assert [line.split()[-1] for line in err.splitlines()] == ["25%", "50%", "75%", "100%"]
