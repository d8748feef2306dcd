"""The benchmark harness, in its smallest mode: every row runs end to end and prints the table.

Not a measurement (a handful of requests, one repeat): it proves that `python -m benchmarks`
still starts every server and client process, talks to them and reports. python-socketio is in
the `bench` extra; without it, its row is reported as not run and the rest must still pass.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.rows import ROWS

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(120)
def test_smoke_run_prints_the_table(tmp_path: Path) -> None:
    output = tmp_path / "RESULTS.md"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--smoke", "--output", str(output)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    out = proc.stdout
    assert "| row | seq p50 µs |" in out
    assert "| target | rows | siyi | baseline | ratio | goal | result |" in out
    for row in ROWS:
        assert row.label in out
    # Every row that ran measured its round trips: no "—" in the first table's siyi rows.
    siyi_line = next(line for line in out.splitlines() if line.startswith("| siyi ProtocolServer"))
    assert "—" not in siyi_line.split("|")[2]
    assert output.read_text().strip() == out.strip()
    # The scale-out phase (the tests' redis-server binary is on the machine) measured both
    # the broadcast over three nodes and the cross-node requests.
    assert "| row | nodes × clients |" in out
    assert "| row | same node: p50 µs |" in out
    lines = out.splitlines()
    spread = next(
        line
        for line in lines
        if line.startswith("| siyi ProtocolServer + ProtocolClient | 3 × ")
        and "RedisBackplane" in line
    )
    assert "—" not in spread.split("|")[3], spread
    cross = next(
        line
        for line in lines
        if line.startswith("| siyi ProtocolServer + ProtocolClient + RedisBackplane")
    )
    assert "—" not in cross.split("|")[4], cross
    # The stream phase (issue 13): every variant measured its items/s.
    assert "| variant | items/s |" in out
    for variant in ("stream, window 64 (the default)", "stream, window 256", "events"):
        line = next(line for line in lines if line.startswith(f"| {variant} |"))
        assert "—" not in line.split("|")[2], line
