# frozen_string_literal: true

require_relative "test_helper"

# Servers of the test's own that misbehave on purpose (the issue's "Bad input"): the gate does
# not crash, does not flip state on garbage, logs a clear line, and retries boundedly.
class TestBadInput < Minitest::Test
  include BrbTest::Helpers

  def setup
    @log = BrbTest::LogCapture.new
    @servers = []
  end

  def teardown
    super
    @servers.each(&:close)
  end

  def server(&blk)
    @servers << BrbTest::BadServer.new(&blk)
    @servers.last
  end

  def opts(urls, **o)
    { urls: urls, token: "brb_0123456789_#{'a' * 64}", switch: "workers", logger: @log.logger,
      backoff_base: 0.05, backoff_cap: 0.2, reports: false, samples: false }.merge(o)
  end

  # A stream that says running at v1, then sends `garbage`, then stays open.
  def stream_then(garbage)
    server do |c, _req, _n|
      c.write(BrbTest.sse_head)
      c.write(BrbTest.switch_event("running", 1))
      c.write(garbage)
      c.read # hold the stream open until the gate lets go
    end
  end

  def test_malformed_switch_events_change_nothing
    s = stream_then("event: switch\ndata: {not json\n\n" \
                    "event: switch\ndata: {\"name\":\"workers\",\"state\":\"exploded\",\"version\":9}\n\n" \
                    "event: switch\ndata: {\"name\":\"workers\",\"state\":\"paused\",\"version\":\"9\"}\n\n" \
                    "event: switch\ndata: {\"name\":\"other\",\"state\":\"paused\",\"version\":9}\n\n" \
                    "event: switch\ndata: [1,2]\n\n" \
                    "event: resync\ndata: {\"after\":1}\n\n")
    g = gate(**opts([s.url]))
    eventually(5) { @log.text.include?("unreadable resync event") }
    assert g.open?
    assert_equal 1, g.version
    assert g.connected?, "garbage does not drop a good stream"
    assert_equal 5, @log.text.scan("unreadable switch event").size, @log.text
    assert_match(/state "exploded"/, @log.text)
    assert_match(/for switch "other"/, @log.text)
    assert_equal 1, s.count
  end

  # Gates of one process share the decoding of equal bytes (SseParser::Memo): each still
  # checks that the switch is its own.
  def test_gates_sharing_a_decoded_event_each_check_its_switch
    s = server do |c, _req, _n|
      c.write(BrbTest.sse_head)
      c.write(BrbTest.switch_event("paused", 4))
      c.read
    end
    mine = gate(**opts([s.url]))
    other = gate(**opts([s.url], switch: "other"))
    eventually(5) { mine.version == 4 && @log.text.include?('for switch "workers"') }
    refute mine.open?
    refute other.ready?, "another switch's event is not this gate's state"
    assert_equal 0, other.version
  end

  def test_a_truncated_event_is_dropped_and_the_stream_resumes_from_the_last_version
    s = server do |c, _req, n|
      c.write(BrbTest.sse_head)
      if n == 1
        c.write(BrbTest.switch_event("running", 1))
        c.write(BrbTest.switch_event("paused", 2)[0..-30]) # cut inside the data line
        c.close
      else
        c.write(BrbTest.switch_event("paused", 3))
        c.read
      end
    end
    g = gate(**opts([s.url]))
    eventually(5) { g.version == 3 }
    refute g.open?
    reqs = s.requests
    assert_nil reqs[0].headers["last-event-id"]
    assert_equal "1", reqs[1].headers["last-event-id"], "resumed from the last complete event"
    assert_match(/event stream was closed; reconnecting/, @log.text)
  end

  def test_an_older_version_is_ignored_unless_a_resync_says_it_is_current
    s = stream_then(BrbTest.switch_event("paused", 40) +
                    BrbTest.switch_event("running", 39) + # a lagging replica's leftovers
                    "event: resync\ndata: {\"after\":40,\"current\":3,\"reason\":\"too_far_behind\"}\n\n" +
                    BrbTest.switch_event("running", 3))
    g = gate(**opts([s.url]))
    eventually(5) { g.version == 3 }
    assert g.open?
    assert_match(/resync: the stream skipped from version 40 to 3 \(too_far_behind\)/, @log.text)
    assert_equal 1, @log.text.scan("state=paused version=40").size
    refute_match(/version=39/, @log.text)
  end

  def test_a_silent_stream_is_dropped_after_the_idle_timeout
    s = server do |c, _req, n|
      c.write(BrbTest.sse_head)
      c.write(BrbTest.switch_event("running", n))
      c.read
    end
    g = gate(**opts([s.url], idle_timeout: 0.5))
    eventually(5) { s.count >= 2 }
    assert_match(/silent for 0.5s; reconnecting/, @log.text)
    assert_equal "1", s.requests[1].headers["last-event-id"]
    eventually(5) { g.version >= 2 }
    assert_operator s.requests[1].at - s.requests[0].at, :>=, 0.5
  end

  def test_an_unknown_event_type_is_ignored
    s = stream_then("event: party\ndata: {\"state\":\"paused\"}\n\n")
    g = gate(**opts([s.url]))
    eventually(5) { @log.text.include?("unknown type \"party\"") }
    assert g.open?
    assert g.connected?
    assert_equal 1, s.count
  end

  def test_401_and_403_back_off_to_the_long_interval
    [401, 403].each do |code|
      s = server do |c, _req, _n|
        body = JSON.generate(error: { code: code == 401 ? "unauthorized" : "forbidden", message: "no" })
        c.write("HTTP/1.1 #{code} X\r\nContent-Type: application/json\r\nContent-Length: #{body.size}\r\n\r\n#{body}")
        c.close
      end
      g = gate(**opts([s.url], auth_retry: 60))
      eventually(5) { g.last_error.to_s.include?("refused the token") }
      never(1.0, "retried within the auth interval") { s.count > 1 }
      refute g.open?
      g.close
    end
    assert_equal 2, @log.text.scan(/ERROR .*refused the token for event stream/).size
  end

  def test_429_waits_for_retry_after
    s = server do |c, _req, n|
      if n == 1
        c.write("HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\nContent-Type: application/json\r\n" \
                "Content-Length: 52\r\n\r\n{\"error\":{\"code\":\"rate_limited\",\"message\":\"slow\"}}  ")
        c.close
      else
        c.write(BrbTest.sse_head)
        c.write(BrbTest.switch_event("paused", 4))
        c.read
      end
    end
    g = gate(**opts([s.url]))
    eventually(5) { g.version == 4 }
    gap = s.requests[1].at - s.requests[0].at
    assert_operator gap, :>=, 1.0, "asked again before Retry-After"
    assert_operator gap, :<, 1.0 + 0.05 + 0.5
    assert_match(/rate limited .*rate_limited.*retrying after 1.0s/, @log.text)
  end

  def test_a_server_that_accepts_and_never_answers_times_out_and_the_next_replica_is_used
    mute = server { |c, _req, _n| c.read }
    good = stream_then("")
    g = gate(**opts([mute.url, good.url], answer_timeout: 0.5))
    assert g.ready(timeout: 10)
    assert g.open?
    # The gate starts at a random replica; when it was the mute one, it said so and moved on.
    assert_match(/no answer to the event-stream request within 0.5s/, @log.text) if mute.count.positive?
    mute_only = gate(**opts([mute.url], answer_timeout: 0.3))
    eventually(5) { mute_only.last_error.to_s.include?("no answer") }
    refute mute_only.ready?
    refute mute_only.open?
  end

  def test_a_redirect_to_another_host_is_not_followed
    elsewhere = stream_then("")
    s = server do |c, _req, _n|
      c.write("HTTP/1.1 307 Temporary Redirect\r\nLocation: #{elsewhere.url}/api/v1/switches/workers/events\r\n" \
              "Content-Length: 0\r\n\r\n")
      c.close
    end
    g = gate(**opts([s.url]))
    eventually(5) { @log.text.include?("redirects are not followed") }
    assert_match(%r{redirect to #{Regexp.escape(elsewhere.url)}/api/v1/switches/workers/events}, @log.text)
    eventually(5) { s.count >= 2 } # it retries the control plane it was given, with backoff
    assert_equal 0, elsewhere.count
    refute g.open?
  end

  def test_not_http_and_an_endless_line_do_not_crash_or_flip
    junk = server do |c, _req, _n|
      c.write("SSH-2.0-OpenSSH_9.2\r\n\r\n")
      c.close
    end
    g = gate(**opts([junk.url]))
    eventually(5) { g.last_error.to_s.include?("not an HTTP answer") }
    refute g.open?

    long = stream_then("data: #{'x' * (BigRedButton::SseParser::MAX_LINE + 10)}")
    g2 = gate(**opts([long.url]))
    eventually(10) { @log.text.include?("event-stream line longer than") }
    assert g2.open?, "the state before the endless line stands"
    assert_equal 1, g2.version
    eventually(5) { long.count >= 2 } # reconnects, with backoff
  end

  # After a failover, closing the gates closes every stream they opened (the gate holds the
  # connection it moved to, not the refused one).
  def test_closing_gates_closes_their_streams_after_a_failover
    dead = TCPServer.new("127.0.0.1", 0)
    dead_url = "http://127.0.0.1:#{dead.addr[1]}"
    dead.close
    closed = Queue.new
    s = server do |c, _req, _n|
      c.write(BrbTest.sse_head + BrbTest.switch_event("running", 1))
      c.read
      closed << true
    end
    gs = Array.new(8) { gate(**opts([dead_url, s.url])) }
    gs.each { |g| assert g.ready(timeout: 5) }
    assert_match(/trying the next replica/, @log.text, "some gate started on the dead replica")
    assert_equal 8, s.count
    gs.each(&:close)
    eventually(5, "every stream is closed") { closed.size == 8 }
  end

  # One stream that never stops talking must not starve the other gates of the process.
  def test_a_flooding_stream_does_not_starve_other_gates
    flood = server do |c, _req, _n|
      c.write(BrbTest.sse_head + BrbTest.switch_event("running", 1))
      chunk = ": keep-alive\n" * 4096
      loop { c.write(chunk) }
    end
    go = Queue.new
    calm = server do |c, _req, _n|
      c.write(BrbTest.sse_head + BrbTest.switch_event("running", 1))
      go.pop
      c.write(BrbTest.switch_event("paused", 2))
      c.read
    end
    noisy = gate(**opts([flood.url]))
    quiet = gate(**opts([calm.url]))
    assert noisy.ready(timeout: 5)
    assert quiet.ready(timeout: 5)
    go << true
    eventually(2, "the quiet gate hears its change while the other stream floods") { !quiet.open? }
    assert noisy.open?
  end

  def test_an_html_200_from_a_proxy_is_not_a_stream
    s = server do |c, _req, _n|
      c.write("HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 13\r\n\r\n<h1>hi</h1>\r\n")
      c.close
    end
    g = gate(**opts([s.url], transport: :sse))
    eventually(5) { g.last_error.to_s.include?("not an event stream") }
    refute g.open?
    refute g.connected?
  end

  def test_connection_refused_retries_are_bounded_by_the_backoff
    dead = TCPServer.new("127.0.0.1", 0)
    port = dead.addr[1]
    dead.close
    tries = 0
    counting = Class.new(BigRedButton::Gate) do
      define_method(:sse_try) { |*a| tries += 1; super(*a) }
    end
    g = counting.new(**opts(["http://127.0.0.1:#{port}"], backoff_base: 0.1, backoff_cap: 0.4))
    gates << g
    eventually(5) { g.last_error.to_s.include?("cannot reach the control plane") }
    # Full jitter at a 0.4 s cap averages 0.2 s between attempts after the first ones: about a
    # dozen in two seconds; with no backoff it would be thousands.
    never(2.0, "retried in a storm") { tries > 40 }
    assert_operator tries, :>=, 3, "it does keep trying"
    assert_operator @log.text.scan("WARN").size, :<=, 2, "a long outage is one warning, not one per attempt"
  end
end
