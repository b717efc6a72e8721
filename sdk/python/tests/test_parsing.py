"""The parts with no I/O: the SSE parser, the switch and ramp reader, token resolution."""

from __future__ import annotations

import pytest

from brb_client import ConfigError, GateConfig, Ramp, backoff
from brb_client._sse import MAX_LINE, Memo, Parser, SseError
from brb_client._switch import BadSwitch, check_name, decode_switch, parse_rfc3339, parse_switch
from brb_client.gate import resolve_token

from conftest import switch_json


def test_sse_events_comments_and_line_endings_split_anywhere() -> None:
    stream = (
        b": keep-alive\r\n\r\n"
        b"event: switch\r\nid: 7\r\ndata: {\"a\":\r\ndata: 1}\r\n\r\n"
        b"event: resync\rdata: x\r\r"
        b"data: plain\n\n"
    )
    # Every split point, including inside a CRLF, gives the same events.
    for cut in range(len(stream) + 1):
        p = Parser()
        evs = p.feed(stream[:cut]) + p.feed(stream[cut:])
        assert [(e.event, e.data, e.id) for e in evs] == [
            ("switch", '{"a":\n1}', "7"),
            ("resync", "x", "7"),
            ("message", "plain", "7"),
        ], cut


def test_sse_truncated_event_is_never_dispatched() -> None:
    p = Parser()
    assert p.feed(b'event: switch\ndata: {"name":"workers","state":"paused"') == []
    # The connection ends here: nothing was dispatched, nothing will be.


def test_sse_refuses_endless_lines_and_bad_utf8() -> None:
    with pytest.raises(SseError):
        Parser().feed(b"data: " + b"x" * (MAX_LINE + 10))
    with pytest.raises(SseError):
        Parser().feed(b"data: \xff\xfe\n\n")


def test_switch_parses_the_servers_json() -> None:
    sw = parse_switch(switch_json("paused", 42), "workers")
    assert (sw.state, sw.version, sw.changed_by, sw.ramp) == ("paused", 42, "admin", None)


@pytest.mark.parametrize(
    "doc",
    [
        "not json",
        "[1, 2]",
        switch_json(name="other"),
        switch_json(state="stopped"),
        switch_json(version=-1),
        switch_json(version=True),
        switch_json(version="3"),
        switch_json(ramp={"kind": "steps", "fractions": [0.5, 0.1], "duration_secs": 10, "started_at": "2026-01-01T00:00:00Z"}),
        switch_json(ramp={"kind": "steps", "fractions": [0.1, 1.5], "duration_secs": 10, "started_at": "2026-01-01T00:00:00Z"}),
        switch_json(ramp={"kind": "linear", "from": 0.1, "duration_secs": 0, "started_at": "2026-01-01T00:00:00Z"}),
        switch_json(ramp={"kind": "wobbly", "duration_secs": 10, "started_at": "2026-01-01T00:00:00Z"}),
        switch_json(ramp={"kind": "linear", "from": 0.1, "duration_secs": 10, "started_at": "yesterday"}),
    ],
)
def test_garbage_is_refused(doc: str) -> None:
    with pytest.raises(BadSwitch):
        parse_switch(doc, "workers")


def test_ramp_fraction_matches_the_rust_definition() -> None:
    t0 = parse_rfc3339("2026-01-01T00:00:00Z")
    steps = Ramp(t0, 9, "steps", fractions=(0.1, 0.25, 0.5, 1.0))
    # Each fraction for an equal share (3 s); 1.0 at the end; the first before the start.
    assert [steps.fraction_at(t0 + s) for s in (-5, 0, 2.9, 3.0, 6.5, 9.0, 100)] == [
        0.1, 0.1, 0.1, 0.25, 0.5, 1.0, 1.0,
    ]
    linear = Ramp(t0, 10, "linear", start_from=0.2)
    assert linear.fraction_at(t0 + 5) == pytest.approx(0.6)
    assert linear.fraction_at(t0 + 10) == 1.0


def test_rfc3339_with_nanoseconds_and_offsets() -> None:
    assert parse_rfc3339("2026-01-01T00:00:00.123456789Z") == pytest.approx(1767225600.123456789)
    assert parse_rfc3339("2026-01-01T01:00:00+01:00") == parse_rfc3339("2026-01-01T00:00:00Z")


def test_backoff_is_jittered_and_capped() -> None:
    seen = {backoff(0.1, 30.0, 0) for _ in range(200)}
    assert all(0 <= d <= 0.1 for d in seen) and len(seen) > 100
    assert all(backoff(0.1, 30.0, a) <= 30.0 for a in (10, 20, 1000))


def test_token_order_and_secrecy(tmp_path, monkeypatch) -> None:
    f = tmp_path / "tok"
    f.write_text("brb_file_token\n")
    monkeypatch.setenv("BRB_TOKEN", "brb_env_token")
    monkeypatch.setenv("BRB_TOKEN_FILE", str(f))
    cfg = GateConfig(urls=["http://127.0.0.1:1"])
    assert resolve_token(cfg) == "brb_env_token"
    monkeypatch.delenv("BRB_TOKEN")
    assert resolve_token(cfg) == "brb_file_token"
    assert resolve_token(GateConfig(urls=["x"], token="brb_given")) == "brb_given"
    assert resolve_token(GateConfig(urls=["x"], token_file=str(f))) == "brb_file_token"
    # A malformed token is refused without being echoed.
    with pytest.raises(ConfigError) as e:
        resolve_token(GateConfig(urls=["x"], token="brb_secret\nInjected: yes"))
    assert "brb_secret" not in str(e.value)
    with pytest.raises(ConfigError, match="/nonexistent"):
        resolve_token(GateConfig(urls=["x"], token_file="/nonexistent/token"))
    assert "brb_given" not in repr(GateConfig(urls=["x"], token="brb_given"))


