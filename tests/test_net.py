"""muxio's socket layer (sockops, resolve, connect, sendfile, listeners) on real sockets.

Every test runs on asyncio's stock loop (calling `SocketOps`' methods unbound
and the module functions with the loop) and on muxio's loop (calling the
loop's methods).
The only fakes are a resolver returning chosen loopback addresses (DNS
cannot be made to answer that on demand), a missing SO_REUSEPORT and an
executor that must not be used; each is marked where it is installed.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import hashlib
import io
import os
import socket
import ssl
import struct
import sys
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from conftest import SocketPair
from helpers import has_ipv6_loopback

import muxio
from muxio import connect, listeners, resolve
from muxio.sockops import SocketOps

T = TypeVar("T")
TIMEOUT = 20.0




HAS_V6 = has_ipv6_loopback()
needs_v6 = pytest.mark.skipif(not HAS_V6, reason="no IPv6 loopback")
# a socket left for the garbage collector to close is a leak, even if the fd count agrees
no_leaks = pytest.mark.filterwarnings(
    "error::ResourceWarning", "error::pytest.PytestUnraisableExceptionWarning"
)
needs_proc_fd = pytest.mark.skipif(
    not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd to count descriptors"
)


async def bind_server_sockets(
    loop: asyncio.AbstractEventLoop,
    host: Any,
    port: Any,
    *,
    family: int = socket.AF_UNSPEC,
    flags: int = socket.AI_PASSIVE,
    **options: Any,
) -> list[socket.socket]:
    """What `create_server` listens on: its resolve step, then its bind step."""
    infos = await resolve.resolve_server_hosts(loop, host, port, family=family, flags=flags)
    return listeners.open_tcp_listeners(infos, **options)


_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "bind_server_sockets": bind_server_sockets,
    "connect_socket": connect.connect_socket,
    "unix_connect_socket": connect.unix_connect_socket,
}


class Api:
    """The functions under test: the loop's methods on muxio, `SocketOps`' on asyncio."""

    def __init__(self, loop: asyncio.AbstractEventLoop, kind: str) -> None:
        self.loop = loop
        self.kind = kind

    def __getattr__(self, name: str) -> Any:
        if name in _FUNCTIONS:
            return functools.partial(_FUNCTIONS[name], self.loop)
        if self.kind == "muxio":
            return getattr(self.loop, name)
        return functools.partial(getattr(SocketOps, name), self.loop)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = TIMEOUT) -> T:
        return self.loop.run_until_complete(asyncio.wait_for(coro, timeout))


@pytest.fixture(params=["asyncio", "muxio"])
def api(request: pytest.FixtureRequest) -> Iterator[Api]:
    loop = asyncio.new_event_loop() if request.param == "asyncio" else muxio.new_event_loop()
    try:
        yield Api(loop, request.param)
    finally:
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A 127.0.0.1 port bound but not listening: connecting is refused, nobody can take it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as s:
        s.setblocking(False)
        yield s


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def fake_resolver(api: Api, answers: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Fault injection: the loop's resolver answers `answers` for any name."""
    calls: list[tuple[Any, ...]] = []

    async def getaddrinfo(host: Any, port: Any, **kw: Any) -> list[tuple[Any, ...]]:
        calls.append((host, port))
        return [(fam, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", addr) for fam, addr in answers]

    api.loop.getaddrinfo = getaddrinfo  # type: ignore[method-assign]
    return calls


# -- data -----------------------------------------------------------------------


def test_sendall_and_recv_into_carry_10_mib_intact(api: Api, tcp_pair: SocketPair) -> None:
    a, b = tcp_pair
    payload = os.urandom(10 * 1024 * 1024)

    async def send() -> None:
        await api.sock_sendall(a, payload)
        a.shutdown(socket.SHUT_WR)

    async def receive() -> bytes:
        got = bytearray()
        buf = bytearray(65536)
        while True:
            n = await api.sock_recv_into(b, buf)
            if n == 0:
                return bytes(got)
            got += buf[:n]

    async def both() -> bytes:
        _, data = await asyncio.gather(send(), receive())
        return data

    data = api.run(both())
    assert len(data) == len(payload)
    assert hashlib.sha256(data).digest() == hashlib.sha256(payload).digest()


def test_recv_returns_available_data_then_empty_at_eof(api: Api, tcp_pair: SocketPair) -> None:
    a, b = tcp_pair
    a.send(b"hello")
    assert api.run(api.sock_recv(b, 100)) == b"hello"
    a.shutdown(socket.SHUT_WR)
    assert api.run(api.sock_recv(b, 100)) == b""


def test_recv_waits_for_data_sent_later(api: Api, tcp_pair: SocketPair) -> None:
    a, b = tcp_pair

    async def scenario() -> bytes:
        task = api.loop.create_task(api.sock_recv(b, 100))
        await asyncio.sleep(0)
        assert not task.done()
        api.loop.call_soon(a.send, b"later")
        return await task

    assert api.run(scenario()) == b"later"


def test_sendall_accepts_memoryview_of_wide_items(api: Api, tcp_pair: SocketPair) -> None:
    a, b = tcp_pair
    import array

    data = array.array("i", range(1000))
    api.run(api.sock_sendall(a, memoryview(data)))
    a.shutdown(socket.SHUT_WR)

    async def drain() -> bytes:
        out = b""
        while chunk := await api.sock_recv(b, 65536):
            out += chunk
        return out

    assert api.run(drain()) == data.tobytes()


def test_cancelled_recv_loses_no_data(api: Api, tcp_pair: SocketPair) -> None:
    a, b = tcp_pair

    async def scenario() -> bytes:
        task = api.loop.create_task(api.sock_recv(b, 100))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        a.send(b"kept")
        return await api.sock_recv(b, 100)

    assert api.run(scenario()) == b"kept"


def test_recv_cancelled_in_the_iteration_its_data_arrives_loses_nothing(
    api: Api, tcp_pair: SocketPair
) -> None:
    """Readiness and cancellation in one loop iteration: the bytes stay in the socket.

    The data is queued before the iteration and a due timer cancels the
    task.  Where the loop runs I/O callbacks before timers (asyncio does) it
    has seen `b` readable but the task has not run again: a receive done
    inside the readiness callback would lose the bytes here.  Whichever the
    order, the bytes must reach either the task or the next receive.
    """
    a, b = tcp_pair

    async def scenario() -> bytes:
        task = api.loop.create_task(api.sock_recv(b, 100))
        await asyncio.sleep(0)
        a.send(b"precious")
        api.loop.call_later(0, task.cancel)
        try:
            return await task
        except asyncio.CancelledError:
            return await api.sock_recv(b, 100)

    assert api.run(scenario()) == b"precious"


def test_two_receivers_on_one_socket_both_complete(api: Api, tcp_pair: SocketPair) -> None:
    a, b = tcp_pair

    async def scenario() -> list[bytes]:
        first = api.loop.create_task(api.sock_recv(b, 1))
        second = api.loop.create_task(api.sock_recv(b, 1))
        await asyncio.sleep(0)
        a.send(b"xy")
        return sorted(await asyncio.gather(first, second))

    assert api.run(scenario()) == [b"x", b"y"]


def test_waiters_share_one_registration_kept_on_the_loop(api: Api, tcp_pair: SocketPair) -> None:
    a, b = tcp_pair

    async def scenario() -> None:
        first = api.loop.create_task(api.sock_recv(b, 1))
        second = api.loop.create_task(api.sock_recv(b, 1))
        await asyncio.sleep(0)
        registry = api.loop._readiness  # type: ignore[attr-defined]
        assert list(registry) == [(b.fileno(), False)]
        assert registry[(b.fileno(), False)].users == 2
        a.send(b"xy")
        await asyncio.gather(first, second)
        assert registry == {}

    api.run(scenario())


def test_datagrams_round_trip_with_addresses(api: Api) -> None:
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx,
    ):
        rx.bind(("127.0.0.1", 0))
        tx.bind(("127.0.0.1", 0))
        rx.setblocking(False)
        tx.setblocking(False)

        async def scenario() -> None:
            task = api.loop.create_task(api.sock_recvfrom(rx, 100))
            await asyncio.sleep(0)
            assert await api.sock_sendto(tx, b"one", rx.getsockname()) == 3
            assert await task == (b"one", tx.getsockname())
            buf = bytearray(10)
            await api.sock_sendto(tx, b"two", rx.getsockname())
            n, addr = await api.sock_recvfrom_into(rx, buf)
            assert (buf[:n], addr) == (b"two", tx.getsockname())
            await api.sock_sendto(tx, b"three", rx.getsockname())
            n, addr = await api.sock_recvfrom_into(rx, buf, 2)
            assert buf[:n] == b"th"

        api.run(scenario())


# -- argument checks ------------------------------------------------------------


def test_blocking_socket_is_rejected_in_debug_mode_only(api: Api, tcp_pair: SocketPair) -> None:
    a, b = tcp_pair
    b.setblocking(True)
    a.send(b"z")
    assert api.run(api.sock_recv(b, 1)) == b"z"
    api.loop.set_debug(True)
    calls: list[Coroutine[Any, Any, Any]] = [
        api.sock_recv(b, 1),
        api.sock_recv_into(b, bytearray(1)),
        api.sock_sendall(b, b"x"),
        api.sock_connect(b, ("127.0.0.1", 1)),
        api.sock_accept(b),
        api.sock_recvfrom(b, 1),
        api.sock_recvfrom_into(b, bytearray(1)),
        api.sock_sendto(b, b"x", ("127.0.0.1", 1)),
        api.sock_sendfile(b, io.BytesIO(b"x")),
    ]
    for coro in calls:
        with pytest.raises(ValueError, match=r"^the socket must be non-blocking$"):
            api.run(coro)


def test_ssl_socket_is_rejected(api: Api) -> None:
    ctx = ssl.create_default_context()
    wrapped = ctx.wrap_socket(
        socket.socket(), server_hostname="example.invalid", do_handshake_on_connect=False
    )
    with wrapped:
        with pytest.raises(TypeError, match=r"^Socket cannot be of type SSLSocket$"):
            api.run(api.sock_recv(wrapped, 1))
        with pytest.raises(TypeError, match=r"^Socket cannot be of type SSLSocket$"):
            api.run(api.sock_sendall(wrapped, b"x"))


# -- accept and connect ---------------------------------------------------------


def test_accept_returns_a_non_blocking_connection(api: Api, listener: socket.socket) -> None:
    async def scenario() -> None:
        task = api.loop.create_task(api.sock_accept(listener))
        await asyncio.sleep(0)
        client = socket.socket()
        client.setblocking(False)
        try:
            await api.sock_connect(client, listener.getsockname())
            conn, addr = await task
            with conn:
                assert conn.gettimeout() == 0
                assert addr == client.getsockname()
        finally:
            client.close()

    api.run(scenario())


def test_cancelled_accept_loses_no_connection(api: Api, listener: socket.socket) -> None:
    """As for receiving: a connection queued as the accept is cancelled stays queued."""

    async def scenario() -> None:
        task = api.loop.create_task(api.sock_accept(listener))
        await asyncio.sleep(0)
        client = socket.create_connection(listener.getsockname(), timeout=5)
        api.loop.call_later(0, task.cancel)
        with client:
            try:
                conn, addr = await task
            except asyncio.CancelledError:
                conn, addr = await api.sock_accept(listener)
            with conn:
                assert addr == client.getsockname()

    api.run(scenario())


def test_connect_resolves_a_host_name(api: Api, listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    with socket.socket() as client:
        client.setblocking(False)
        api.run(api.sock_connect(client, ("localhost", port)))
        assert client.getpeername() == ("127.0.0.1", port)


def test_connect_to_a_closed_port_is_refused(api: Api, refused_port: int) -> None:
    with socket.socket() as client:
        client.setblocking(False)
        with pytest.raises(ConnectionRefusedError):
            api.run(api.sock_connect(client, ("127.0.0.1", refused_port)))
    with pytest.raises(ConnectionRefusedError):
        api.run(api.connect_socket("127.0.0.1", refused_port))


def test_unix_connect_and_stale_socket_file_replaced(api: Api, tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()
    server = listeners.bind_unix_listener(path)
    try:
        assert server.gettimeout() == 0

        async def scenario() -> bytes:
            client = await api.unix_connect_socket(path)
            with client:
                conn, _ = await api.sock_accept(server)
                with conn:
                    await api.sock_sendall(client, b"unix")
                    return await api.sock_recv(conn, 10)

        assert api.run(scenario()) == b"unix"
    finally:
        listeners.close_listener(server)
    assert not path.exists()


def test_unix_connect_to_missing_path_fails_and_closes(api: Api, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        api.run(api.unix_connect_socket(tmp_path / "absent.sock"))


# -- connect_socket -------------------------------------------------------------


def test_connect_socket_returns_a_connected_non_blocking_socket(
    api: Api, listener: socket.socket
) -> None:
    sock = api.run(api.connect_socket("127.0.0.1", listener.getsockname()[1]))
    with sock:
        assert sock.gettimeout() == 0
        assert sock.getpeername() == listener.getsockname()


@needs_proc_fd
@no_leaks
@pytest.mark.parametrize("delay", [None, 0.25])
def test_connect_socket_skips_a_refused_address(
    api: Api, listener: socket.socket, refused_port: int, delay: float | None
) -> None:
    good = listener.getsockname()
    calls = fake_resolver(
        api, [(socket.AF_INET, ("127.0.0.1", refused_port)), (socket.AF_INET, good)]
    )
    before = open_fds()
    sock = api.run(api.connect_socket("service.invalid", 80, happy_eyeballs_delay=delay))
    assert calls == [("service.invalid", 80)]
    with sock:
        assert sock.getpeername() == good
        assert open_fds() == before + 1
    assert open_fds() == before


@needs_proc_fd
@no_leaks
@pytest.mark.skipif(sys.platform != "linux", reason="relies on Linux dropping SYNs to a full queue")
def test_happy_eyeballs_closes_the_attempt_that_was_still_connecting(
    api: Api, listener: socket.socket
) -> None:
    """A first address that never answers: the second wins, the first is closed.

    Linux drops a SYN to a listener whose accept queue is full, so a connect
    to `silent` stays in SYN-SENT for minutes: an address that neither
    accepts nor refuses, on loopback.
    """
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(0)
        with socket.create_connection(silent.getsockname(), timeout=5):
            fake_resolver(
                api,
                [(socket.AF_INET, silent.getsockname()), (socket.AF_INET, listener.getsockname())],
            )
            before = open_fds()
            sock = api.run(api.connect_socket("x.invalid", 1, happy_eyeballs_delay=0.05))
            with sock:
                assert sock.getpeername() == listener.getsockname()
                assert open_fds() == before + 1


@needs_proc_fd
@no_leaks
def test_happy_eyeballs_all_refused_reports_every_attempt(api: Api) -> None:
    ports = []
    holders = []
    for _ in range(2):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        holders.append(s)
        ports.append(s.getsockname()[1])
    try:
        fake_resolver(api, [(socket.AF_INET, ("127.0.0.1", p)) for p in ports])
        before = open_fds()
        with pytest.raises(OSError) as info:
            api.run(api.connect_socket("x.invalid", 1, happy_eyeballs_delay=0.1))
        assert open_fds() == before
        assert str(info.value) == "Multiple exceptions: " + ", ".join(
            f"[Errno {errno.ECONNREFUSED}] Connect call failed ('127.0.0.1', {p})" for p in ports
        )
        if sys.version_info >= (3, 11):
            with pytest.raises(ExceptionGroup) as group:  # noqa: F821
                api.run(
                    api.connect_socket("x.invalid", 1, happy_eyeballs_delay=0.1, all_errors=True)
                )
            assert [type(e) for e in group.value.exceptions] == [ConnectionRefusedError] * 2
        else:
            with pytest.raises(TypeError):
                api.run(api.connect_socket("x.invalid", 1, all_errors=True))
    finally:
        for s in holders:
            s.close()


@needs_v6
def test_interleave_alternates_families(api: Api) -> None:
    holders = []
    answers = []
    for fam, host in [
        (socket.AF_INET, "127.0.0.1"),
        (socket.AF_INET, "127.0.0.1"),
        (socket.AF_INET6, "::1"),
    ]:
        s = socket.socket(fam)
        s.bind((host, 0))
        holders.append(s)
        addr = s.getsockname()
        answers.append((fam, addr))
    try:
        fake_resolver(api, answers)
        with pytest.raises(OSError) as info:
            api.run(api.connect_socket("x.invalid", 1, interleave=1))
        ports = [str(a[1][1]) for a in answers]
        message = str(info.value)
        order = sorted(ports, key=message.index)
        assert order == [ports[0], ports[2], ports[1]]
    finally:
        for s in holders:
            s.close()


def test_connect_socket_binds_local_addr(api: Api, listener: socket.socket) -> None:
    sock = api.run(
        api.connect_socket("127.0.0.1", listener.getsockname()[1], local_addr=("127.0.0.1", 0))
    )
    with sock:
        assert sock.getsockname()[0] == "127.0.0.1"
        assert sock.getsockname()[1] != 0


def test_connect_socket_local_addr_in_use_names_the_address(
    api: Api, listener: socket.socket
) -> None:
    taken = listener.getsockname()
    with pytest.raises(OSError) as info:
        api.run(api.connect_socket("127.0.0.1", taken[1], local_addr=taken))
    assert info.value.errno == errno.EADDRINUSE
    reason = (
        f"[errno {errno.EADDRINUSE}] address already in use"
        if sys.version_info >= (3, 13)
        else "address already in use"
    )
    assert str(info.value) == (
        f"[Errno {errno.EADDRINUSE}] error while attempting to bind on address {taken!r}: " + reason
    )


@needs_v6
def test_connect_socket_local_addr_of_another_family(api: Api, listener: socket.socket) -> None:
    with pytest.raises(OSError, match=r"^no matching local address with family="):
        api.run(api.connect_socket("127.0.0.1", listener.getsockname()[1], local_addr=("::1", 0)))


def test_connect_socket_needs_host_or_port(api: Api) -> None:
    with pytest.raises(ValueError, match="host and port was not specified"):
        api.run(api.connect_socket(None, None))


# -- names ----------------------------------------------------------------------

NUMERIC_CASES = [
    ("127.0.0.1", 80, 0, socket.SOCK_STREAM, 0, 0),
    ("127.0.0.1", "8080", socket.AF_INET, socket.SOCK_DGRAM, 0, 0),
    ("127.0.0.1", None, 0, socket.SOCK_STREAM, socket.IPPROTO_TCP, socket.AI_PASSIVE),
    ("127.0.0.1", "", 0, socket.SOCK_STREAM, 0, socket.AI_NUMERICSERV),
    (b"10.1.2.3", b"443", 0, socket.SOCK_STREAM, 0, socket.AI_NUMERICHOST),
    ("::1", 443, 0, socket.SOCK_STREAM, 0, 0),
    ("::0001", 443, socket.AF_INET6, socket.SOCK_DGRAM, socket.IPPROTO_UDP, 0),
    ("::ffff:1.2.3.4", 1, 0, socket.SOCK_STREAM, 0, 0),
    ("fe80::1", 1, 0, socket.SOCK_STREAM, 0, 0),
]


@pytest.mark.parametrize("case", NUMERIC_CASES, ids=repr)
def test_getaddrinfo_numeric_host_skips_the_executor_with_the_same_answer(
    api: Api, case: tuple[Any, ...]
) -> None:
    host, port, family, type_, proto, flags = case
    expected = socket.getaddrinfo(host, port, family, type_, proto, flags)

    def no_executor(*args: Any) -> Any:
        raise AssertionError("numeric lookups must not use the executor")

    api.loop.run_in_executor = no_executor  # type: ignore[method-assign]  # fault injection
    got = api.run(api.getaddrinfo(host, port, family=family, type=type_, proto=proto, flags=flags))
    assert got == expected


@pytest.mark.parametrize(
    "case",
    [
        ("localhost", 80, 0, socket.SOCK_STREAM, 0, 0),
        ("127.0.0.1", 80, 0, 0, 0, 0),
        ("127.1", 80, 0, socket.SOCK_STREAM, 0, 0),
        ("127.0.0.1", 70000, 0, socket.SOCK_STREAM, 0, 0),
        ("127.0.0.1", 80, 0, socket.SOCK_STREAM, 0, socket.AI_CANONNAME),
    ],
    ids=repr,
)
def test_getaddrinfo_other_queries_match_the_resolver(api: Api, case: tuple[Any, ...]) -> None:
    host, port, family, type_, proto, flags = case
    expected = socket.getaddrinfo(host, port, family, type_, proto, flags)
    got = api.run(api.getaddrinfo(host, port, family=family, type=type_, proto=proto, flags=flags))
    assert sorted(got) == sorted(expected)


def _ip_text() -> Any:
    from hypothesis import strategies as st

    v4 = st.ip_addresses(v=4).map(str)
    v6 = st.ip_addresses(v=6).flatmap(
        lambda ip: st.sampled_from([ip.compressed, ip.exploded, ip.exploded.upper()])
    )
    odd = st.sampled_from(["127.1", "0x7f.0.0.1", "::1%lo", "1.2.3.4 ", "", "localhost"])
    return v4 | v6 | odd


@pytest.mark.skipif(not HAS_V6, reason="answers for v6 literals need IPv6")
def test_getaddrinfo_answers_exactly_what_socket_getaddrinfo_answers() -> None:
    """Property: shortcut or not, the answer (or the error) is the resolver's."""
    pytest.importorskip("hypothesis")
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    loop = asyncio.new_event_loop()
    used_executor: list[bool] = []

    async def inline_executor(_: Any, fn: Callable[..., Any], *args: Any) -> Any:
        used_executor.append(True)
        return fn(*args)

    loop.run_in_executor = inline_executor  # type: ignore[method-assign,assignment]
    ports = (
        st.none()
        | st.integers(-2, 70_000)
        | st.integers(0, 70_000).map(str)
        | st.sampled_from(["", "http", " 80", "0080", b"443", b""])
    )

    @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
    @given(
        host=_ip_text(),
        port=ports,
        family=st.sampled_from([0, socket.AF_INET, socket.AF_INET6]),
        type_=st.sampled_from([0, socket.SOCK_STREAM, socket.SOCK_DGRAM]),
        proto=st.sampled_from([0, socket.IPPROTO_TCP, socket.IPPROTO_UDP]),
        flags=st.sampled_from([0, socket.AI_PASSIVE, socket.AI_NUMERICHOST, socket.AI_CANONNAME]),
    )
    def check(host: str, port: Any, family: int, type_: int, proto: int, flags: int) -> None:
        try:
            expected: Any = socket.getaddrinfo(host, port, family, type_, proto, flags)
        except (OSError, UnicodeError) as exc:
            expected = type(exc)
        try:
            got: Any = loop.run_until_complete(
                SocketOps.getaddrinfo(
                    loop, host, port, family=family, type=type_, proto=proto, flags=flags
                )
            )
        except (OSError, UnicodeError) as exc:
            got = type(exc)
        assert got == expected

    try:
        check()
    finally:
        loop.close()
    assert used_executor  # the property covered the resolver path too


def test_getaddrinfo_errors_are_the_resolvers(api: Api) -> None:
    with pytest.raises(socket.gaierror):
        api.run(api.getaddrinfo("1.2.3.4", 80, family=socket.AF_INET6, type=socket.SOCK_STREAM))


def test_getnameinfo(api: Api) -> None:
    flags = socket.NI_NUMERICHOST | socket.NI_NUMERICSERV
    assert api.run(api.getnameinfo(("127.0.0.1", 80), flags)) == ("127.0.0.1", "80")


# -- sendfile -------------------------------------------------------------------


@pytest.fixture
def mib_file(tmp_path: Path) -> tuple[Path, bytes]:
    data = os.urandom(1024 * 1024)
    path = tmp_path / "data.bin"
    path.write_bytes(data)
    return path, data


def _drain(api: Api, sock: socket.socket) -> Coroutine[Any, Any, bytes]:
    async def drain() -> bytes:
        out = bytearray()
        while chunk := await api.sock_recv(sock, 1 << 20):
            out += chunk
        return bytes(out)

    return drain()


def _sendfile_and_drain(
    api: Api, tcp_pair: SocketPair, file: Any, *args: Any, **kw: Any
) -> tuple[int, bytes]:
    a, b = tcp_pair

    async def scenario() -> tuple[int, bytes]:
        async def send() -> int:
            n: int = await api.sock_sendfile(a, file, *args, **kw)
            a.shutdown(socket.SHUT_WR)
            return n

        return tuple(await asyncio.gather(send(), _drain(api, b)))  # type: ignore[return-value]

    return api.run(scenario())


@pytest.mark.parametrize(
    ("offset", "count"), [(0, None), (1000, 500_000), (1000, None), (1024 * 1024 - 10, 100)]
)
def test_sendfile_sends_the_requested_range_and_moves_the_position(
    api: Api, tcp_pair: SocketPair, mib_file: tuple[Path, bytes], offset: int, count: int | None
) -> None:
    path, data = mib_file
    expected = data[offset : offset + count] if count else data[offset:]
    with open(path, "rb") as f:
        sent, got = _sendfile_and_drain(api, tcp_pair, f, offset, count)
        assert sent == len(expected)
        assert got == expected
        assert f.tell() == offset + len(expected)


@pytest.mark.parametrize(("offset", "count"), [(0, None), (1000, 500_000)])
def test_sendfile_falls_back_for_files_without_descriptor(
    api: Api, tcp_pair: SocketPair, mib_file: tuple[Path, bytes], offset: int, count: int | None
) -> None:
    _, data = mib_file
    expected = data[offset : offset + count] if count else data[offset:]
    f = io.BytesIO(data)
    sent, got = _sendfile_and_drain(api, tcp_pair, f, offset, count)
    assert (sent, got) == (len(expected), expected)
    assert f.tell() == offset + len(expected)


@no_leaks
@pytest.mark.parametrize("how", ["sendfile", "sendall"])
def test_sending_to_a_peer_that_closed_raises_connection_error(
    api: Api, tcp_pair: SocketPair, mib_file: tuple[Path, bytes], how: str
) -> None:
    a, b = tcp_pair
    b.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    b.close()  # with zero linger: a reset, whatever is in flight

    async def send_forever() -> None:
        with open(mib_file[0], "rb") as f:
            for _ in range(64):
                if how == "sendfile":
                    await api.sock_sendfile(a, f, 0)
                else:
                    await api.sock_sendall(a, mib_file[1])

    with pytest.raises(ConnectionError):
        api.run(send_forever())


def test_sendfile_without_fallback_reports_not_available(api: Api, tcp_pair: SocketPair) -> None:
    a, _ = tcp_pair
    with pytest.raises(asyncio.SendfileNotAvailableError):
        api.run(api.sock_sendfile(a, io.BytesIO(b"abc"), fallback=False))


def test_sendfile_of_empty_file_sends_nothing(
    api: Api, tcp_pair: SocketPair, tmp_path: Path
) -> None:
    a, _ = tcp_pair
    path = tmp_path / "empty"
    path.write_bytes(b"")
    with open(path, "rb") as f:
        assert api.run(api.sock_sendfile(a, f)) == 0


@pytest.mark.parametrize(
    ("kw", "exc", "message"),
    [
        ({"count": 0}, ValueError, "count must be a positive integer (got 0)"),
        ({"count": "1"}, TypeError, "count must be a positive integer (got '1')"),
        ({"offset": -1}, ValueError, "offset must be a non-negative integer (got -1)"),
        ({"offset": 1.5}, TypeError, "offset must be a non-negative integer (got 1.5)"),
    ],
)
def test_sendfile_argument_errors(
    api: Api, tcp_pair: SocketPair, mib_file: tuple[Path, bytes], kw: Any, exc: type, message: str
) -> None:
    a, _ = tcp_pair
    with open(mib_file[0], "rb") as f, pytest.raises(exc) as info:
        api.run(api.sock_sendfile(a, f, **kw))
    assert str(info.value) == message


def test_sendfile_rejects_text_files_and_datagram_sockets(
    api: Api, tcp_pair: SocketPair, mib_file: tuple[Path, bytes]
) -> None:
    a, _ = tcp_pair
    with open(mib_file[0], encoding="latin-1") as f, pytest.raises(ValueError) as info:
        api.run(api.sock_sendfile(a, f))
    assert str(info.value) == "file should be opened in binary mode"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.setblocking(False)
        with open(mib_file[0], "rb") as f, pytest.raises(ValueError) as info:
            api.run(api.sock_sendfile(udp, f))
    assert str(info.value) == "only SOCK_STREAM type sockets are supported"


# -- server sockets -------------------------------------------------------------


def _accepts(sock: socket.socket) -> bool:
    with socket.create_connection(sock.getsockname()[:2], timeout=5) as c:
        sock.setblocking(True)
        sock.settimeout(5)
        conn, addr = sock.accept()
        conn.close()
        sock.setblocking(False)
        return bool(addr == c.getsockname())


@needs_v6
def test_bind_server_sockets_one_listener_per_host_each_with_its_own_port(api: Api) -> None:
    sockets = api.run(api.bind_server_sockets(["127.0.0.1", "::1"], 0))
    try:
        assert sorted(s.family for s in sockets) == [socket.AF_INET, socket.AF_INET6]
        for s in sockets:
            assert s.gettimeout() == 0
            assert s.getsockname()[1] != 0
            assert s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
            assert _accepts(s)
        v6 = next(s for s in sockets if s.family == socket.AF_INET6)
        assert v6.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)
    finally:
        for s in sockets:
            s.close()


@pytest.mark.parametrize(
    "hosts", [["127.0.0.1", "localhost", "127.0.0.1"], "localhost", ("127.0.0.1",)], ids=repr
)
def test_bind_server_sockets_binds_the_addresses_asyncio_binds(api: Api, hosts: Any) -> None:
    async def asyncio_addresses() -> list[tuple[int, str]]:
        server = await asyncio.get_running_loop().create_server(asyncio.Protocol, hosts, 0)
        try:
            return sorted((s.family, s.getsockname()[0]) for s in server.sockets)
        finally:
            server.close()
            await server.wait_closed()

    expected = asyncio.run(asyncio_addresses())
    sockets = api.run(api.bind_server_sockets(hosts, 0))
    try:
        assert sorted((s.family, s.getsockname()[0]) for s in sockets) == expected
    finally:
        for s in sockets:
            s.close()


@needs_proc_fd
@no_leaks
def test_bind_server_sockets_failure_names_the_address_and_closes_all(
    api: Api, listener: socket.socket
) -> None:
    host, port = listener.getsockname()
    fake_resolver(api, [(socket.AF_INET, ("127.0.0.2", port)), (socket.AF_INET, (host, port))])
    before = open_fds()
    with pytest.raises(OSError) as info:
        api.run(api.bind_server_sockets("two.invalid", port))
    assert open_fds() == before
    assert info.value.errno == errno.EADDRINUSE
    assert str(info.value).startswith(
        f"[Errno {errno.EADDRINUSE}] error while attempting to bind on address "
        f"('127.0.0.1', {port}): "
    )


@pytest.mark.skipif(not hasattr(socket, "SO_REUSEPORT"), reason="no SO_REUSEPORT")
def test_reuse_port_lets_two_listeners_share_a_port(api: Api) -> None:
    first = api.run(api.bind_server_sockets("127.0.0.1", 0, reuse_port=True))
    port = first[0].getsockname()[1]
    try:
        second = api.run(api.bind_server_sockets("127.0.0.1", port, reuse_port=True))
        assert second[0].getsockname()[1] == port
        second[0].close()
        with pytest.raises(OSError) as info:
            api.run(api.bind_server_sockets("127.0.0.1", port))
        assert info.value.errno == errno.EADDRINUSE
    finally:
        first[0].close()


@needs_proc_fd
@no_leaks
def test_reuse_port_unsupported_is_a_value_error(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(socket, "SO_REUSEPORT", raising=False)  # fault injection
    before = open_fds()
    with pytest.raises(ValueError, match=r"^reuse_port not supported by socket module$"):
        api.run(api.bind_server_sockets("127.0.0.1", 0, reuse_port=True))
    assert open_fds() == before


def test_bind_server_sockets_needs_host_or_port(api: Api) -> None:
    with pytest.raises(ValueError, match="Neither host/port nor sock were specified"):
        api.run(api.bind_server_sockets(None, None))


def test_bind_server_sockets_listens_with_keep_alive(api: Api) -> None:
    sockets = api.run(api.bind_server_sockets("127.0.0.1", 0, keep_alive=True, backlog=5))
    with sockets[0] as s:
        assert s.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)
        assert s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)


# -- unix server sockets --------------------------------------------------------


def test_unix_server_refuses_to_replace_a_regular_file(tmp_path: Path) -> None:
    path = tmp_path / "precious.txt"
    path.write_text("keep me")
    with pytest.raises(OSError) as info:
        listeners.bind_unix_listener(path)
    assert info.value.errno == errno.EADDRINUSE
    assert str(info.value) == f"[Errno {errno.EADDRINUSE}] Address {str(path)!r} is already in use"
    assert path.read_text() == "keep me"


def test_unix_server_refuses_a_symlink(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_text("keep me")
    path = tmp_path / "s.sock"
    path.symlink_to(target)
    with pytest.raises(listeners.UnixPathTaken) as info:
        listeners.bind_unix_listener(path)
    assert info.value.reason == "symlink"
    assert path.is_symlink() and target.read_text() == "keep me"


def test_unix_server_never_takes_over_a_live_servers_file(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    first = listeners.bind_unix_listener(path)
    try:
        with pytest.raises(listeners.UnixPathTaken) as info:
            listeners.bind_unix_listener(path)
        assert info.value.reason == "live"
        in_use = f"[Errno {errno.EADDRINUSE}] Address {str(path)!r} is already in use"
        assert str(info.value) == in_use
        with socket.socket(socket.AF_UNIX) as client:  # the live one still answers at its path
            client.connect(str(path))
            conn, _ = first.accept()
            conn.close()
    finally:
        listeners.close_listener(first)
    assert not path.exists()


def test_unix_cleanup_leaves_a_successors_socket_alone(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    first = listeners.bind_unix_listener(path)
    path.unlink()  # someone removed it: a successor may bind the path while `first` is open
    second = listeners.bind_unix_listener(path)
    try:
        listeners.close_listener(first)
        assert path.exists()
    finally:
        listeners.close_listener(second)
    assert not path.exists()


def test_unix_without_cleanup_leaves_the_file(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    sock = listeners.bind_unix_listener(path, remember=False)
    listeners.close_listener(sock)
    assert sock.fileno() == -1
    assert path.exists()


def test_create_unix_server_refuses_a_live_servers_path_and_replaces_a_stale_one(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "s.sock")
    loop = muxio.new_event_loop()

    class Hello(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            transport.write(b"live")  # type: ignore[attr-defined]
            transport.close()

    async def hello_from(where: str) -> bytes:
        reader, writer = await asyncio.open_unix_connection(where)
        data = await reader.read()
        writer.close()
        return data

    async def scenario() -> None:
        live = await loop.create_unix_server(Hello, path)
        try:
            with pytest.raises(OSError) as info:
                await loop.create_unix_server(Hello, path)
            assert info.value.errno == errno.EADDRINUSE
            in_use = f"[Errno {errno.EADDRINUSE}] Address {path!r} is already in use"
            assert str(info.value) == in_use
            assert await hello_from(path) == b"live"
        finally:
            live.close()
            await live.wait_closed()
        left = os.path.exists(path)  # before 3.13 (no cleanup_socket) the file stays: stale
        assert left == (sys.version_info < (3, 13))
        if not left:
            stale = socket.socket(socket.AF_UNIX)
            stale.bind(path)
            stale.close()
        replacement = await loop.create_unix_server(Hello, path)
        try:
            assert await hello_from(path) == b"live"
        finally:
            replacement.close()
            await replacement.wait_closed()
        assert os.path.exists(path) == (sys.version_info < (3, 13))  # 3.13's cleanup_socket

    try:
        loop.run_until_complete(asyncio.wait_for(scenario(), TIMEOUT))
    finally:
        loop.close()
