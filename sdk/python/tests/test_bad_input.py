"""Bad input (issue #14): malformed and truncated events, unknown event types, 401/403, 429 with
Retry-After, a server that accepts and never answers, a redirect to another host. For each: no
crash, no state flip from garbage, a clear log line, bounded retries."""

from __future__ import annotations

import logging
import socket
import threading
import time

import pytest

from brb_client import Gate, GateConfig, Transport

from conftest import BadServer, Seen, http_answer, sse_head, switch_json, wait_until


def gate(url: str, **kw) -> Gate:
    kw.setdefault("token", "brb_test_token")
    kw.setdefault("backoff_base", 0.05)
    kw.setdefault("backoff_cap", 0.5)
    kw.setdefault("send_samples", False)
    kw.setdefault("reports", False)
    kw.setdefault("worker_id", "py-bad")
    return Gate(GateConfig(urls=[url], **kw))


def event(name: str, data: str, id_: int | None = None) -> bytes:
    head = f"event: {name}\n" + (f"id: {id_}\n" if id_ is not None else "")
    return (head + "".join(f"data: {line}\n" for line in data.split("\n")) + "\n").encode()


def stream_then_hold(*chunks: bytes, hold: float = 30.0):
    """An SSE answer: the chunks, then an open, silent connection (or until the test ends)."""

    def respond(conn: socket.socket, seen: Seen) -> None:
        conn.sendall(sse_head())
        for c in chunks:
            conn.sendall(c)
            time.sleep(0.02)
        conn.settimeout(hold)
        try:
            conn.recv(1)
        except OSError:
            pass

    return respond


def test_garbage_and_unknown_events_flip_nothing(bad_server, caplog) -> None:
    caplog.set_level(logging.INFO, logger="brb_client")
    s: BadServer = bad_server(
        stream_then_hold(
            event("switch", switch_json("paused", 5), 5),
            event("switch", '{"name":"workers","state":"running","version":'),  # malformed JSON
            event("switch", switch_json("running", 6, name="other")),  # another switch
            event("switch", switch_json("resumed", 7)),  # an unknown state
            event("switch", switch_json("running", True)),  # a version that is not a number
            event("surprise", switch_json("running", 8)),  # an unknown event type
            b": keep-alive\n\n",
            event("switch", switch_json("paused", 9), 9),  # then a good one
        )
    )
    with gate(s.url) as g:
        assert wait_until(lambda: g.version == 9, 3.0), g.version
        assert not g.is_open(), "garbage never opened the gate"
        assert g.status() == "paused"
        assert g.is_connected()
    assert caplog.text.count("ignoring an unreadable switch event") == 4
    assert "brb_test_token" not in caplog.text


def test_gates_sharing_a_decoded_event_each_check_the_switch_is_theirs(bad_server, caplog) -> None:
    # The gates of a process share the decoding of equal bytes (_sse.Memo): one on another
    # switch, fed the same frame, still refuses it.
    caplog.set_level(logging.INFO, logger="brb_client")
    s: BadServer = bad_server(stream_then_hold(event("switch", switch_json("paused", 4), 4)))
    with gate(s.url) as mine, gate(s.url, switch="other") as other:
        assert wait_until(lambda: mine.version == 4 and "a switch named 'workers', not 'other'" in caplog.text, 3.0)
        assert not mine.is_open()
        assert other.version == 0 and other.last_change() is None


def test_a_truncated_event_at_the_end_of_a_stream_is_dropped(bad_server) -> None:
    calls = []

    def respond(conn: socket.socket, seen: Seen) -> None:
        calls.append(seen)
        conn.sendall(sse_head())
        if len(calls) == 1:
            conn.sendall(event("switch", switch_json("paused", 3), 3))
            # Cut mid-event: a running state that never finished arriving.
            conn.sendall(b'event: switch\ndata: {"name":"workers","state":"running","version":4')
            return
        time.sleep(30)

    s = bad_server(respond)
    with gate(s.url) as g:
        assert wait_until(lambda: len(calls) >= 2, 3.0), "reconnected after the cut"
        assert g.version == 3 and not g.is_open()
        assert calls[1].headers.get("last-event-id") == "3", "resumed from the last version"


def test_an_endless_line_is_refused_and_retried(bad_server, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="brb_client")
    s = bad_server(stream_then_hold(event("switch", switch_json("paused", 2), 2), b"data: " + b"x" * 200_000))
    with gate(s.url) as g:
        assert wait_until(lambda: s.count() >= 2, 5.0)
        assert g.version == 2 and not g.is_open()
        first = s.count()
        time.sleep(2.0)  # a measurement window: how often it comes back for more garbage
        again = s.count() - first
    # A stream ending in garbage does not reset the backoff: with a 50 ms base a reset would
    # reconnect ~80 times in 2 s, backing off (capped at 0.5 s) about ten.
    assert again <= 20, again
    assert "unreadable event stream" in caplog.text


