"""netdp-cni/2 on plain bytes: round trips, bounds, and a decoder that only raises WireError."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deviceplugin.cni import wire


def test_request_round_trip_keeps_only_cni_variables() -> None:
    env = {"CNI_COMMAND": "ADD", "CNI_ARGS": "A=1;B=2", "HOME": "/root", "CNI_X": "a=b=c"}
    stdin = b'{"x":\n1}\0\xff'
    data = wire.encode_request(env, stdin)
    block = b"CNI_COMMAND=ADD\0CNI_ARGS=A=1;B=2\0CNI_X=a=b=c\0"
    assert data == b"netdp-cni/2 %d %d\n%s%s" % (len(block), len(stdin), block, stdin)
    assert wire.decode_request(data) == (
        {"CNI_COMMAND": "ADD", "CNI_ARGS": "A=1;B=2", "CNI_X": "a=b=c"},
        stdin,
    )


def test_undecodable_environment_bytes_never_raise() -> None:
    """os.environ holds undecodable bytes as surrogates; the daemon sees U+FFFD."""
    raw = wire.encode_request({"CNI_ARGS": "K=\udcff"}, b"")
    assert wire.decode_request(raw)[0] == {"CNI_ARGS": "K=\ufffd"}


def test_response_round_trip() -> None:
    assert wire.encode_response(7, b"out\n") == b"netdp-cni/2 7 4\nout\n"
    assert wire.decode_response(b"netdp-cni/2 7 4\nout\n") == (7, b"out\n")
    assert wire.decode_response(b"netdp-cni/2 0 0\n") == (0, b"")
    with pytest.raises(ValueError):
        wire.encode_response(256, b"")


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"0\n{}",  # netdp-cni/1
        b"netdp-cni/2 0 5\nhalf",  # cut off
        b"netdp-cni/2 0 1\nab",  # longer than announced
        b"netdp-cni/2 0 01\na",  # leading zero
        b"netdp-cni/2 256 0\n",
        b"netdp-cni/2 0 16777217\n" + b"x" * 16777217,
        b"netdp-cni/2 0 0",  # no newline
    ],
)
def test_bad_responses(data: bytes) -> None:
    with pytest.raises(wire.WireError):
        wire.decode_response(data)


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\n",
        b"netdp-cni/1\0CNI_COMMAND=ADD\0\0{}",
        b"netdp-cni/2 5 0\nCNI_X",  # body shorter than announced
        b"netdp-cni/2 6 0\nCNI_X=",  # no terminating NUL
        b"netdp-cni/2 7 0\nHOME=x\0",  # not a CNI_* variable
        b"netdp-cni/2 6 0\nCNI_X\0",  # no '='
        b"netdp-cni/2 1048577 0\n",  # over the bounds
        b"netdp-cni/2 0 16777217\n",
    ],
)
def test_bad_requests(data: bytes) -> None:
    with pytest.raises(wire.WireError):
        wire.decode_request(data)


@settings(max_examples=300, deadline=None)
@given(
    data=st.one_of(
        st.binary(max_size=80),
        st.binary(max_size=60).map(lambda b: b"netdp-cni/2 " + b),
        st.builds(
            lambda e, s, body: b"netdp-cni/2 %d %d\n%s" % (e, s, body),
            st.integers(0, 30),
            st.integers(0, 30),
            st.binary(max_size=60),
        ),
    )
)
def test_request_decoder_only_raises_wire_error(data: bytes) -> None:
    try:
        env, stdin = wire.decode_request(data)
    except wire.WireError:
        return
    assert all(k.startswith("CNI_") and isinstance(v, str) for k, v in env.items())
    assert isinstance(stdin, bytes)


@settings(max_examples=200, deadline=None)
@given(
    env=st.dictionaries(
        st.from_regex(r"CNI_[A-Z]{1,8}", fullmatch=True),
        # What os.environ can hold: no NUL; surrogates only for undecodable bytes (tested above).
        st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\0")),
    ),
    stdin=st.binary(max_size=200),
)
def test_request_round_trip_property(env: dict[str, str], stdin: bytes) -> None:
    decoded_env, decoded_stdin = wire.decode_request(wire.encode_request(env, stdin))
    assert decoded_stdin == stdin
    assert decoded_env == {
        k: v.encode(errors="surrogateescape").decode(errors="replace") for k, v in env.items()
    }
