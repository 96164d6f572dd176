"""The soak's short run (bench/soak.py --short, ~20 s): random upstream faults on four streams.

The ten-minute run is in bench/README.md; this one keeps the soak itself working and holds the relay to
the same bar: every fault recovered while a healthy backup exists (NFR11), no byte lost outside the
switches, no stream ended, nothing left open.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_given_random_faults_on_four_streams_then_every_fault_recovered_and_nothing_lost():
    r = subprocess.run(
        [sys.executable, "-m", "bench.soak", "--short"], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)
    assert sum(out["faults_injected"].values()) >= 4, out
    assert out["recovery_rate"] == 1.0 and out["relay_recovery_rate"] == 1.0, out["missed"]
    assert out["failovers"] >= sum(out["faults_injected"].values())
    for key in ("bytes_lost", "bad_packets", "torn_packets", "streams_ended_early", "streams_not_started"):
        assert out[key] == 0, (key, out[key])
    assert out["exhausted"] == 0 and out["relay_exit_code"] == 0 and out["relay_log_errors"] == 0
    assert out["sessions_started"] == out["sessions_ended"] == out["streams"]
    assert out["relay_end"]["fds"] <= out["relay_start"]["fds"] + 2
