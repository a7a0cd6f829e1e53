"""The ehost-device forwarder (C) against a scripted daemon on a temp socket, no root.

Each test runs the binary as a runtime does (env + stdin, nothing else in
the environment) against a stand-in that reads the request with `wire` and
answers whatever the test scripts: a good answer, garbage, half an answer,
nothing at all. Whatever happens, the binary must print either the daemon's
answer byte for byte or one CNI error object, and exit non-zero on errors.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deviceplugin.cni import wire
from deviceplugin.cni.forwarder_build import compile_forwarder
from deviceplugin.cni.types import version_result

Handler = Callable[[socket.socket], None]


def read_request(conn: socket.socket) -> tuple[dict[str, str], bytes]:
    stream = conn.makefile("rb")
    head = wire.parse_request_head(stream.readline(wire.MAX_HEADER + 1))
    return wire.split_request(head, stream.read(head.body_bytes))


class ScriptedDaemon:
    """A unix socket whose every connection `handler` serves; records the requests."""

    def __init__(self, path: Path, handler: Handler) -> None:
        self.path = path
        self.handler = handler
        self.connections = 0
        self.release = threading.Event()  # handlers that hang wait for this
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.bind(str(path))
        self.sock.listen(8)
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            # OSError: the forwarder hung up; what it printed is what the test checks.
            with conn, contextlib.suppress(OSError):
                self.handler(conn)

    def close(self) -> None:
        self.release.set()
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join(timeout=10)


@pytest.fixture
def sock_path(tmp_path: Path) -> Path:
    return tmp_path / "cni.sock"


@pytest.fixture
def daemon(sock_path: Path) -> Iterator[Callable[[Handler], ScriptedDaemon]]:
    started: list[ScriptedDaemon] = []

    def start(handler: Handler) -> ScriptedDaemon:
        d = ScriptedDaemon(sock_path, handler)
        started.append(d)
        return d

    yield start
    for d in started:
        d.close()


def run(
    forwarder: Path,
    sock: Path,
    command: str | None = "ADD",
    stdin: bytes = b'{"cniVersion": "1.0.0"}',
    **env: str,
) -> tuple[int, bytes]:
    """The binary with only CNI_* variables and NETDP_CNI_SOCKET: (exit code, stdout)."""
    full = {"NETDP_CNI_SOCKET": str(sock), "CNI_CONTAINERID": "c1", **env}
    if command is not None:
        full["CNI_COMMAND"] = command
    proc = subprocess.run([str(forwarder)], input=stdin, env=full, capture_output=True, timeout=60)
    assert proc.stderr == b""
    return proc.returncode, proc.stdout


def cni_error(code: int, out: bytes) -> dict[str, object]:
    """`out` is one whole CNI error object (nothing before or after it) with `code`."""
    doc = json.loads(out)
    assert set(doc) <= {"cniVersion", "code", "msg", "details"}, doc
    assert doc["cniVersion"] == "1.1.0" and doc["code"] == code, doc
    return doc


def answering(data: bytes) -> Handler:
    def handler(conn: socket.socket) -> None:
        read_request(conn)
        conn.sendall(data)

    return handler


# ------------------------------------------------------------------ forwarding


def test_forwards_the_call_and_prints_the_answer_byte_for_byte(
    forwarder: Path, sock_path: Path, daemon: Callable[[Handler], ScriptedDaemon]
) -> None:
    seen: list[tuple[dict[str, str], bytes]] = []
    body = b'{"odd": "\x00\n\xff bytes"}\n\n'

    def handler(conn: socket.socket) -> None:
        seen.append(read_request(conn))
        conn.sendall(wire.encode_response(7, body))

    daemon(handler)
    stdin = b'{"cniVersion": "1.0.0",\n "x": "\x00\xfe"}'
    code, out = run(forwarder, sock_path, "DEL", stdin, CNI_ARGS="A=1;B=\u00e9", NOT_CNI="x")
    assert (code, out) == (7, body)
    assert seen == [({"CNI_COMMAND": "DEL", "CNI_CONTAINERID": "c1", "CNI_ARGS": "A=1;B=\u00e9"},
                     stdin)]  # fmt: skip


@pytest.mark.parametrize("exit_code", [0, 1, 255])
def test_exit_code_is_the_daemons(
    forwarder: Path, sock_path: Path, daemon: Callable[[Handler], ScriptedDaemon], exit_code: int
) -> None:
    daemon(answering(wire.encode_response(exit_code, b"")))
    assert run(forwarder, sock_path) == (exit_code, b"")


def test_version_is_answered_without_a_daemon(forwarder: Path, sock_path: Path) -> None:
    code, out = run(forwarder, sock_path, "VERSION", b'{"cniVersion": "0.3.1"}')
    assert code == 0
    assert out == json.dumps(version_result()).encode()  # what the daemon would say


# ------------------------------------------------------------------ no daemon


def test_no_daemon_is_try_again_later_naming_the_socket(forwarder: Path, sock_path: Path) -> None:
    code, out = run(forwarder, sock_path)
    doc = cni_error(11, out)
    assert code == 1
    assert doc["msg"] == (
        f"netdp daemon not reachable at {sock_path}; is the netdp pod running on this node?"
    )
    assert doc["details"] == "No such file or directory"


def test_stale_socket_file_is_try_again_later(forwarder: Path, sock_path: Path) -> None:
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(sock_path))  # bound, never listening: what a dead daemon leaves
    s.close()
    code, out = run(forwarder, sock_path, "DEL")
    assert code == 1
    assert cni_error(11, out)["details"] == "Connection refused"


def test_default_socket_path(forwarder: Path) -> None:
    proc = subprocess.run(
        [str(forwarder)], input=b"{}", env={"CNI_COMMAND": "ADD"}, capture_output=True
    )
    if Path(wire.DEFAULT_SOCKET).exists():
        pytest.fail(f"{wire.DEFAULT_SOCKET} exists here: this test needs it absent")
    assert wire.DEFAULT_SOCKET in cni_error(11, proc.stdout)["msg"]


# ------------------------------------------------------------------ bad calls


@pytest.mark.parametrize(
    ("command", "msg"),
    [(None, "CNI_COMMAND is not set"), ("", "CNI_COMMAND is not set"),
     ("add", "unknown CNI_COMMAND add"), ("ADD;rm -rf /", "unknown CNI_COMMAND ADD;rm -rf /")],
)  # fmt: skip
def test_bad_command_never_reaches_the_daemon(
    forwarder: Path,
    sock_path: Path,
    daemon: Callable[[Handler], ScriptedDaemon],
    command: str | None,
    msg: str,
) -> None:
    d = daemon(answering(wire.encode_response(0, b"")))
    code, out = run(forwarder, sock_path, command)
    assert code == 1
    assert cni_error(4, out)["msg"] == msg
    assert d.connections == 0


def test_config_over_16_mib_is_refused_before_connecting(
    forwarder: Path, sock_path: Path, daemon: Callable[[Handler], ScriptedDaemon]
) -> None:
    d = daemon(answering(wire.encode_response(0, b"")))
    code, out = run(forwarder, sock_path, stdin=b" " * (wire.MAX_STDIN + 1))
    assert code == 1
    assert cni_error(7, out)["msg"] == "the network config on stdin is over 16 MiB"
    assert d.connections == 0
    # Exactly 16 MiB still goes through.
    code, out = run(forwarder, sock_path, stdin=b" " * wire.MAX_STDIN)
    assert (code, out, d.connections) == (0, b"", 1)


def test_unreadable_config_is_an_io_error(forwarder: Path, sock_path: Path, tmp_path: Path) -> None:
    fd = os.open(tmp_path, os.O_RDONLY)  # read() on a directory: EISDIR
    try:
        proc = subprocess.run(
            [str(forwarder)],
            stdin=fd,
            env={"CNI_COMMAND": "ADD", "NETDP_CNI_SOCKET": str(sock_path)},
            capture_output=True,
            timeout=60,
        )
    finally:
        os.close(fd)
    assert proc.returncode == 1
    doc = cni_error(5, proc.stdout)
    assert (doc["msg"], doc["details"]) == (
        "could not read the network config on stdin",
        "Is a directory",
    )


def test_timeout_setting_is_checked(forwarder: Path, sock_path: Path) -> None:
    code, out = run(forwarder, sock_path, NETDP_CNI_TIMEOUT_MS="5s")
    assert code == 1 and "NETDP_CNI_TIMEOUT_MS" in cni_error(4, out)["msg"]


# ------------------------------------------------------------------ a daemon that misbehaves


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        (b"HTTP/1.1 400 Bad Request\r\n\r\n", "not answer in netdp-cni/2"),
        (b"0\n{}", "not answer in netdp-cni/2"),  # netdp-cni/1
        (b"netdp-cni/2 0 00\n", "not answer in netdp-cni/2"),
        (b"netdp-cni/2 256 0\n", "not answer in netdp-cni/2"),
        (b"netdp-cni/2 0 16777217\n", "not answer in netdp-cni/2"),
        (b"netdp-cni/2 0 " + b"1" * 80, "not answer in netdp-cni/2"),
        (b"", "broke off the call"),
        (b"netdp-cni/2 0 2", "broke off the call"),
        (b'netdp-cni/2 0 100\n{"cniVersion": "1.0.0", "interfaces"', "broke off the call"),
    ],
)
def test_a_bad_answer_is_try_again_later_never_half_printed(
    forwarder: Path,
    sock_path: Path,
    daemon: Callable[[Handler], ScriptedDaemon],
    answer: bytes,
    problem: str,
) -> None:
    daemon(answering(answer))
    code, out = run(forwarder, sock_path)
    assert code == 1
    assert problem in cni_error(11, out)["msg"]
    assert b"interfaces" not in out


def test_daemon_that_never_answers_times_out(
    forwarder: Path, sock_path: Path, daemon: Callable[[Handler], ScriptedDaemon]
) -> None:
    def silent(conn: socket.socket) -> None:
        read_request(conn)
        d.release.wait(60)

    d = daemon(silent)
    started = time.monotonic()
    code, out = run(forwarder, sock_path, NETDP_CNI_TIMEOUT_MS="300")
    took = time.monotonic() - started
    assert code == 1
    assert cni_error(11, out)["msg"] == (
        f"netdp daemon at {sock_path} did not answer within 300 ms"
    )
    assert 0.3 <= took < 20


def test_daemon_that_hangs_up_without_reading_does_not_kill_it(
    forwarder: Path, sock_path: Path, daemon: Callable[[Handler], ScriptedDaemon]
) -> None:
    """Writing into a closed socket raises SIGPIPE, which must not end the process."""
    daemon(lambda conn: None)  # accept, close at once
    code, out = run(forwarder, sock_path, stdin=b" " * (8 << 20))
    assert code == 1  # not -SIGPIPE
    assert "broke off the call" in cni_error(11, out)["msg"]


def test_an_early_answer_is_still_read(
    forwarder: Path, sock_path: Path, daemon: Callable[[Handler], ScriptedDaemon]
) -> None:
    """A daemon may refuse a request before reading all of it; its answer counts."""

    def early(conn: socket.socket) -> None:
        conn.recv(64)
        conn.sendall(wire.encode_response(1, b'{"code": 6}'))
        conn.shutdown(socket.SHUT_WR)
        time.sleep(0.2)  # close only after the forwarder has read the answer

    daemon(early)
    assert run(forwarder, sock_path, stdin=b" " * (4 << 20)) == (1, b'{"code": 6}')


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        st.binary(max_size=40),
        st.builds(
            lambda c, n, body: b"netdp-cni/2 %d %d\n%s" % (c, n, body),
            st.integers(0, 300),
            st.integers(0, 40),
            st.binary(max_size=40),
        ),
    )
)
def test_any_answer_is_decoded_as_wire_decodes_it(forwarder: Path, answer: bytes) -> None:
    """The forwarder and `wire.decode_response` agree on every answer, whole or not."""
    with ScriptedDaemonAt(answer) as sock:
        code, out = run(forwarder, sock)
    try:
        expected = wire.decode_response(answer)
    except wire.WireError:
        assert code == 1
        cni_error(11, out)
    else:
        assert (code, out) == expected


class ScriptedDaemonAt:
    """A `ScriptedDaemon` answering `answer` in a directory of its own (for hypothesis,
    whose examples cannot share a function-scoped fixture)."""

    def __init__(self, answer: bytes) -> None:
        import tempfile

        self._dir = tempfile.TemporaryDirectory(prefix="ndpf-")
        self.daemon = ScriptedDaemon(Path(self._dir.name) / "s", answering(answer))

    def __enter__(self) -> Path:
        return self.daemon.path

    def __exit__(self, *exc: object) -> None:
        self.daemon.close()
        self._dir.cleanup()


# ------------------------------------------------------------------ the build


def test_source_compiles_without_warnings(tmp_path: Path) -> None:
    compile_forwarder(tmp_path / "ehost-device", ("-Werror", "-Wpedantic", "-Wshadow"))
