"""Hostile configs: whatever the YAML, `relay serve` exits 2 with one line naming the problem, quickly and
in little memory (the files are in tests/configs/). Before, the billion laughs hung at ~900 MB, 10,000
levels of nesting printed a 3,000-line RecursionError, and an empty file or a duplicated key were silently
accepted.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from relay.config import MAX_CONFIG_BYTES, load

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = Path(__file__).resolve().parent / "configs"
MAX_RSS_KB = 150_000  # the interpreter with the relay imported is ~40 MB
MAX_SECONDS = 10.0


# A process's peak RSS counts the pages it had before exec, and a child forked from pytest starts as a
# copy of pytest (over 150 MB late in a full run): so `relay serve` is forked from a small wrapper
# interpreter, which reports that child's own rusage.
_WRAPPER = """
import os, subprocess, sys, time
t0 = time.monotonic()
proc = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
err = proc.stderr.read()
_, status, usage = os.wait4(proc.pid, 0)
sys.stderr.buffer.write(err)
print(os.waitstatus_to_exitcode(status), usage.ru_maxrss, time.monotonic() - t0)
"""


def serve(config: Path) -> tuple[int, str, float, int]:
    """`relay serve --config`: (exit code, stderr, seconds, peak RSS in kB of that process alone)."""
    done = subprocess.run(
        [sys.executable, "-c", _WRAPPER, sys.executable, "-m", "relay", "serve", "--config", str(config)],
        capture_output=True,
        cwd=ROOT,
        timeout=60,
    )
    code, rss, seconds = done.stdout.split()
    return int(code), done.stderr.decode(errors="replace"), float(seconds), int(rss)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("billion_laughs.yaml", "expands to more than"),
        ("alias_chain.yaml", "expands to more than"),
        ("recursive_alias.yaml", "an alias that contains itself"),
        ("deep_nesting.yaml", "nesting depth"),
        ("deep_mappings.yaml", "nested deeper than 64 levels"),
        ("empty.yaml", "the config is empty"),
        ("comments_only.yaml", "the config is empty"),
        ("scalar.yaml", "top level must be a mapping"),
        ("duplicate_top_level.yaml", "line 5: YAML error: duplicate key 'server'"),
        ("duplicate_nested.yaml", "line 8: YAML error: duplicate key 'password'"),
    ],
)
def test_given_hostile_config_file_then_exit_2_with_one_line_quickly_and_in_bounded_memory(
    name: str, expected: str
):
    code, err, seconds, rss_kb = serve(CONFIGS / name)
    assert code == 2, err[-2000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1, err[-2000:]
    assert expected in lines[0] and lines[0].startswith("relay: ")
    assert seconds < MAX_SECONDS
    assert rss_kb < MAX_RSS_KB, f"{rss_kb} kB"


def test_given_config_over_the_size_limit_then_refused_before_it_is_parsed(tmp_path: Path):
    big = tmp_path / "big.yaml"
    big.write_text("server: {host: 127.0.0.1}\n" + "#" * MAX_CONFIG_BYTES + "\n")
    code, err, seconds, _ = serve(big)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"larger than {MAX_CONFIG_BYTES} bytes" in err
    assert seconds < MAX_SECONDS


def test_given_anchor_and_merge_key_with_override_then_config_loads():
    cfg = load(CONFIGS / "merge_keys.yaml")
    assert [(a.name, a.max_connections, a.username) for a in cfg.accounts] == [("a", 2, "u"), ("b", 1, "u")]


def test_given_aliases_within_the_bounds_then_each_is_expanded_once_and_the_values_are_shared(tmp_path: Path):
    p = tmp_path / "c.yaml"
    p.write_text(
        "accounts:\n"
        '  - &a {name: a, url: "http://127.0.0.1:9", username: u, password: "${PW}"}\n'
        "channels:\n"
        + "".join(
            f'  - {{id: c{i}, name: C, number: "{i + 1}", streams: &s{i} [{{account: a, stream_id: {i}}}]}}\n'
            for i in range(50)
        )
    )
    cfg = load(p, env={"PW": "secret"})
    assert cfg.accounts[0].password == "secret" and len(cfg.channels) == 50
