"""Coverage-guided fuzzing of the client-facing HTTP server with atheris: a manual run, not in CI.

The same oracle as tests/test_fuzz_http.py's parser-level test, driven by libFuzzer instead of
hypothesis: each input is cut into reads at positions taken from its first bytes and fed to
`HttpProtocol` on a fake transport. Every answer must be well framed and never a 5xx, and the answers
(statuses, parsed requests, close) must not depend on how the bytes were cut. Only relay/ is
instrumented (httptools is C).

    pip install atheris            # a wheel exists for CPython 3.11 on x86-64 Linux
    mkdir -p /tmp/corpus && python -m tests.fuzz_atheris /tmp/corpus -max_total_time=300

A crash prints the input and writes it to ./crash-*; replay it with `python -m tests.fuzz_atheris FILE`.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["relay"]):
    from tests.test_fuzz_http import assert_no_server_error, feed, outcome, parse_answers, split


def one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    cuts = [fdp.ConsumeIntInRange(0, 4096) for _ in range(fdp.ConsumeIntInRange(0, 8))]
    raw = fdp.ConsumeBytes(fdp.remaining_bytes())
    whole = feed([raw])
    assert_no_server_error(parse_answers(whole[0]))
    assert outcome(feed(split(raw, cuts))) == outcome(whole), (
        "the answer depends on how it was cut into reads"
    )


def main() -> None:
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
