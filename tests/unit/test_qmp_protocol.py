"""The sans-I/O QMP machine: two connections joined in memory (h11's ConnectionPair)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.qmp.protocol import (
    NEED_DATA,
    SERVER_MAX_MESSAGE,
    Command,
    ConnectionClosed,
    ErrorReply,
    Event,
    Greeting,
    InvalidInput,
    LocalProtocolError,
    QmpConnection,
    RemoteProtocolError,
    Reply,
    Role,
    State,
)

EXACT_GREETING = (
    b'{"QMP":{"version":{"qemu":{"micro":1,"minor":0,"major":5},"package":""},'
    b'"capabilities":[]}}\r\n'
)


def events(conn: QmpConnection) -> list[object]:
    out = []
    while True:
        ev = conn.next_event()
        if ev is NEED_DATA:
            return out
        out.append(ev)
        if isinstance(ev, ConnectionClosed):
            return out


class Pair:
    def __init__(self, strict: bool = False) -> None:
        self.server = QmpConnection(Role.SERVER, strict=strict)
        self.client = QmpConnection(Role.CLIENT)

    def s2c(self, ev) -> list[object]:
        self.client.receive_data(self.server.send(ev))
        return events(self.client)

    def c2s(self, ev) -> list[object]:
        self.server.receive_data(self.client.send(ev))
        return events(self.server)


def test_exact_stratovirt_greeting_bytes() -> None:
    assert QmpConnection(Role.SERVER).send(Greeting()) == EXACT_GREETING


def test_full_session_states_and_id_echo() -> None:
    p = Pair()
    assert p.s2c(Greeting()) == [Greeting()]
    assert p.client.state is State.NEGOTIATION
    assert p.c2s(Command("qmp_capabilities", id="c0")) == [Command("qmp_capabilities", {}, "c0")]
    assert p.s2c(Reply({}, "c0")) == [Reply({}, "c0")]
    assert p.client.state is State.COMMAND and p.server.state is State.COMMAND
    [cmd] = p.c2s(Command("query-status", id="x"))
    raw = p.server.send(Reply({"status": "running"}, cmd.id))
    assert json.loads(raw) == {"return": {"status": "running"}, "id": "x"}
    p.client.receive_data(raw)
    assert events(p.client) == [Reply({"status": "running"}, "x")]


def test_event_wire_shape_has_timestamp() -> None:
    p = Pair()
    p.s2c(Greeting())
    p.c2s(Command("qmp_capabilities"))
    p.s2c(Reply())
    raw = p.server.send(Event("STOP", {}, 1583908726, 162739))
    assert raw == (
        b'{"event":"STOP","data":{},"timestamp":{"seconds":1583908726,"microseconds":162739}}\r\n'
    )
    ev = Event.now("RESUME", clock=lambda: 12.5)
    assert (ev.seconds, ev.microseconds) == (12, 500000)


def test_events_not_sent_before_negotiation() -> None:
    s = QmpConnection(Role.SERVER)
    s.send(Greeting())
    assert not s.accepts_events
    with pytest.raises(LocalProtocolError):
        s.send(Event("STOP"))


def test_lenient_server_accepts_commands_without_negotiation() -> None:
    s = QmpConnection(Role.SERVER)
    s.send(Greeting())
    s.receive_data(b'{"execute":"query-status"}')
    assert events(s) == [Command("query-status")]
    assert s.state is State.COMMAND


def test_strict_server_demands_negotiation() -> None:
    s = QmpConnection(Role.SERVER, strict=True)
    s.send(Greeting())
    s.receive_data(b'{"execute":"query-status","id":7}')
    [ev] = events(s)
    assert isinstance(ev, InvalidInput)
    assert ev.reply() == ErrorReply(
        "CommandNotFound", "Expecting capabilities negotiation with 'qmp_capabilities'", 7
    )
    assert s.state is State.NEGOTIATION


def test_objects_span_reads_and_several_per_read() -> None:
    s = QmpConnection(Role.SERVER)
    s.send(Greeting())
    whole = b'{"execute":"stop","id":"a"}  {"execute":"cont",\n"id":"b"}{"execute":"x"}'
    got: list[object] = []
    for i in range(len(whole)):
        s.receive_data(whole[i : i + 1])
        got += events(s)
    assert got == [Command("stop", {}, "a"), Command("cont", {}, "b"), Command("x")]


def test_braces_inside_strings_do_not_confuse_framing() -> None:
    s = QmpConnection(Role.SERVER)
    s.send(Greeting())
    s.receive_data(b'{"execute":"getfd","arguments":{"fdname":"a}\\"{["}}')
    s.receive_data(b'\n{"execute":"y"}')
    assert events(s) == [Command("getfd", {"fdname": 'a}"{['}), Command("y")]


@pytest.mark.parametrize(
    ("data", "desc_part"),
    [
        (b'{"execute": }', "Invalid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b"garbage ", "Invalid JSON"),
        (b'{"arguments": {}}', "lacks member 'execute'"),
        (b'{"execute": "stop", "bogus": 1}', "'bogus' is unexpected"),
        (b'{"execute": "stop", "arguments": [1]}', "'arguments' must be an object"),
        (b'{"execute": "stop", "arguments": {"x": NaN}}', "Invalid JSON"),
        (b'{"execute": "\xff"}', "Invalid JSON"),
        (b"[" * 100 + b"]" * 100, "nesting"),
    ],
)
def test_bad_input_is_answered_and_the_connection_goes_on(data: bytes, desc_part: str) -> None:
    s = QmpConnection(Role.SERVER)
    s.send(Greeting())
    s.receive_data(data + b'\n{"execute":"query-status"}\n')
    [bad, good] = events(s)
    assert isinstance(bad, InvalidInput)
    assert bad.error_class == "GenericError"
    assert desc_part in bad.desc
    assert good == Command("query-status")
    out = json.loads(s.send(bad.reply()))
    assert out["error"]["class"] == "GenericError"


def test_unfinished_message_over_cap_is_answered_and_skipped() -> None:
    s = QmpConnection(Role.SERVER)
    s.send(Greeting())
    s.receive_data(b'{"execute":"x","arguments":{"a":"' + b"y" * SERVER_MAX_MESSAGE)
    [bad] = events(s)
    assert isinstance(bad, InvalidInput) and bad.desc == "The socket message is too long."
    s.receive_data(b"y" * 20000)  # the rest of that line is discarded, not buffered
    assert events(s) == [] and len(s._framer.buf) == 0
    s.receive_data(b'"}}\n{"execute":"query-status"}\n')
    assert events(s) == [Command("query-status")]


def test_complete_message_over_cap_is_rejected_but_not_fatal() -> None:
    s = QmpConnection(Role.SERVER)
    s.send(Greeting())
    big = json.dumps({"execute": "x", "arguments": {"a": "y" * SERVER_MAX_MESSAGE}}).encode()
    s.receive_data(big + b'{"execute":"ok"}')
    [bad, good] = events(s)
    assert isinstance(bad, InvalidInput) and "too long" in bad.desc
    assert good == Command("ok")


def test_eof() -> None:
    s = QmpConnection(Role.SERVER)
    s.send(Greeting())
    s.receive_data(b'{"execute":"stop"}')
    s.receive_data(b"")
    assert events(s) == [Command("stop"), ConnectionClosed()]
    assert s.state is State.CLOSED


def test_local_misuse_is_local_error() -> None:
    s = QmpConnection(Role.SERVER)
    with pytest.raises(LocalProtocolError):
        s.send(Reply())  # before the greeting
    c = QmpConnection(Role.CLIENT)
    with pytest.raises(LocalProtocolError):
        c.send(Command("qmp_capabilities"))  # before the greeting arrived
    c.receive_data(EXACT_GREETING)
    events(c)
    with pytest.raises(LocalProtocolError):
        c.send(Command("query-status"))  # before negotiation
    with pytest.raises(LocalProtocolError):
        c.send(Reply())


def test_client_rejects_broken_server() -> None:
    c = QmpConnection(Role.CLIENT)
    c.receive_data(b'{"hello": 1}\r\n')
    with pytest.raises(RemoteProtocolError, match="greeting"):
        c.next_event()
    c = QmpConnection(Role.CLIENT)
    c.receive_data(EXACT_GREETING + b"{nope}\r\n")
    assert isinstance(c.next_event(), Greeting)
    with pytest.raises(RemoteProtocolError):
        c.next_event()


def test_client_parses_errors_and_events() -> None:
    c = QmpConnection(Role.CLIENT)
    c.receive_data(EXACT_GREETING)
    events(c)
    c.send(Command("qmp_capabilities"))
    c.receive_data(
        b'{"return":{}}\r\n{"event":"SHUTDOWN","data":{"guest":false},'
        b'"timestamp":{"seconds":3,"microseconds":4}}\r\n'
        b'{"error":{"class":"DeviceNotActive","desc":"no balloon"},"id":"q"}\n'
    )
    assert events(c) == [
        Reply({}),
        Event("SHUTDOWN", {"guest": False}, 3, 4),
        ErrorReply("DeviceNotActive", "no balloon", "q"),
    ]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=3000), st.lists(st.integers(1, 64), max_size=20))
def test_any_bytes_never_crash_the_server_and_it_resynchronises(
    data: bytes, cuts: list[int]
) -> None:
    """Hostile input yields commands or errors to answer, never an exception; and two probe
    lines after it always get through (the second at the latest: see docs/qmp.md)."""
    s = QmpConnection(Role.SERVER)
    s.send(Greeting())
    probes = b'\n{"execute":"query-status","id":1}\n{"execute":"query-status","id":2}\n'
    data += probes
    pos, got = 0, []
    for cut in [*cuts, len(data)]:
        s.receive_data(data[pos : pos + cut] or b" ")
        pos += cut
        for ev in events(s):
            assert isinstance(ev, Command | InvalidInput)
            got.append(ev)
            s.send(ev.reply() if isinstance(ev, InvalidInput) else Reply({}, ev.id))
    assert s.state is not State.ERROR
    assert got[-1] == Command("query-status", {}, 2)


def test_leaky_bucket_drains_at_100_per_second() -> None:
    from engine.qmp.ratelimit import LeakyBucket

    now = [0.0]
    bucket = LeakyBucket(clock=lambda: now[0])
    assert all(bucket.allow() for _ in range(100))
    assert not bucket.allow()  # the 101st in the same instant
    now[0] += 0.05  # 5 units drained
    assert sum(bucket.allow() for _ in range(10)) == 5
    now[0] += 10
    assert all(bucket.allow() for _ in range(100))


# -- issue 13 item 6: a document that never ends must not wedge the connection ------------------


def test_a_bad_token_is_answered_at_once_and_the_connection_recovers() -> None:
    s = QmpConnection(Role.SERVER)
    s.send(Greeting())
    s.receive_data(b'{"execute": "query-status", oops')
    [bad] = events(s)  # no newline needed: the bad token is refused as QEMU's lexer does
    assert isinstance(bad, InvalidInput) and bad.error_class == "GenericError"
    assert bad.desc.startswith("Invalid JSON: expected a string key, found 'o' at line 1")
    s.receive_data(b'\n{"execute":"query-status","id":"after"}\n')
    assert events(s) == [Command("query-status", {}, "after")]


@pytest.mark.parametrize(
    "broken",
    [
        b'{"execute": "query-status"',  # never closed: the next object on a new line is refused
        b'{"execute": "query-status", "id": "unterminated',  # string cut by the newline
        b'{"execute": "query-status", "arguments": {"a": [1, 2',
        b'{"execute":',
        b"}}}",
        b"oops",
    ],
)
def test_an_unfinished_document_then_a_new_line_resynchronises(broken: bytes) -> None:
    s = QmpConnection(Role.SERVER)
    s.send(Greeting())
    s.receive_data(broken + b'\n{"execute":"query-status","id":1}\n')
    s.receive_data(b'{"execute":"query-status","id":2}\n')
    got = events(s)
    assert isinstance(got[0], InvalidInput) and got[0].desc.startswith("Invalid JSON")
    assert got[-1] == Command("query-status", {}, 2)
    assert all(isinstance(e, InvalidInput | Command) for e in got)


def test_pretty_printed_objects_still_frame() -> None:
    s = QmpConnection(Role.SERVER)
    s.send(Greeting())
    s.receive_data(b'{\n  "execute": "stop",\n  "arguments": {\n  }\n}\n[\n1,\n{"a": null}]\n')
    [stop, arr] = events(s)
    assert stop == Command("stop")
    assert isinstance(arr, InvalidInput) and "must be a JSON object" in arr.desc


# -- issue 13 item 9: what StratoVirt's serde decoder refuses -----------------------------------


@pytest.mark.parametrize(
    ("data", "desc_part"),
    [
        (b'{"execute":"query-status","execute":"quit"}', "duplicate field `execute`"),
        (b'{"execute":"x","arguments":{"a":1,"a":2}}', "duplicate field `a`"),
        (b'{"execute":"query-status","id":"\\ud800"}', "lone surrogate"),
        (b'{"execute":"x","arguments":{"\\udfff":1}}', "lone surrogate"),
        (b'{"execute":"query-status","id":1e999}', "number out of range"),
        (b'{"execute":"query-status","id":-1e999}', "number out of range"),
        (b'{"execute":"query-status","id":18446744073709551616}', "number out of range"),
        (b'{"execute":"query-status","id":' + b"9" * 5000 + b"}", "number out of range"),
        (b'{"execute":"query-status","id":Infinity}', "Invalid JSON"),
    ],
)
def test_what_serde_refuses_is_refused_with_an_error_reply(data: bytes, desc_part: str) -> None:
    s = QmpConnection(Role.SERVER)
    s.send(Greeting())
    s.receive_data(data + b'\n{"execute":"query-status"}\n')
    [bad, good] = events(s)
    assert isinstance(bad, InvalidInput) and desc_part in bad.desc, bad
    assert bad.id is None  # nothing of a refused message is echoed
    assert "sys.set_int_max_str_digits" not in bad.desc
    assert good == Command("query-status")
    wire = s.send(bad.reply())
    assert json.loads(wire)["error"]["class"] == "GenericError"


def test_a_valid_surrogate_pair_and_64_bit_numbers_are_fine() -> None:
    s = QmpConnection(Role.SERVER)
    s.send(Greeting())
    s.receive_data(
        b'{"execute":"x","arguments":{"s":"\\ud83d\\ude00","u":18446744073709551615,'
        b'"i":-9223372036854775808,"f":1.5e300},"id":"\\u00e9"}\n'
    )
    [cmd] = events(s)
    assert cmd.arguments == {"s": "\U0001f600", "u": (1 << 64) - 1, "i": -(1 << 63), "f": 1.5e300}
    assert s.send(Reply({}, cmd.id)) == '{"return":{},"id":"\u00e9"}\r\n'.encode()
