"""Progress off a terminal: plain lines at most every interval and one at the end, with rate and eta."""

from __future__ import annotations

import io

from nemesis_analysis.progress import plain_progress, progress_line


def test_plain_progress_prints_periodic_lines_and_a_final_one():
    now = [100.0]
    stream = io.StringIO()
    with plain_progress("pretraining", total=10, stream=stream, interval=10.0, clock=lambda: now[0]) as advance:
        for step in range(10):
            now[0] += 3.0  # 3 s per step: lines after steps 4 (12 s) and 8 (24 s), then the final one
            advance(loss=0.5 / (step + 1))
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("pretraining: 4/10 (0.333/s, elapsed 0:00:12, eta 0:00:18)")
    assert lines[1].startswith("pretraining: 8/10 (0.333/s, elapsed 0:00:24, eta 0:00:06)")
    assert lines[2] == "pretraining: 10/10 (0.333/s, elapsed 0:00:30, eta 0:00:00)  loss 0.05"


def test_no_duplicate_final_line_and_unknown_eta_before_any_progress():
    now = [0.0]
    stream = io.StringIO()
    with plain_progress("x", total=2, stream=stream, interval=1.0, clock=lambda: now[0]) as advance:
        now[0] = 5.0
        advance(2)
    assert stream.getvalue().splitlines() == ["x: 2/2 (0.4/s, elapsed 0:00:05, eta 0:00:00)"]
    assert progress_line("y", 0, 5, 0.0, {}) == "y: 0/5 (0/s, elapsed 0:00:00, eta ?)"
