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

# The decoding the streams of a process share (a press reaches every gate with the same bytes).
class TestSharedDecoding < Minitest::Test
  FRAME = "event: switch\nid: 7\ndata: {\"a\":1}\n\n"

  def parser
    BigRedButton::SseParser.new
  end

  def test_parsers_given_the_same_frame_share_its_events
    memo = BigRedButton::SseParser::Memo.new
    a = parser
    b = parser
    ea = memo.feed(a, FRAME.b)
    eb = memo.feed(b, FRAME.b) # equal bytes, another String
    assert_equal [["switch", "7", "{\"a\":1}"]], ea.map(&:to_a)
    assert_same ea, eb, "the second parser is answered from the memo"
    assert_equal "7", b.last_id
    assert b.idle?
    # And what each parser then reads on its own is decoded as before.
    assert_equal [["switch", "8", "x"]], memo.feed(b, "event: switch\nid: 8\ndata: x\n\n").map(&:to_a)
    assert_equal "8", b.last_id
    assert_equal "7", a.last_id
  end

  def test_a_parser_in_the_middle_of_an_event_decodes_on_its_own
    memo = BigRedButton::SseParser::Memo.new
    memo.feed(parser, FRAME)
    b = parser
    assert_empty b.feed("data: before\n")
    refute b.idle?
    assert_equal [["switch", "7", "before\n{\"a\":1}"]], memo.feed(b, FRAME).map(&:to_a)
  end

  def test_an_event_whose_id_came_earlier_keeps_its_own_parsers_id
    memo = BigRedButton::SseParser::Memo.new
    frame = "event: switch\ndata: x\n\n" # no id line: the event takes the parser's last id
    a = parser
    a.feed("id: 3\n\n")
    b = parser
    b.feed("id: 9\n\n")
    assert_equal [["switch", "3", "x"]], memo.feed(a, frame).map(&:to_a)
    assert_equal [["switch", "9", "x"]], memo.feed(b, frame).map(&:to_a)
    assert_equal [["switch", nil, "x"]], memo.feed(parser, frame).map(&:to_a)
  end

  def test_a_split_frame_and_garbage_are_not_shared
    memo = BigRedButton::SseParser::Memo.new
    a = parser
    assert_empty memo.feed(a, FRAME[0, 10])
    assert_equal [["switch", "7", "{\"a\":1}"]], memo.feed(a, FRAME[10..]).map(&:to_a)
    b = parser
    assert_empty memo.feed(b, FRAME[0, 10]), "half a frame is never answered from the memo"
    c = parser
    assert_raises(BigRedButton::SseParser::LineTooLong) do
      memo.feed(c, "data: #{'x' * (BigRedButton::SseParser::MAX_LINE + 1)}")
    end
  end

  def test_a_decoded_value_is_remembered_but_not_a_failure
    memo = BigRedButton::SseParser::Memo.new
    calls = 0
    assert_raises(BigRedButton::ProtocolError) { memo.decoded(+"bad") { raise BigRedButton::ProtocolError, "no" } }
    assert_equal :ok, memo.decoded(+"bad") { (calls += 1) && :ok }
    assert_equal :ok, memo.decoded(+"bad") { (calls += 1) && :other }
    assert_equal 1, calls
    assert_equal :new, memo.decoded(+"good") { :new }
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

  def test_whole_chunks_one_per_read
    assert_equal ["hello", false], decode(["5\r\nhello\r\n"])
    assert_equal ["hello, world", false], decode(["5\r\nhello\r\n", "7\r\n, world\r\n"])
    assert_equal ["hello", true], decode(["5\r\nhello\r\n", "0\r\n\r\n"])
    assert_equal ["abcdefghijklmnopq", false], decode(["11\r\nabcdefghijklmnopq\r\n"]), "hex size"
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
