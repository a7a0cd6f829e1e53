"""The `ehost-device` executable: forward a CNI call to the netdp daemon.

The runtime starts one process per CNI call, so this file is what every call
pays for at start-up. It imports nothing beyond `os`, `sys` and `_socket`
(plain `socket` pulls `enum` and `selectors`, `json` pulls `re`: together
twice the interpreter's own start-up), sends env + stdin over a unix socket
and prints the daemon's answer byte for byte. `install.py` copies this file
to the CNI bin directory with a real interpreter in the shebang, run with
`-SE` (no site scan: the fast path needs no site-packages).

Without a daemon (socket absent or refusing), the same executor runs in this
process: slower, still correct, and said on stderr. If the daemon dies after
taking an ADD, this process cleans up with an in-process DEL and reports
"try again later" (code 11), so the device is back where it started.

Wire format (both directions are one message, ended by closing the write side):
request  `netdp-cni/1\\0` + `KEY=VALUE\\0` per CNI_* variable + `\\0` + stdin bytes;
response `<exit code>\\n` + stdout bytes.
"""

import os
import sys

# Replaced by `install_shim` with where the deviceplugin package lives, so the
# in-process fallback finds it from /opt/cni/bin.
PACKAGE_PATH: str | None = None
DEFAULT_SOCKET = "/run/netdp/cni.sock"
SOCKET_ENV = "NETDP_CNI_SOCKET"
MAGIC = b"netdp-cni/1\0"
MAX_MESSAGE = 16 << 20
CALL_TIMEOUT_S = 300.0
ERR_TRY_AGAIN = 11


def encode_request(env: dict, stdin: bytes) -> bytes:
    """The CNI_* variables and stdin; env values cannot hold NUL, so NUL separates."""
    pairs = b"".join(
        k.encode(errors="surrogateescape") + b"=" + v.encode(errors="surrogateescape") + b"\0"
        for k, v in env.items()
        if k.startswith("CNI_")
    )
    return MAGIC + pairs + b"\0" + stdin


def decode_request(data: bytes) -> tuple[dict, bytes]:
    """Inverse of `encode_request`; ValueError on anything else."""
    if not data.startswith(MAGIC):
        raise ValueError("not a netdp CNI request")
    end = data.find(b"\0\0", len(MAGIC) - 1)
    if end < 0:
        raise ValueError("unterminated environment")
    env = {}
    block = data[len(MAGIC) : end + 1]
    for item in block.split(b"\0"):
        if not item:
            continue
        key, sep, value = item.partition(b"=")
        if not sep:
            raise ValueError("environment entry without '='")
        env[key.decode(errors="replace")] = value.decode(errors="replace")
    return env, data[end + 2 :]


def encode_response(exit_code: int, stdout: bytes) -> bytes:
    return str(exit_code).encode() + b"\n" + stdout


def decode_response(data: bytes) -> tuple[int, bytes]:
    head, sep, body = data.partition(b"\n")
    if not sep or not head.isdigit():
        raise ValueError("incomplete answer")
    return int(head), body


def _error_json(code: int, msg: str, details: str) -> bytes:
    import json

    return json.dumps(
        {"cniVersion": "1.1.0", "code": code, "msg": msg, "details": details}
    ).encode()


def _say(text: str) -> None:
    sys.stderr.write(f"ehost-device: {text}\n")


class DaemonAbsent(Exception):
    """Nobody listens on the socket: nothing was sent."""


class DaemonBroke(Exception):
    """The daemon took the request but gave no complete answer."""


def call_daemon(path: str, request: bytes, timeout: float = CALL_TIMEOUT_S) -> tuple[int, bytes]:
    import _socket

    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except OSError as exc:
            raise DaemonAbsent(str(exc)) from None
        try:
            sock.sendall(request)
            sock.shutdown(_socket.SHUT_WR)
            chunks = []
            size = 0
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
                if size > MAX_MESSAGE:
                    raise DaemonBroke("answer too large")
            return decode_response(b"".join(chunks))
        except (OSError, ValueError) as exc:
            raise DaemonBroke(str(exc)) from None
    finally:
        sock.close()


def run_in_process(env: dict, stdin: bytes) -> tuple[int, bytes]:
    """The executor in this process; needs the deviceplugin package and pyroute2 here."""
    if sys.flags.no_site:
        import site

        site.main()
    if PACKAGE_PATH and PACKAGE_PATH not in sys.path:
        sys.path.insert(0, PACKAGE_PATH)
    try:
        from deviceplugin.cni.executor import run_local
    except ImportError as exc:
        return 1, _error_json(
            ERR_TRY_AGAIN,
            "netdp daemon not reachable and netdp is not installed on this node",
            str(exc),
        )
    return run_local(env, stdin)


def handle(env: dict, stdin: bytes) -> tuple[int, bytes]:
    """Daemon first; in-process when it is absent; clean-up when it dies mid-call."""
    path = env.get(SOCKET_ENV) or DEFAULT_SOCKET
    try:
        return call_daemon(path, encode_request(env, stdin))
    except DaemonAbsent as exc:
        _say(f"netdp daemon not reachable at {path} ({exc}); running in-process")
        return run_in_process(env, stdin)
    except DaemonBroke as exc:
        command = env.get("CNI_COMMAND", "")
        _say(f"netdp daemon broke off the {command} call ({exc}); finishing in-process")
        if command != "ADD":
            return run_in_process(env, stdin)
        code, out = run_in_process({**env, "CNI_COMMAND": "DEL"}, stdin)
        if code != 0:
            _say(f"clean-up DEL failed: {out.decode(errors='replace')}")
        return 1, _error_json(
            ERR_TRY_AGAIN,
            "netdp daemon died during ADD; the device was returned, try again",
            str(exc),
        )


def main() -> int:
    stdin = sys.stdin.buffer.read()
    code, out = handle(dict(os.environ), stdin)
    sys.stdout.buffer.write(out)
    sys.stdout.buffer.flush()
    return code


if __name__ == "__main__":
    exit_code = main()
    sys.stderr.flush()
    os._exit(exit_code)  # skips interpreter teardown: nothing left to clean up, ~0.5 ms saved