def test_dechunking_split_anywhere_and_garbage_refused() -> None:
    from brb_client._hub import Dechunker

    body = b"5\r\nhello\r\n1;ext=1\r\n \r\n6\r\nworld!\r\n0\r\n\r\n"
    for cut in range(len(body) + 1):
        d = Dechunker()
        assert d.feed(body[:cut]) + d.feed(body[cut:]) == b"hello world!", cut
        assert d.ended
    with pytest.raises(SseError):
        Dechunker().feed(b"zz\r\nhello\r\n")
    with pytest.raises(SseError):
        Dechunker().feed(b"5\r\nhelloXX")
    with pytest.raises(SseError):
        Dechunker().feed(b"1" * 2000)


# The decoding the streams of a process share (a press reaches every gate with the same bytes).
FRAME = b'event: switch\nid: 7\ndata: {"a":1}\n\n'


def _evs(events: list) -> list:
    return [(e.event, e.data, e.id) for e in events]


def test_memo_parsers_given_the_same_frame_share_its_events() -> None:
    memo, a, b = Memo(), Parser(), Parser()
    ea = memo.feed(a, FRAME)
    eb = memo.feed(b, bytes(bytearray(FRAME)))  # equal bytes, another object
    assert _evs(ea) == [("switch", '{"a":1}', "7")]
    assert eb is ea, "the second parser is answered from the memo"
    assert b.idle()
    # What each parser reads next is its own, with the id the shared frame set.
    assert _evs(memo.feed(b, b"event: switch\ndata: x\n\n")) == [("switch", "x", "7")]


def test_memo_a_parser_in_the_middle_of_an_event_decodes_on_its_own() -> None:
    memo = Memo()
    memo.feed(Parser(), FRAME)
    b = Parser()
    assert b.feed(b"data: before\n") == []
    assert not b.idle()
    assert _evs(memo.feed(b, FRAME)) == [("switch", 'before\n{"a":1}', "7")]


def test_memo_an_event_whose_id_came_earlier_keeps_its_parsers_id() -> None:
    memo = Memo()
    frame = b"event: switch\ndata: x\n\n"  # no id line: the event takes the parser's last id
    a, b = Parser(), Parser()
    a.feed(b"id: 3\n\n")
    b.feed(b"id: 9\n\n")
    assert _evs(memo.feed(a, frame)) == [("switch", "x", "3")]
    assert _evs(memo.feed(b, frame)) == [("switch", "x", "9")]
    assert _evs(memo.feed(Parser(), frame)) == [("switch", "x", None)]


def test_memo_half_a_frame_and_garbage_are_not_shared() -> None:
    memo, a, b = Memo(), Parser(), Parser()
    assert memo.feed(a, FRAME[:10]) == []
    assert _evs(memo.feed(a, FRAME[10:])) == [("switch", '{"a":1}', "7")]
    assert memo.feed(b, FRAME[:10]) == [], "half a frame is never answered from the memo"
    with pytest.raises(SseError):
        memo.feed(Parser(), b"data: \xff\xfe\n\n")


def test_memo_remembers_a_decoded_switch_not_a_failure_and_each_gate_checks_the_name() -> None:
    memo = Memo()
    with pytest.raises(BadSwitch):
        memo.decoded("not json", decode_switch)
    calls = []

    def decode(d: str) -> object:
        calls.append(d)
        return decode_switch(d)

    doc = switch_json("paused", 4)
    sw = memo.decoded(doc, decode)
    assert memo.decoded("".join(doc), decode) is sw and len(calls) == 1
    assert check_name(sw, "workers").version == 4
    with pytest.raises(BadSwitch, match="a switch named 'workers', not 'other'"):
        check_name(sw, "other")


def test_dechunker_says_when_a_read_was_one_whole_chunk() -> None:
    # What lets the stream reader hand the same frame to every stream that read the same chunk.
    from brb_client._hub import Dechunker

    d = Dechunker()
    assert d.idle()
    assert d.feed(b"5\r\nhello\r\n") == b"hello" and d.last_whole and d.idle()
    assert d.feed(b"5\r\nwor") == b"wor" and not d.last_whole and not d.idle()
    assert d.feed(b"ld\r\n") == b"ld" and not d.last_whole and d.idle()
    assert d.feed(b"2\r\nab\r\n1\r\nc\r\n") == b"abc" and not d.last_whole, "two chunks are not one"


def test_a_delivery_leaves_no_new_container_in_the_gate() -> None:
    # A thousand gates of one process each keeping a fresh tuple (or list, or dict) per delivery
    # filled the collector's oldest generation press after press, until a full collection of
    # tens of milliseconds landed in the middle of a press. What a delivery stores must be
    # shared (the decoded switch) or atomic (ints, floats, strings).
    import gc

    from brb_client import Gate
    from brb_client._switch import decode_switch

    g = Gate(GateConfig(urls=["http://127.0.0.1:9"], switch="workers", token="t", reports=False, send_samples=False))
    try:
        g._apply(decode_switch(switch_json("running", 1)))
        for v in (2, 3):
            before = dict(vars(g))
            g._apply(decode_switch(switch_json("paused" if v % 2 else "running", v)))
            changed = {k: x for k, x in vars(g).items() if before.get(k) is not x}
            assert changed, "the delivery changed the gate"
            assert not [k for k, x in changed.items() if gc.is_tracked(x)], changed
        assert g.last_change() is not None and g.last_change()[0] == 3
    finally:
        g.close(timeout=2.0)
