# frozen_string_literal: true

require_relative "test_helper"

# The parts with no I/O: the SSE parser, the chunked decoder, ramps, backoff, settings.
class TestSseParser < Minitest::Test
  FRAME = "retry: 1000\n\nevent: switch\nid: 7\ndata: {\"a\":1}\n\n: keep-alive\n\n"

  def events(chunks)
    p = BigRedButton::SseParser.new
    chunks.flat_map { |c| p.feed(c) }
  end

  def test_a_frame_split_anywhere_gives_the_same_events
    whole = events([FRAME])
    assert_equal [["switch", "7", "{\"a\":1}"]], whole.map(&:to_a)
    (1...FRAME.size).each do |i|
      assert_equal whole, events([FRAME[0, i], FRAME[i..]]), "split at #{i}"
    end
    assert_equal whole, events(FRAME.chars)
  end

  def test_crlf_and_cr_line_ends_split_between_cr_and_lf
    crlf = FRAME.gsub("\n", "\r\n")
    assert_equal events([FRAME]), events([crlf])
    i = crlf.index("\r\n")
    assert_equal events([FRAME]), events([crlf[0, i + 1], crlf[i + 1..]])
    assert_equal events([FRAME]), events([FRAME.gsub("\n", "\r")])
  end

  def test_multi_line_data_is_joined_and_utf8_split_inside_a_character_survives
    p = BigRedButton::SseParser.new
    bytes = "data: caf\u00e9\ndata: two\n\n".b
    i = bytes.index("\xC3".b) + 1
    ev = p.feed(bytes[0, i]) + p.feed(bytes[i..])
    assert_equal ["message", nil, "caf\u00e9\ntwo"], ev.first.to_a
  end

  def test_an_event_cut_before_its_blank_line_is_never_dispatched
    p = BigRedButton::SseParser.new
    assert_empty p.feed("event: switch\ndata: {\"state\":\"paused\"}\n")
  end

  def test_a_line_longer_than_the_limit_is_an_error_not_a_buffer
    p = BigRedButton::SseParser.new
    chunk = "x" * 65_536
    assert_raises(BigRedButton::SseParser::LineTooLong) do
      (BigRedButton::SseParser::MAX_LINE / chunk.size + 2).times { p.feed("data: #{chunk}") }
    end
  end
end

class TestChunkedDecoder < Minitest::Test
  def decode(chunks)
    d = BigRedButton::StreamConnection::ChunkedDecoder.new
    out = +""
    chunks.each { |c| d.feed(c) { |piece| out << piece } }
    [out, d.done?]
  end

  def test_chunks_split_anywhere
    body = "5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\n\r\n"
    (1...body.size).each do |i|
      assert_equal ["hello, world", true], decode([body[0, i], body[i..]]), "split at #{i}"
    end
  end

  def test_a_bad_size_line_is_a_protocol_error
    assert_raises(BigRedButton::ProtocolError) { decode(["zz\r\nhello\r\n"]) }
    assert_raises(BigRedButton::ProtocolError) { decode(["5\r\nhelloXX\r\n"]) }
    assert_raises(BigRedButton::ProtocolError) { decode(["1" * 2000]) }
  end
end

class TestRamp < Minitest::Test
  def ramp(h)
    BigRedButton::Ramp.from_json(h)
  end

  def test_steps_and_linear_fractions
    t0 = Time.utc(2026, 1, 1)
    steps = ramp("started_at" => t0.iso8601, "duration_secs" => 90, "kind" => "steps",
                 "fractions" => [0.1, 0.25, 0.5, 1.0])
    assert_in_delta 0.1, steps.fraction_at(t0 - 5) # clock skew: the first step
    assert_in_delta 0.1, steps.fraction_at(t0 + 29)
    assert_in_delta 0.25, steps.fraction_at(t0 + 31)
    assert_in_delta 0.5, steps.fraction_at(t0 + 61)
    assert_in_delta 1.0, steps.fraction_at(t0 + 90)
    linear = ramp("started_at" => t0.iso8601, "duration_secs" => 100, "kind" => "linear", "from" => 0.05)
    assert_in_delta 0.05, linear.fraction_at(t0)
    assert_in_delta 0.525, linear.fraction_at(t0 + 50)
    assert_in_delta 1.0, linear.fraction_at(t0 + 100)
  end

  def test_garbage_ramps_are_refused
    t = "2026-01-01T00:00:00Z"
    [
      nil, 5, { "started_at" => "yesterday", "duration_secs" => 5, "kind" => "linear", "from" => 0.1 },
      { "started_at" => t, "duration_secs" => -1, "kind" => "linear", "from" => 0.1 },
      { "started_at" => t, "duration_secs" => 5, "kind" => "linear", "from" => 7 },
      { "started_at" => t, "duration_secs" => 5, "kind" => "steps", "fractions" => "all" },
      { "started_at" => t, "duration_secs" => 5, "kind" => "zigzag" }
    ].each do |h|
      assert_raises(BigRedButton::ProtocolError, h.inspect) { ramp(h) }
    end
  end