@pytest.mark.parametrize("status,code", [("401 Unauthorized", "unauthorized"), ("403 Forbidden", "forbidden")])
def test_a_refused_token_is_said_clearly_and_not_hammered(bad_server, caplog, status, code) -> None:
    caplog.set_level(logging.DEBUG, logger="brb_client")
    body = '{"error":{"code":"%s","message":"unknown token"}}' % code
    s = bad_server(lambda conn, seen: conn.sendall(http_answer(status, body)))
    with gate(s.url, backoff_base=0.05, backoff_cap=2.0) as g:
        assert wait_until(lambda: s.count() >= 1, 2.0)
        time.sleep(1.5)  # a measurement window: how many requests in 1.5 s
        n = s.count()
        assert not g.is_open() and g.version == 0
    # With a 50 ms base a blind retry loop would send dozens; a refused token waits the cap.
    assert n <= 2, n
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors and "refused this worker's token" in errors[0].getMessage()
    assert status.split()[0] in errors[0].getMessage()
    assert "brb_test_token" not in caplog.text


def test_429_waits_for_retry_after(bad_server, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="brb_client")
    body = '{"error":{"code":"rate_limited","message":"slow down"}}'
    s = bad_server(lambda conn, seen: conn.sendall(http_answer("429 Too Many Requests", body, extra="Retry-After: 1\r\n")))
    with gate(s.url, backoff_base=0.01, backoff_cap=0.05) as g:
        assert wait_until(lambda: s.count() >= 3, 5.0)
        assert not g.is_open()
    times = [x.at for x in s.seen]
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert all(gap >= 0.95 for gap in gaps[:2]), gaps
    assert "HTTP 429" in caplog.text


def test_a_server_that_accepts_and_never_answers(bad_server, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="brb_client")
    hold = threading.Event()
    s = bad_server(lambda conn, seen: hold.wait(30))
    t = time.monotonic()
    with gate(s.url, answer_timeout=0.3, backoff_base=0.05, backoff_cap=0.2) as g:
        assert wait_until(lambda: s.count() >= 3, 5.0), "gave up on each attempt and retried"
        assert not g.is_open() and not g.is_connected() and g.version == 0
    assert time.monotonic() - t < 5.0
    # A gate blocked on a mute server still closes at once.
    g2 = gate(s.url, answer_timeout=30.0)
    assert wait_until(lambda: s.count() >= 4, 2.0)
    t = time.monotonic()
    g2.close()
    assert time.monotonic() - t < 1.0
    hold.set()
    assert "no answer to the event-stream request" in caplog.text
    assert "timed out" in caplog.text


def test_a_redirect_to_another_host_is_not_followed(bad_server, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="brb_client")
    elsewhere = bad_server(lambda conn, seen: conn.sendall(http_answer("200 OK", switch_json("running", 1))))
    location = f"http://localhost:{elsewhere.port}/api/v1/switches/workers/events"
    s = bad_server(lambda conn, seen: conn.sendall(http_answer("307 Temporary Redirect", "", extra=f"Location: {location}\r\n")))
    with gate(s.url, transport=Transport.AUTO, backoff_cap=0.2) as g:
        # Enough attempts to fall back to long-poll too: that answer is a redirect as well.
        assert wait_until(lambda: s.count(lambda x: "after_version" in x.target or x.target.endswith("/workers")) >= 1, 10.0)
        assert not g.is_open() and g.version == 0
    assert elsewhere.count() == 0, "the token never went to the other host"
    assert "redirects are not followed" in caplog.text
    assert location in caplog.text


def test_a_200_that_is_not_an_event_stream_counts_as_refused(bad_server) -> None:
    # A captive portal or proxy page with status 200: SSE fails, long-poll gets HTML: no state.
    s = bad_server(lambda conn, seen: conn.sendall(http_answer("200 OK", "<html>login</html>", ctype="text/html")))
    with gate(s.url, backoff_cap=0.2) as g:
        assert wait_until(lambda: s.count(lambda x: "/events" not in x.target) >= 1, 10.0), "fell back to long-poll"
        assert g.version == 0 and not g.is_open()


def test_the_watcher_outlives_a_bug_in_one_attempt(bad_server, caplog, monkeypatch) -> None:
    import brb_client.gate as gate_module

    real = gate_module.decode_switch  # what the stream reader calls on a switch event
    calls = []

    def flaky(data):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("a bug")
        return real(data)

    monkeypatch.setattr(gate_module, "decode_switch", flaky)
    caplog.set_level(logging.ERROR, logger="brb_client")
    s = bad_server(stream_then_hold(event("switch", switch_json("paused", 4), 4)))
    with gate(s.url) as g:
        assert wait_until(lambda: g.version == 4, 3.0), "the next attempt worked"
        assert not g.is_open()
    assert "unexpected error" in caplog.text
