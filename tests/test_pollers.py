"""Poller conformance: every backend, the same observable behaviour.

Each test runs once per backend this OS provides (`muxio.pollers.available()`,
through the shared `poller` fixture): on Linux epoll, poll and select, on
macOS kqueue, poll and select.
Results are read the way the loop reads them: the bits of each `(fd, bits)`
pair are tested against the class's `READABLE` / `WRITABLE` masks, and pairs
for the same descriptor (kqueue reports one per filter) are ORed together.
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Iterator

import pytest
from conftest import MakeSocketPair, SocketPair

from muxio.errors import UsageError
from muxio.pollers import (
    BACKENDS,
    READ,
    WRITE,
    FdTooLargeError,
    Poller,
    available,
    get_poller_class,
    new_poller,
)

pytestmark = pytest.mark.timeout(20)

FD_SETSIZE = 1024


# -- helpers ---------------------------------------------------------------


@pytest.fixture
def poller(poller: str) -> Iterator[Poller]:
    """The shared `poller` name (each one this OS provides), opened; closed after."""
    p = new_poller(poller)
    try:
        yield p
    finally:
        p.close()


@pytest.fixture(params=["socketpair", "tcp"])
def pair(request: pytest.FixtureRequest, make_socket_pair: MakeSocketPair) -> SocketPair:
    kind = "unix" if request.param == "socketpair" else "tcp"
    return make_socket_pair(kind, blocking=True)


def ready(p: Poller, timeout: float | None) -> dict[int, int]:
    """One `poll`, with the pairs for each descriptor ORed together."""
    out: dict[int, int] = {}
    for fd, bits in p.poll(timeout):
        out[fd] = out.get(fd, 0) | bits
    return out


def wait_for(p: Poller, fd: int, mask: int, timeout: float = 5.0) -> int:
    """Poll until `fd` reports a bit of `mask`; return its bits, or fail at `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            pytest.fail(f"fd {fd} never reported {mask:#x} within {timeout} s")
        bits = ready(p, left).get(fd, 0)
        if bits & mask:
            return bits


def fill_send_buffer(sock: socket.socket) -> int:
    """Write until the kernel refuses more; return how much was written."""
    sock.setblocking(False)
    chunk = b"x" * 65536
    total = 0
    for _ in range(10_000):  # bounded: kernel buffers are at most a few MB
        try:
            total += sock.send(chunk)
        except BlockingIOError:
            return total
    pytest.fail("the send buffer never filled up")


def reset_by_peer(peer: socket.socket) -> None:
    """Close `peer` with SO_LINGER {on, 0}, which sends RST instead of FIN."""
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    peer.close()


# -- choosing a backend ----------------------------------------------------


def test_available_lists_backends_best_first() -> None:
    names = available()
    assert names, "at least select must be available"
    assert "select" in names
    order = list(BACKENDS)
    assert names == sorted(names, key=order.index)


def test_auto_returns_best_available() -> None:
    assert get_poller_class("auto") is BACKENDS[available()[0]]
    assert get_poller_class() is get_poller_class("auto")
    if sys.platform.startswith("linux"):
        assert get_poller_class("auto").name == "epoll"


def test_every_available_name_resolves_to_its_class() -> None:
    for name in available():
        assert get_poller_class(name) is BACKENDS[name]
        assert get_poller_class(name).name == name


def test_unknown_name_raises_usage_error_listing_choices() -> None:
    with pytest.raises(UsageError) as info:
        get_poller_class("nosuchpoller")
    message = str(info.value)
    assert "nosuchpoller" in message
    for name in ("auto", *BACKENDS):
        assert name in message


def test_unavailable_name_raises_usage_error_listing_alternatives() -> None:
    missing = [name for name in BACKENDS if name not in available()]
    if not missing:
        pytest.skip("every backend is available on this OS; none to refuse")
    with pytest.raises(UsageError) as info:
        get_poller_class(missing[0])
    message = str(info.value)
    assert missing[0] in message
    assert "not available" in message
    for name in available():
        assert name in message
    assert "auto" in message


# -- readiness -------------------------------------------------------------


def test_masks_share_the_error_bits(poller: Poller) -> None:
    # Hang-up / error bits must reach whichever handler is registered.
    assert poller.READABLE & poller.WRITABLE


def test_reports_nothing_for_idle_socket(poller: Poller, pair) -> None:
    a, _b = pair
    poller.register(a.fileno(), READ)
    assert ready(poller, 0) == {}


def test_reports_readable_when_peer_sends(poller: Poller, pair) -> None:
    a, b = pair
    poller.register(a.fileno(), READ)
    b.sendall(b"ping")
    bits = wait_for(poller, a.fileno(), poller.READABLE)
    assert not bits & WRITE or bits & poller.WRITABLE  # no stray write-only bits
    assert a.recv(16) == b"ping"
    assert ready(poller, 0) == {}


def test_stays_readable_until_drained(poller: Poller, pair) -> None:
    # Level-triggered: a handler that reads only part is woken again.
    a, b = pair
    poller.register(a.fileno(), READ)
    b.sendall(b"abcdef")
    wait_for(poller, a.fileno(), poller.READABLE)
    received = a.recv(3)
    assert ready(poller, 0).get(a.fileno(), 0) & poller.READABLE
    received += a.recv(16)
    assert received == b"abcdef"
    assert ready(poller, 0) == {}


def test_reports_writable_when_send_buffer_has_room(poller: Poller, pair) -> None:
    a, _b = pair
    poller.register(a.fileno(), WRITE)
    bits = ready(poller, 0).get(a.fileno(), 0)
    assert bits & poller.WRITABLE


def test_not_writable_when_send_buffer_full_until_peer_drains(poller: Poller, pair) -> None:
    a, b = pair
    fill_send_buffer(a)
    poller.register(a.fileno(), WRITE)
    assert not ready(poller, 0).get(a.fileno(), 0) & poller.WRITABLE
    b.setblocking(False)
    for _ in range(100_000):  # bounded drain
        try:
            if not b.recv(1 << 20):
                break
        except BlockingIOError:
            break
    wait_for(poller, a.fileno(), poller.WRITABLE)


def test_reports_every_ready_fd_in_one_poll(
    poller: Poller, make_socket_pair: MakeSocketPair
) -> None:
    pairs = [make_socket_pair(blocking=True) for _ in range(5)]
    for a, _ in pairs:
        poller.register(a.fileno(), READ)
    for _, b in pairs[::2]:
        b.send(b"!")
    expected = {a.fileno() for a, _ in pairs[::2]}
    got = ready(poller, 1.0)
    assert {fd for fd, bits in got.items() if bits & poller.READABLE} == expected


def test_reports_read_and_write_together(poller: Poller, pair) -> None:
    a, b = pair
    poller.register(a.fileno(), READ | WRITE)
    b.sendall(b"x")
    bits = wait_for(poller, a.fileno(), poller.READABLE)
    assert bits & poller.WRITABLE


def test_listening_socket_readable_on_incoming_connection(poller: Poller) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        poller.register(listener.fileno(), READ)
        assert ready(poller, 0) == {}
        with socket.create_connection(listener.getsockname(), timeout=5):
            wait_for(poller, listener.fileno(), poller.READABLE)
            conn, _ = listener.accept()
            conn.close()


# -- interest changes ------------------------------------------------------


def test_modify_switches_write_to_read(poller: Poller, pair) -> None:
    a, b = pair
    fd = a.fileno()
    poller.register(fd, WRITE)
    assert ready(poller, 0).get(fd, 0) & poller.WRITABLE
    poller.modify(fd, READ)
    assert ready(poller, 0) == {}  # still writable, but no longer asked
    b.sendall(b"x")
    bits = wait_for(poller, fd, poller.READABLE)
    # Only the read interest remains: the write bit itself is not reported.
    write_only_bits = poller.WRITABLE & ~poller.READABLE
    assert not bits & write_only_bits


def test_modify_adds_write_to_read(poller: Poller, pair) -> None:
    a, _b = pair
    fd = a.fileno()
    poller.register(fd, READ)
    assert ready(poller, 0) == {}
    poller.modify(fd, READ | WRITE)
    assert ready(poller, 0).get(fd, 0) & poller.WRITABLE
    poller.modify(fd, READ)
    assert ready(poller, 0) == {}


def test_modify_unregistered_fd_raises_file_not_found(poller: Poller, pair) -> None:
    a, _b = pair
    with pytest.raises(FileNotFoundError):
        poller.modify(a.fileno(), READ)


def test_unregister_stops_reports(poller: Poller, pair) -> None:
    a, b = pair
    poller.register(a.fileno(), READ | WRITE)
    b.sendall(b"x")
    wait_for(poller, a.fileno(), poller.READABLE)
    poller.unregister(a.fileno())
    assert ready(poller, 0) == {}
    # ...and the descriptor can be registered again afterwards.
    poller.register(a.fileno(), READ)
    wait_for(poller, a.fileno(), poller.READABLE)


def test_unregister_unknown_fd_is_noop(poller: Poller, pair) -> None:
    a, _b = pair
    poller.unregister(a.fileno())  # open but never registered
    poller.register(a.fileno(), READ)
    poller.unregister(a.fileno())
    poller.unregister(a.fileno())  # twice
    unused = os.dup(a.fileno())
    os.close(unused)
    poller.unregister(unused)  # not even an open descriptor
    assert ready(poller, 0) == {}


def test_register_twice_raises_file_exists(poller: Poller, pair) -> None:
    a, _b = pair
    poller.register(a.fileno(), READ)
    with pytest.raises(FileExistsError):
        poller.register(a.fileno(), WRITE)
    # The first registration is untouched by the failed second one.
    assert ready(poller, 0) == {}


# -- timeouts --------------------------------------------------------------


def test_poll_zero_returns_at_once_with_nothing(poller: Poller, pair) -> None:
    a, _b = pair
    poller.register(a.fileno(), READ)
    start = time.monotonic()
    assert ready(poller, 0) == {}
    assert time.monotonic() - start < 1.0


def test_negative_timeout_returns_at_once(poller: Poller, pair) -> None:
    # The loop passes "next timer minus now", which may be negative.
    a, _b = pair
    poller.register(a.fileno(), READ)
    start = time.monotonic()
    assert ready(poller, -0.5) == {}
    assert time.monotonic() - start < 1.0


def test_poll_timeout_waits_then_returns_empty(poller: Poller, pair) -> None:
    a, _b = pair
    poller.register(a.fileno(), READ)
    start = time.monotonic()
    assert ready(poller, 0.05) == {}
    assert time.monotonic() - start >= 0.045


def test_poll_timeout_with_nothing_registered_still_waits(poller: Poller) -> None:
    # The loop's self-pipe is always registered, but a bare poller must sleep too.
    start = time.monotonic()
    assert ready(poller, 0.05) == {}
    assert time.monotonic() - start >= 0.045


def test_poll_none_blocks_until_ready(poller: Poller) -> None:
    r, w = os.pipe()
    writer = threading.Timer(0.1, os.write, (w, b"x"))
    try:
        poller.register(r, READ)
        start = time.monotonic()
        writer.start()
        got = ready(poller, None)
        assert got.get(r, 0) & poller.READABLE
        assert time.monotonic() - start >= 0.05
    finally:
        writer.cancel()
        writer.join(5)
        os.close(r)
        os.close(w)


# -- descriptors closed while registered -----------------------------------

# What a poll reports for a descriptor closed without being unregistered.
# epoll and kqueue drop the registration with the last reference to the file;
# select (EBADF, then probing with fstat) and poll (POLLNVAL) report it ready
# with an error bit that is in both READABLE and WRITABLE.  /dev/poll could
# not be checked here (no Solaris); either behaviour is accepted for it.
CLOSED_FD_BEHAVIOUR = {
    "epoll": "dropped",
    "kqueue": "dropped",
    "select": "error",
    "poll": "error",
    "devpoll": "either",
}


def test_poll_with_closed_registered_fd_neither_raises_nor_hangs(poller: Poller) -> None:
    a, b = socket.socketpair()
    fd = a.fileno()
    try:
        poller.register(fd, READ)
        a.close()
        start = time.monotonic()
        got = ready(poller, 0)
        got_again = ready(poller, 0.05)  # a timed wait must not hang either
        assert time.monotonic() - start < 2.0
        expected = CLOSED_FD_BEHAVIOUR[poller.name]
        if expected == "dropped" or (expected == "either" and fd not in got):
            assert got == {}
            assert got_again == {}
        else:
            assert set(got) == {fd}
            assert got[fd] & poller.READABLE
            assert got[fd] & poller.WRITABLE  # the error bit belongs to both
            assert set(got_again) == {fd}
        poller.unregister(fd)  # must not raise although fd is closed
        assert ready(poller, 0) == {}
    finally:
        a.close()
        b.close()


def test_closed_fd_next_to_live_fd_until_unregistered(poller: Poller) -> None:
    # select's EBADF path reports only the closed fd, hiding the live one until
    # the closed one is unregistered; every other backend keeps reporting it.
    a, a_peer = socket.socketpair()
    c, c_peer = socket.socketpair()
    fd, live = a.fileno(), c.fileno()
    try:
        poller.register(fd, READ)
        poller.register(live, READ)
        a.close()
        c_peer.send(b"x")
        if poller.name == "select":
            got = ready(poller, 0)
            assert set(got) == {fd}
            assert got[fd] & poller.READABLE
        else:
            wait_for(poller, live, poller.READABLE)
        poller.unregister(fd)
        wait_for(poller, live, poller.READABLE)
        assert fd not in ready(poller, 0)
    finally:
        poller.unregister(fd)
        for s in (a, a_peer, c, c_peer):
            s.close()


def test_fd_number_reused_via_dup2_is_watched_after_reregistration(poller: Poller) -> None:
    a, a_peer = socket.socketpair()
    b, b_peer = socket.socketpair()
    fd = a.fileno()
    dup_done = False
    try:
        poller.register(fd, READ)
        a.close()  # closed without unregistering
        poller.unregister(fd)  # must not raise
        os.dup2(b.fileno(), fd)  # the same number now names socket B
        dup_done = True
        poller.register(fd, READ)
        assert ready(poller, 0) == {}
        b_peer.send(b"hello")
        bits = wait_for(poller, fd, poller.READABLE)
        assert bits & poller.READABLE
        assert os.read(fd, 16) == b"hello"
        assert ready(poller, 0) == {}
    finally:
        if dup_done:
            poller.unregister(fd)
            os.close(fd)
        for s in (a, a_peer, b, b_peer):
            s.close()


def test_unregister_of_a_number_reused_by_a_regular_file_is_quiet(
    poller: Poller, tmp_path
) -> None:
    """Closed while registered, then the number names a file (epoll: EPERM, not ENOENT)."""
    a, a_peer = socket.socketpair()
    fd = a.detach()
    file_fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT)
    try:
        poller.register(fd, READ)
        os.dup2(file_fd, fd)  # closes the socket: the number now names the file
        poller.unregister(fd)
        assert ready(poller, 0) == {}
    finally:
        os.close(fd)
        os.close(file_fd)
        a_peer.close()


@pytest.mark.skipif("epoll" not in available(), reason="epoll is Linux's")
def test_epoll_unregister_lets_unexpected_errors_through() -> None:
    """Only a descriptor the kernel already forgot is forgiven, not a caller's bug."""
    p = new_poller("epoll")
    try:
        with pytest.raises(OSError) as info:
            p.unregister(p.fileno())  # an epoll cannot watch itself: EINVAL
        assert info.value.errno == errno.EINVAL
        with pytest.raises(ValueError):
            p.unregister(-1)  # a closed socket's fileno()
    finally:
        p.close()
    p.unregister(0)  # closed: quiet, as every other closed poller is


# -- hang-ups and resets ---------------------------------------------------


def test_peer_close_reported_readable_and_recv_returns_empty(poller: Poller, pair) -> None:
    a, b = pair
    poller.register(a.fileno(), READ)
    b.close()
    wait_for(poller, a.fileno(), poller.READABLE)
    assert a.recv(16) == b""
    # Level-triggered: end of file stays reported until unregistered.
    assert ready(poller, 0).get(a.fileno(), 0) & poller.READABLE


def test_peer_close_after_data_delivers_data_then_eof(poller: Poller, pair) -> None:
    a, b = pair
    poller.register(a.fileno(), READ)
    b.sendall(b"last words")
    b.close()
    wait_for(poller, a.fileno(), poller.READABLE)
    data = b""
    for _ in range(100):  # bounded
        chunk = a.recv(64)
        if not chunk:
            break
        data += chunk
    assert data == b"last words"


def test_peer_reset_reported_readable_and_recv_raises(
    poller: Poller, make_socket_pair: MakeSocketPair
) -> None:
    a, b = make_socket_pair("tcp", blocking=True)
    poller.register(a.fileno(), READ)
    reset_by_peer(b)
    wait_for(poller, a.fileno(), poller.READABLE)
    with pytest.raises(ConnectionResetError):
        a.recv(16)


def test_peer_reset_reported_writable_for_write_only_interest_and_send_raises(
    poller: Poller, make_socket_pair: MakeSocketPair
) -> None:
    a, b = make_socket_pair("tcp", blocking=True)
    fill_send_buffer(a)  # so that only the reset can make it "writable"
    poller.register(a.fileno(), WRITE)
    assert not ready(poller, 0).get(a.fileno(), 0) & poller.WRITABLE
    reset_by_peer(b)
    wait_for(poller, a.fileno(), poller.WRITABLE)
    with pytest.raises((ConnectionResetError, BrokenPipeError)):
        a.send(b"x")


# -- signals during the wait -----------------------------------------------


@pytest.mark.timeout(20, method="thread")  # pytest-timeout's signal method uses SIGALRM
def test_signal_during_wait_neither_raises_nor_loses_readiness(poller: Poller) -> None:
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("Python signal handlers run only in the main thread")
    caught: list[int] = []
    r, w = os.pipe()
    go = threading.Event()

    def writer() -> None:
        # Keep SIGALRM for the main thread, so it interrupts the wait itself.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
        go.wait(5)
        time.sleep(0.3)  # the delay is the point: signals arrive during the wait
        os.write(w, b"x")

    thread = threading.Thread(target=writer, daemon=True)
    old_handler = signal.signal(signal.SIGALRM, lambda signum, frame: caught.append(signum))
    old_timer = (0.0, 0.0)
    try:
        poller.register(r, READ)
        thread.start()
        go.set()
        old_timer = signal.setitimer(signal.ITIMER_REAL, 0.05, 0.05)
        start = time.monotonic()
        got = ready(poller, 1.0)
        elapsed = time.monotonic() - start
        signal.setitimer(signal.ITIMER_REAL, 0)
        assert got.get(r, 0) & poller.READABLE, f"poll returned {got} after {elapsed:.3f} s"
        assert caught, "the SIGALRM handler never ran"
        assert set(caught) == {signal.SIGALRM}
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_handler)
        if old_timer[0] > 0:
            signal.setitimer(signal.ITIMER_REAL, *old_timer)
        thread.join(5)
        os.close(r)
        os.close(w)


# -- many descriptors ------------------------------------------------------


@contextlib.contextmanager
def nofile_limit(at_least: int) -> Iterator[None]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < at_least:
        if hard != resource.RLIM_INFINITY and hard < at_least:
            pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {at_least}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (at_least, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@contextlib.contextmanager
def many_socketpairs(highest_fd: int) -> Iterator[list[tuple[socket.socket, socket.socket]]]:
    """Socketpairs until some descriptor is at least `highest_fd`; all closed on exit."""
    pairs: list[tuple[socket.socket, socket.socket]] = []
    try:
        for _ in range(highest_fd):  # bounded: each pair takes two numbers
            pair = socket.socketpair()
            pairs.append(pair)
            if pair[1].fileno() >= highest_fd:
                break
        yield pairs
    finally:
        for a, b in pairs:
            a.close()
            b.close()


def test_descriptors_above_fd_setsize(poller: Poller) -> None:
    with nofile_limit(FD_SETSIZE + 256), many_socketpairs(FD_SETSIZE + 64) as pairs:
        low = [(a, b) for a, b in pairs if b.fileno() < FD_SETSIZE]
        high = [(a, b) for a, b in pairs if a.fileno() >= FD_SETSIZE]
        assert low
        assert len(high) >= 16
        low_a, low_b = low[0]
        high_a, high_b = high[-1]
        if poller.max_fd is not None:
            assert poller.name == "select"
            assert poller.max_fd == FD_SETSIZE
            poller.register(low_a.fileno(), READ)
            for a, _ in high:
                with pytest.raises(FdTooLargeError, match=str(a.fileno())):
                    poller.register(a.fileno(), READ)
            assert issubclass(FdTooLargeError, ValueError)
            # The refusals left the poller working for the low descriptors.
            low_b.send(b"x")
            assert set(ready(poller, 1.0)) == {low_a.fileno()}
            assert low_a.recv(1) == b"x"
            assert ready(poller, 0) == {}
            return
        for a, _ in pairs:  # more than FD_SETSIZE descriptors at once
            poller.register(a.fileno(), READ)
        assert ready(poller, 0) == {}
        low_b.send(b"x")
        high_b.send(b"y")
        expected = {low_a.fileno(), high_a.fileno()}
        got: dict[int, int] = {}
        deadline = time.monotonic() + 5
        while set(got) != expected and time.monotonic() < deadline:
            for fd, bits in ready(poller, 1.0).items():
                got[fd] = got.get(fd, 0) | bits
        assert set(got) == expected
        assert all(bits & poller.READABLE for bits in got.values())
        for a, _ in pairs:
            poller.unregister(a.fileno())


# -- lifecycle -------------------------------------------------------------


def test_close_twice_is_harmless(poller: Poller, socket_pair: SocketPair) -> None:
    """The second close() neither raises nor closes a descriptor that took the number."""
    a, _b = socket_pair
    poller.register(a.fileno(), READ)
    fd = poller.fileno()
    assert poller.close() is None
    if fd == -1:  # stateless: no descriptor to release twice
        assert poller.close() is None
        return
    with pytest.raises(OSError):
        os.fstat(fd)
    os.dup2(a.fileno(), fd)  # the freed number now names a socket, as after a new open()
    try:
        assert poller.close() is None
        os.fstat(fd)  # still open: the poller released its descriptor once only
    finally:
        os.close(fd)


def test_a_closed_poller_refuses_to_be_used_and_forgets_quietly(
    poller: Poller, socket_pair: SocketPair
) -> None:
    """After close() every poller fails as a closed epoll object does; unregister stays quiet.

    select.poll has no close() of its own: before, a closed PollPoller went on
    reporting the descriptors it had been given.
    """
    a, b = socket_pair
    poller.register(a.fileno(), READ)
    b.send(b"x")
    poller.close()
    with pytest.raises(ValueError):
        poller.poll(0)
    with pytest.raises(ValueError):
        poller.register(b.fileno(), READ)
    assert poller.unregister(a.fileno()) is None


def test_context_manager_closes_kernel_object(poller: Poller) -> None:
    p = type(poller)()
    with p as entered:
        assert entered is p
        fd = p.fileno()
    if fd == -1:
        return  # stateless backend: nothing in the kernel to release
    with pytest.raises(OSError):
        os.fstat(fd)
