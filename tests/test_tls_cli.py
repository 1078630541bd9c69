"""TLS on the command line: `muxio serve --tls-*`, `muxio connect --tls`, and real peers.

The certificates come from a throwaway CA made by `trustme`; the real
peers are the OS's `openssl s_client` and `openssl s_server`.
"""

from __future__ import annotations

import contextlib
import os
import pty
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from helpers import ServeProcess, free_port, one_line, sees_close, serve_process

pytestmark = pytest.mark.timeout(90)

MUXIO = [sys.executable, "-m", "muxio"]
OPENSSL = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="no `openssl` binary on PATH")
# CPython 3.10's sslproto (asyncio's own loop too) closes the TCP connection without answering
# the client's close_notify, which `muxio connect` rightly reports as a possibly cut reply; the
# rewritten sslproto of 3.11+ answers it.  Strict: a 3.10 that answers would be news.
answers_close_notify = pytest.mark.xfail(
    sys.version_info < (3, 11),
    reason="Python 3.10's sslproto closes without answering the client's close_notify",
    strict=True,
)


class Files:
    def __init__(self, root: Path) -> None:
        ca = trustme.CA()
        other_ca = trustme.CA()
        leaf = ca.issue_cert("localhost", "127.0.0.1")
        self.ca = str(root / "ca.pem")
        self.other_ca = str(root / "other-ca.pem")
        self.cert = str(root / "cert.pem")
        self.key = str(root / "key.pem")
        self.other_key = str(root / "other.key")
        self.junk = str(root / "junk.pem")
        self.client = str(root / "client.pem")
        ca.cert_pem.write_to_path(self.ca)
        other_ca.cert_pem.write_to_path(self.other_ca)
        leaf.cert_chain_pems[0].write_to_path(self.cert)
        leaf.private_key_pem.write_to_path(self.key)
        ca.issue_cert("other").private_key_pem.write_to_path(self.other_key)
        ca.issue_cert("client@example.test").private_key_and_cert_chain_pem.write_to_path(
            self.client
        )
        Path(self.junk).write_text("not a certificate\n")
        self.encrypted_key = str(root / "encrypted.key")
        self.password = str(root / "password.txt")
        self.wrong_password = str(root / "wrong.txt")
        Path(self.password).write_text("s3cret\n")
        Path(self.wrong_password).write_text("nope\n")
        subprocess.run(
            [
                OPENSSL or "openssl",
                "pkey",
                "-in",
                self.key,
                "-out",
                self.encrypted_key,
                "-aes256",
                "-passout",
                "pass:s3cret",
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Files:
    if OPENSSL is None:
        pytest.skip("no `openssl` binary on PATH (needed to encrypt a key)")
    return Files(tmp_path_factory.mktemp("tls"))


def run_muxio(
    *args: str, stdin: bytes = b"", timeout: float = 30
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*MUXIO, *args], input=stdin, capture_output=True, timeout=timeout, check=False
    )


# -- serve: bad files are one line, no traceback ----------------------------------------


SERVE_ERRORS = [
    (["--tls-cert", "{cert}"], 2, "--tls-cert and --tls-key go together"),
    (["--tls-client-ca", "{ca}"], 2, "--tls-client-ca needs --tls-cert and --tls-key"),
    (["--tls-cert", "{root}/nope.pem", "--tls-key", "{key}"], 2, "nope.pem: no such file"),
    (["--tls-cert", "{cert}", "--tls-key", "{root}/nope.key"], 2, "nope.key: no such file"),
    (["--tls-cert", "{junk}", "--tls-key", "{key}"], 2, "no PEM certificate"),
    (["--tls-cert", "{key}", "--tls-key", "{key}"], 2, "no PEM certificate"),
    (["--tls-cert", "{cert}", "--tls-key", "{junk}"], 2, "not a PEM private key"),
    (["--tls-cert", "{cert}", "--tls-key", "{other_key}"], 2, "is not the key of the cert"),
    (["--tls-cert", "{cert}", "--tls-key", "{encrypted_key}"], 2, "is encrypted: give its"),
    (
        ["--tls-cert", "{cert}", "--tls-key", "{encrypted_key}",
         "--tls-key-password-file", "{wrong_password}"],
        2,
        "wrong password",
    ),
    (["--tls-cert", "{cert}", "--tls-key", "{key}", "--tls-client-ca", "{junk}"], 2,
     "--tls-client-ca"),
    (["--tls-cert", "{root}", "--tls-key", "{key}"], 1, "cannot read it"),
]


@pytest.mark.parametrize(("args", "code", "message"), SERVE_ERRORS)
def test_serve_tls_setup_errors_are_one_line(
    files: Files, args: list[str], code: int, message: str
) -> None:
    fields = dict(vars(files), root=str(Path(files.cert).parent))
    result = run_muxio("serve", "--port", "0", *(a.format(**fields) for a in args))
    assert result.returncode == code, result.stderr
    assert message in one_line(result.stderr)


CONNECT_ERRORS = [
    (["--ca", "{ca}"], 2, "--ca applies to --tls connections only"),
    (["--tls", "--ca", "{ca}", "--insecure"], 2, "contradict"),
    (["--tls", "--ca", "{junk}"], 2, "no PEM certificate"),
    (["--tls", "--ca", "{root}/nope.pem"], 2, "no such file"),
    (["--tls", "--unix", "{root}/s.sock"], 2, "needs --server-name"),
]


@pytest.mark.parametrize(("args", "code", "message"), CONNECT_ERRORS)
def test_connect_tls_usage_errors_are_one_line(
    files: Files, args: list[str], code: int, message: str
) -> None:
    fields = dict(vars(files), root=str(Path(files.cert).parent))
    result = run_muxio("connect", *(a.format(**fields) for a in args))
    assert result.returncode == code, result.stderr
    assert message in one_line(result.stderr)


# -- serve and connect over TLS ----------------------------------------------------------


@contextlib.contextmanager
def tls_serve(files: Files, *extra: str) -> Iterator[ServeProcess]:
    with serve_process(
        "--port", "0", "--tls-cert", files.cert, "--tls-key", files.key, *extra
    ) as sp:
        yield sp


@answers_close_notify
def test_encrypted_key_with_its_password_serves(files: Files) -> None:
    with tls_serve(files, "--tls-key-password-file", files.password) as sp:
        result = run_muxio(
            "connect", "--port", str(sp.port), "--tls", "--ca", files.ca,
            "--server-name", "localhost", stdin=b"unlocked",
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout == b"UNLOCKED"
        sp.signal(signal.SIGTERM)
        assert sp.wait() == 0


@answers_close_notify
def test_connect_pipe_round_trip_and_summary_counts_failed_handshakes(files: Files) -> None:
    data = os.urandom(2 * 1024 * 1024)
    with tls_serve(files) as sp:
        assert "TLS on" in sp.lines[-1]
        result = run_muxio(
            "connect", "--port", str(sp.port), "--tls", "--ca", files.ca,
            "--server-name", "localhost", stdin=data,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout == data.upper()
        garbage = sp.connect()
        try:
            garbage.sendall(b"GET / HTTP/1.0\r\n\r\n")
            assert sees_close(garbage, 10)
        finally:
            garbage.close()
        sp.wait_line("TLS handshake with 127.0.0.1:\\d+ failed")
        sp.signal(signal.SIGTERM)
        assert sp.wait() == 0
        summary = sp.summary()
    assert summary["tls_handshakes_failed"] == "1"
    assert summary["drain"] == "complete"


@answers_close_notify
def test_connect_refuses_an_untrusted_server(files: Files) -> None:
    with tls_serve(files) as sp:
        result = run_muxio("connect", "--port", str(sp.port), "--tls", "--ca", files.other_ca)
        assert result.returncode == 1
        assert "certificate is not trusted" in one_line(result.stderr)
        insecure = run_muxio(
            "connect", "--port", str(sp.port), "--tls", "--insecure", stdin=b"ok"
        )
        assert insecure.returncode == 0, insecure.stderr
        assert insecure.stdout == b"OK"
        sp.signal(signal.SIGTERM)
        assert sp.wait() == 0


def test_connect_tls_to_a_plain_server_is_one_line() -> None:
    with serve_process("--port", "0") as sp:
        result = run_muxio(
            "connect", "--port", str(sp.port), "--tls", "--insecure", "--timeout", "5",
            stdin=b"x",
        )
        assert result.returncode == 1
        assert "TLS handshake with" in one_line(result.stderr)
        sp.signal(signal.SIGTERM)
        assert sp.wait() == 0


def test_client_certificate_required_refuses_a_client_without_one(files: Files) -> None:
    with tls_serve(files, "--tls-client-ca", files.ca) as sp:
        assert "client certificates required" in sp.lines[-1]
        result = run_muxio(
            "connect", "--port", str(sp.port), "--tls", "--ca", files.ca,
            "--server-name", "localhost", stdin=b"hello",
        )
        assert result.returncode == 1
        assert result.stdout == b""
        one_line(result.stderr)
        sp.wait_line("TLS handshake with .* failed")
        sp.signal(signal.SIGTERM)
        assert sp.wait() == 0
        assert sp.summary()["tls_handshakes_failed"] == "1"


def test_connect_tls_on_a_terminal(files: Files) -> None:
    with tls_serve(files) as sp:
        master, slave = pty.openpty()
        try:
            proc = subprocess.Popen(
                [*MUXIO, "connect", "--port", str(sp.port), "--tls", "--ca", files.ca,
                 "--server-name", "localhost"],
                stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
            )
        finally:
            os.close(slave)
        out = bytearray()
        try:
            def read_until(token: bytes, count: int = 1) -> None:
                deadline = time.monotonic() + 10
                while out.count(token) < count:
                    remaining = deadline - time.monotonic()
                    assert remaining > 0, bytes(out)
                    if select.select([master], [], [], remaining)[0]:
                        try:
                            out.extend(os.read(master, 4096))
                        except OSError:
                            raise AssertionError(bytes(out)) from None

            read_until(b">>>:")
            os.write(master, b"hello tls\n")
            read_until(b"HELLO TLS")
            read_until(b">>>:", 2)
            os.write(master, b"\x04")
            assert proc.wait(10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
            os.close(master)
        assert b"Traceback" not in out
        sp.signal(signal.SIGTERM)
        assert sp.wait() == 0


# -- real peers: openssl ---------------------------------------------------------------


@needs_openssl
def test_openssl_s_client_talks_to_muxio_serve(files: Files, poller: str) -> None:
    assert OPENSSL is not None
    with tls_serve(files, "--poller", poller) as sp:
        proc = subprocess.Popen(
            [OPENSSL, "s_client", "-connect", f"127.0.0.1:{sp.port}", "-CAfile", files.ca,
             "-servername", "localhost", "-verify_return_error", "-brief"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        try:
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write(b"hello from openssl\n")
            proc.stdin.flush()
            got = b""
            deadline = time.monotonic() + 15
            while b"HELLO FROM OPENSSL\n" not in got:
                remaining = deadline - time.monotonic()
                assert remaining > 0, got
                if select.select([proc.stdout], [], [], remaining)[0]:
                    chunk = os.read(proc.stdout.fileno(), 4096)
                    assert chunk, (got, proc.stderr.read() if proc.stderr else b"")
                    got += chunk
            proc.stdin.close()
            assert proc.wait(15) == 0
            assert proc.stderr is not None
            report = proc.stderr.read().decode()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        assert "Verification: OK" in report, report
        assert re.search(r"Protocol version: TLSv1\.[23]", report), report
        sp.signal(signal.SIGTERM)
        assert sp.wait() == 0
        assert sp.summary()["tls_handshakes_failed"] == "0"


@needs_openssl
def test_muxio_connect_tls_talks_to_openssl_s_server(files: Files) -> None:
    assert OPENSSL is not None
    port = free_port()
    server = subprocess.Popen(
        [OPENSSL, "s_server", "-accept", f"127.0.0.1:{port}", "-cert", files.cert,
         "-key", files.key, "-rev", "-naccept", "1"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        assert server.stdout is not None
        seen = b""
        deadline = time.monotonic() + 15
        while b"ACCEPT" not in seen:
            remaining = deadline - time.monotonic()
            assert remaining > 0, seen
            if select.select([server.stdout], [], [], remaining)[0]:
                chunk = os.read(server.stdout.fileno(), 4096)
                assert chunk, seen
                seen += chunk
        result = run_muxio(
            "connect", "--port", str(port), "--tls", "--ca", files.ca,
            "--server-name", "localhost", "--timeout", "10",
            stdin=b"hello\nmuxio\n",
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout == b"olleh\noixum\n"
        assert server.wait(15) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(10)


# -- bench over TLS --------------------------------------------------------------------


@pytest.mark.parametrize("size", [1024, 65536])
def test_bench_over_tls_has_no_errors(files: Files, size: int) -> None:
    import json

    with tls_serve(files) as sp:
        result = run_muxio(
            "bench", "--port", str(sp.port), "--tls", "--ca", files.ca,
            "--server-name", "localhost", "--connections", "6", "--idle", "2",
            "--size", str(size), "--duration", "0.7", "--warmup", "0.2", "--json",
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        assert report["errors"]["total"] == 0, report
        assert report["requests"] > 0
        sp.signal(signal.SIGTERM)
        assert sp.wait() == 0
        assert sp.summary()["tls_handshakes_failed"] == "0"


def test_bench_tls_against_an_untrusted_server_is_one_line(files: Files) -> None:
    with tls_serve(files) as sp:
        result = run_muxio(
            "bench", "--port", str(sp.port), "--tls", "--duration", "0.5", timeout=60
        )
        assert result.returncode == 1
        assert "certificate is not trusted" in one_line(result.stderr)
        sp.signal(signal.SIGTERM)
        assert sp.wait() == 0


# -- compare over TLS --------------------------------------------------------------------


@needs_openssl
def test_compare_over_tls_runs_the_servers_that_have_tls(tmp_path: Path) -> None:
    result = run_muxio(
        "compare", "--tls", "--servers", "muxio-epoll,asyncio-protocol",
        "--workloads", "2x1024", "--duration", "0.3", "--warmup", "0.1", "--repeat", "1",
        "--out", str(tmp_path), timeout=120,
    )
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.decode().splitlines() if line.startswith("| 2x1024")]
    assert len(rows) == 2, result.stdout
    assert all(row.rstrip().endswith("| ok |") for row in rows), rows
    assert '"tls": true' in (tmp_path / "compare.json").read_text()


def test_compare_tls_refuses_a_server_without_tls() -> None:
    result = run_muxio("compare", "--tls", "--servers", "threads", timeout=60)
    assert result.returncode == 2
    assert "has no TLS" in one_line(result.stderr)
