"""tests/netns.py: a test that needs a fixed port runs in its own network namespace, never on a stranger's."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests import netns


def no_namespace_here() -> tuple[str, ...]:
    prefix = netns.unshare_prefix()
    if prefix is None:  # a container without CAP_SYS_ADMIN and without user namespaces
        pytest.skip("no network namespace can be made here (unshare --net / --map-root-user --net fail)")
    return prefix


async def test_a_taken_port_without_a_namespace_skips_outside_ci_and_fails_in_ci(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(netns, "unshare_prefix", lambda: None)
    monkeypatch.delenv(netns.ENV, raising=False)
    holder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    holder.bind(("127.0.0.1", 0))
    port = holder.getsockname()[1]
    try:
        monkeypatch.delenv("CI", raising=False)
        with pytest.raises(pytest.skip.Exception, match=f"UDP 127.0.0.1:{port} is taken"):
            await netns.own_port(request, port)
        monkeypatch.setenv("CI", "true")
        with pytest.raises(pytest.fail.Exception, match="CI=true must run this test"):
            await netns.own_port(request, port)
    finally:
        holder.close()
    monkeypatch.delenv("CI")
    assert await netns.own_port(request, port) is True  # free again: the test runs on the host


async def test_in_its_namespace_a_test_sees_only_a_working_loopback(request: pytest.FixtureRequest) -> None:
    """The namespace a test gets has no real interface to broadcast on, and its loopback is up."""
    if not netns.inside():
        no_namespace_here()
    if not await netns.own_port(request, 65001):
        return  # it ran, and passed, in a network namespace of its own
    assert [name for _, name in socket.if_nameindex()] == ["lo"]
    assert netns.port_taken(65001) is None  # whatever holds it on the host is not here
    udp = (socket.AF_INET, socket.SOCK_DGRAM)
    with socket.socket(*udp) as rx, socket.socket(*udp) as tx:
        rx.bind(("127.0.0.1", 0))
        rx.settimeout(5)
        tx.sendto(b"ping", rx.getsockname())
        assert rx.recv(16) == b"ping"


@pytest.mark.parametrize(
    ("body", "passes"),
    [("assert 1 + 1 == 2", True), ("assert 1 + 1 == 3", False), ("pytest.skip('not here')", False)],
)
async def test_the_parent_passes_only_when_the_test_passed_in_the_namespace(
    tmp_path: Path, body: str, passes: bool
) -> None:
    prefix = no_namespace_here()
    (tmp_path / "test_child.py").write_text(f"import pytest\n\n\ndef test_child():\n    {body}\n")
    if passes:
        await netns.run_in_namespace(prefix, "test_child.py::test_child", tmp_path)
    else:
        with pytest.raises(pytest.fail.Exception, match="did not pass"):
            await netns.run_in_namespace(prefix, "test_child.py::test_child", tmp_path)