end

class TestSettings < Minitest::Test
  include BrbTest::Helpers

  def with_env(vars)
    old = vars.keys.to_h { |k| [k, ENV[k]] }
    vars.each { |k, v| ENV[k] = v }
    yield
  ensure
    old.each { |k, v| ENV[k] = v }
  end

  def test_backoff_is_full_jitter_and_capped
    seen = Array.new(200) { BigRedButton.backoff(0.1, 30, 0) }
    assert seen.all? { |d| d >= 0 && d <= 0.1 }
    assert_operator seen.uniq.size, :>, 150
    [10, 20, 1000].each { |a| assert_operator BigRedButton.backoff(0.1, 30, a), :<=, 30 }
  end

  def test_token_from_argument_env_or_file_and_never_shown
    Dir.mktmpdir do |d|
      f = File.join(d, "token")
      File.write(f, "brb_abc_filesecret\n")
      assert_equal "brb_abc_argsecret", BigRedButton.resolve_token("brb_abc_argsecret", nil)
      assert_equal "brb_abc_filesecret", BigRedButton.resolve_token(nil, f)
      with_env("BRB_TOKEN" => "brb_abc_envsecret", "BRB_TOKEN_FILE" => f) do
        assert_equal "brb_abc_envsecret", BigRedButton.resolve_token(nil, nil)
      end
      with_env("BRB_TOKEN" => nil, "BRB_TOKEN_FILE" => f) do
        assert_equal "brb_abc_filesecret", BigRedButton.resolve_token(nil, nil)
      end
      e = assert_raises(BigRedButton::ConfigError) { BigRedButton.resolve_token("a", f) }
      assert_match(/not both/, e.message)
      e = assert_raises(BigRedButton::ConfigError) { BigRedButton.resolve_token(nil, "#{d}/missing") }
      assert_includes e.message, "#{d}/missing"
      e = assert_raises(BigRedButton::ConfigError) { BigRedButton.resolve_token("brb_x\r\nX-Evil: 1", nil) }
      refute_includes e.message, "brb_x"
      g = gate(urls: ["http://127.0.0.1:9"], token_file: f, logger: BrbTest::LogCapture.new.logger)
      refute_includes g.inspect, "filesecret"
      refute_includes g.to_s, "filesecret"
    end
  end

  def test_bad_settings_fail_at_start_with_a_clear_error
    log = BrbTest::LogCapture.new.logger
    {
      { max_concurrency: 0 } => /max_concurrency/,
      { policy: :sometimes } => /policy must be one of/,
      { transport: :pigeon } => /transport/,
      { urls: [] } => /no control-plane URL/,
      { urls: ["ftp://x"] } => /not an http/,
      { urls: ["http://10.0.0.5:7070"] } => /refusing plain HTTP/,
      { urls: ["http://127.0.0.1.evil.example"] } => /refusing plain HTTP/,
      { urls: ["https://127.0.0.1:1"], ca_file: "/nonexistent/ca.pem" } => %r{/nonexistent/ca.pem},
      { urls: ["https://127.0.0.1:1"], client_cert: "/tmp/x.pem" } => /both/,
      { grace: -1 } => /grace/,
      { worker_id: "a\nb" } => /worker_id/
    }.each do |opts, re|
      e = assert_raises(BigRedButton::ConfigError, opts.inspect) do
        gate(urls: ["http://127.0.0.1:9"], logger: log, **opts)
      end
      assert_match re, e.message, opts.inspect
    end
    assert gate(urls: ["http://10.0.0.5:7070"], allow_insecure_http: true, logger: log)
    assert gate(urls: "http://localhost:9,http://[::1]:9", logger: log)
  end
end
