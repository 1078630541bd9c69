"""Tests the chosen loop is allowed not to pass, each with the reason why.

Keys are test ids as printed by ``asyncio_suite.py`` (module prefix without
``test.test_asyncio.``) or ``fnmatch`` patterns over them, e.g.
``"test_events.SelectEventLoopTestsOnLoop.test_read_pty_output"`` or
``"test_unix_events.*"``. Values say why the difference is accepted; an entry
without a reason is refused. Excluded tests are not run on the chosen loop (an
exclusion may be for a test that hangs), only on the ``--against`` loop.
"""

from __future__ import annotations

EXCLUSIONS: dict[str, str] = {
    "test_server.TestServer2.test_wait_closed_*": (
        "3.12: drives asyncio.Server's private connection count (_attach/_detach); muxio's "
        "Server counts its transports themselves (wait_closed semantics are the same, tested "
        "in tests/test_asyncio_api.py)"
    ),
    "test_subprocess.GenericWatcherTests.test_create_subprocess_fails_with_inactive_watcher": (
        "asyncio's child watchers (deprecated in 3.12, removed in 3.14): muxio's subprocess "
        "transport watches its own children (pidfd, else a waitpid thread), so an inactive "
        "watcher handed to the policy cannot make it fail"
    ),
    "test_events.*OnLoop.test_internal_fds": (
        "asserts BaseSelectorEventLoop._internal_fds/_csock/_ssock and skips itself on any "
        "other loop"
    ),
    "test_events.*OnLoop.test_create_server_multiple_hosts_ipv[46]": (
        "mocks asyncio.base_events.socket and replaces loop._start_serving/_stop_serving, so it "
        "only works for a create_server inherited from BaseEventLoop; otherwise it binds to "
        "1.2.3.4:80 for real"
    ),
    "test_unix_events.SelectorEventLoopUnixSockSendfileTests.*": (
        "calls _UnixSelectorEventLoop._sock_sendfile_native(_impl) directly with mocked "
        "_selector/sockets: asyncio's private sendfile machinery, not the loop API"
    ),
}
