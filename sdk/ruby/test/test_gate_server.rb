# frozen_string_literal: true

require_relative "test_helper"

# The gate against a real `brb server` on loopback (and, where a scenario needs the network to
# misbehave, a plain TCP relay in front of it).
class TestGateServer < Minitest::Test
  include BrbTest::Helpers

  def setup
    @log = BrbTest::LogCapture.new
    # Resync needs more than 1,000 changes in a few seconds.
    @server = BrbTest::Server.new(env: { "BRB_CHANGES_PER_SEC" => "100000", "BRB_CHANGES_BURST" => "100000" })
  end

  def teardown
    super
    @proxies&.each(&:close)
    return unless @server

    @server.cleanup
    refute_includes @log.text, @server.token, "the token appeared in a log line"
  end

  def proxy
    (@proxies ||= []) << BrbTest::Proxy.new(@server.port)
    @proxies.last
  end

  def opts(**o)
    { urls: [@server.url], token: @server.token, switch: "workers", logger: @log.logger,
      backoff_base: 0.2, backoff_cap: 1, report_interval: 0.5 }.merge(o)
  end

  def test_initial_state_pause_and_resume_within_a_second_and_reports_counted
    g = gate(**opts(worker_id: "rb-initial"))
    assert g.ready(timeout: 10)
    assert g.open?
    assert g.connected?
    assert_equal 0.0, g.staleness
    assert_equal @server.switch["version"], g.version
    eventually(5, "the control plane counts the worker as running") do
      w = @server.worker("rb-initial")
      w && w["status"] == "running" && w["observed_version"] == g.version
    end

    sw = @server.pause(reason: "db on fire")
    t0 = BigRedButton.monotonic
    eventually(1, "pause seen within 1 s") { !g.open? }
    assert_operator BigRedButton.monotonic - t0, :<, 1
    assert_equal sw["version"], g.version
    assert_equal sw["version"], g.last_change[0]
    assert_match(/state=paused version=#{sw['version']} changed_by=admin/, @log.text)
    refute g.try_job { flunk "a job ran while paused" }
    assert_nil g.acquire(timeout: 0.05)
    assert_raises(BigRedButton::NotAdmitted) { g.job(timeout: 0.05) { flunk "ran" } }
    eventually(5, "paused reported") do
      w = @server.worker("rb-initial")
      w["status"] == "paused" && w["observed_version"] == sw["version"]
    end
    counts = @server.workers
    assert_equal 1, counts["paused"]
    assert_equal 1, counts["current"]["acknowledged"]

    waiter = Thread.new { g.wait_open(timeout: 5) }
    sw = @server.resume
    t0 = BigRedButton.monotonic
    assert waiter.value, "wait_open returns once resumed"
    assert_operator BigRedButton.monotonic - t0, :<, 1
    assert_equal 7, g.job { 7 }
    assert_equal 1, g.processed
    eventually(5, "running reported with the job counted") do
      w = @server.worker("rb-initial")
      w["status"] == "running" && w["observed_version"] == sw["version"] && w["processed_total"] == 1
    end
  end

  def test_a_job_in_flight_at_a_pause_is_reported_draining_then_paused
    # No heartbeat within the test: what the control plane learns, it learns from the reports
    # a change (and the end of draining) send at once.
    g = gate(**opts(worker_id: "rb-drain", max_concurrency: 2, report_interval: 60))
    assert g.ready(timeout: 10)
    permit = g.try_acquire
    assert permit
    assert_equal 1, g.in_flight
    @server.pause
    eventually(1) { !g.open? }
    assert_equal :draining, g.status
    eventually(5, "draining reported") do
      w = @server.worker("rb-drain")
      w["status"] == "draining" && w["in_flight"] == 1
    end
    permit.release
    assert_equal :paused, g.status
    eventually(5, "paused reported once drained") { @server.worker("rb-drain")["status"] == "paused" }
    assert_equal 1, @server.worker("rb-drain")["processed_total"]
  end

  def test_resume_from_far_behind_gets_a_resync_and_the_current_state
    px = proxy
    g = gate(**opts(urls: [px.url], transport: :sse))
    assert g.ready(timeout: 10)
    v0 = g.version
    px.mode = :refuse
    px.cut
    eventually(5) { !g.connected? }
    sw = nil
    1001.times { |i| sw = @server.set_state(i.even? ? "paused" : "running") }
    assert_equal "paused", sw["state"]
    assert_operator sw["version"], :>, v0 + 1000
    px.mode = :forward
    eventually(10, "the gate catches up after the relay comes back") { g.version == sw["version"] }
    refute g.open?
    assert_match(/resync: the stream skipped from version #{v0} to #{sw['version']}/, @log.text)
  end

  def test_server_killed_keeps_the_last_known_state_and_reconnects_after_restart
    g = gate(**opts)
    assert g.ready(timeout: 10)
    @server.pause
    eventually(1) { !g.open? }
    @server.kill
    eventually(5) { !g.connected? }
    # Keep last known: still paused while the control plane is gone, and knows it is stale.
    eventually(5) { g.staleness.to_f > 0.5 }
    refute g.open?
    assert_equal 1, g.connects
    @server.start
    eventually(10, "reconnected after restart") { g.connected? }
    assert_equal 2, g.connects
    @server.resume
    eventually(1, "a resume after the restart is seen") { g.open? }
    times = g.connect_times
    assert_equal 2, times.size
    assert_operator times[1], :>, times[0]
  end

  def test_replica_failover
    a = proxy
    b = proxy
    g = gate(**opts(urls: [a.url, b.url]))
    assert g.ready(timeout: 10)
    first, other = a.requests.any? { |r| r.include?("/events") } ? [a, b] : [b, a]
    first.mode = :refuse
    first.cut
    eventually(10, "the gate moves to the other replica") do
      g.connected? && other.requests.any? { |r| r.include?("/events") }
    end
    @server.pause
    eventually(1) { !g.open? }
  end

  def test_a_dead_url_in_the_list_is_skipped
    dead = TCPServer.new("127.0.0.1", 0)
    dead_url = "http://127.0.0.1:#{dead.addr[1]}"
    dead.close # connection refused from now on
    g = gate(**opts(urls: [dead_url, @server.url]))
    assert g.ready(timeout: 10)
    assert g.open?
  end

  def test_sse_refused_by_a_proxy_falls_back_to_long_poll
    px = proxy
    px.mode = :refuse_sse
    g = gate(**opts(urls: [px.url], backoff_base: 0.05, backoff_cap: 0.1, worker_id: "rb-lp"))
    assert g.ready(timeout: 10), "long-poll reaches the control plane"
    assert_match(/falling back to long-poll/, @log.text)
    assert_equal 3, px.requests.count { |r| r.include?("/events") }
    assert g.connected?
    @server.pause
    eventually(1, "a pause arrives by long-poll within 1 s") { !g.open? }
    @server.resume
    eventually(1) { g.open? }
    eventually(5) { @server.worker("rb-lp")&.fetch("status") == "running" }
  end

  def test_a_buffering_proxy_is_noticed_by_its_silence_and_long_poll_takes_over
    px = proxy
    px.mode = :buffer_sse
    g = gate(**opts(urls: [px.url], backoff_base: 0.05, backoff_cap: 0.1, idle_timeout: 0.5))
    assert g.ready(timeout: 15), "long-poll reaches the control plane"
    assert_match(/silent for 0.5s/, @log.text)
    assert_match(/falling back to long-poll/, @log.text)
    eventually(5, "long-poll requests pass the proxy") { px.requests.any? { |r| r.include?("after_version=") } }
    @server.pause
    eventually(1) { !g.open? }
  end

  def test_long_poll_transport
    g = gate(**opts(transport: :long_poll))
    assert g.ready(timeout: 10)
    sw = @server.pause
    eventually(1) { !g.open? }
    assert_equal sw["version"], g.version
  end

  # A long backoff, so that no reconnect attempt re-evaluates the policy: the grace must run
  # out by itself.
  def test_policy_open_fails_open_after_its_grace
    @server.pause
    g = gate(**opts(policy: :open, grace: 0.5, backoff_base: 20, backoff_cap: 20))
    assert g.ready(timeout: 10)
    refute g.open?
    t0 = BigRedButton.monotonic
    @server.kill
    eventually(1.5, "fails open after the grace") { g.open? }
    assert_operator BigRedButton.monotonic - t0, :>=, 0.5
    assert_match(/failing open \(policy open\)/, @log.text)
  end

  def test_policy_closed_fails_closed_after_its_grace_and_recovers
    g = gate(**opts(policy: :closed, grace: 0.5, backoff_base: 0.5, backoff_cap: 0.5))
    assert g.ready(timeout: 10)
    assert g.open?
    t0 = BigRedButton.monotonic
    @server.kill
    eventually(1.5, "fails closed after the grace") { !g.open? }
    assert_operator BigRedButton.monotonic - t0, :>=, 0.5
    @server.start
    eventually(10, "the known state applies again once reconnected") { g.connected? && g.open? }
  end

  def test_keep_last_known_stays_open_through_an_outage
    g = gate(**opts(grace: 0.2))
    assert g.ready(timeout: 10)
    @server.kill
    eventually(5) { g.staleness.to_f > 1.0 }
    assert g.open?, "an outage does not change a known state"
  end

  def test_ramp_admits_its_fraction_by_duty_cycle
    @server.pause
    g = gate(**opts)
    assert g.ready(timeout: 10)
    @server.resume(ramp: { kind: "steps", fractions: [0.25, 1.0], duration_secs: 120 })
    eventually(1) { g.open? }
    assert_in_delta 0.25, g.admitted_fraction, 1e-9
    busy = 0.0
    t0 = BigRedButton.monotonic
    while BigRedButton.monotonic - t0 < 2
      p = g.acquire(timeout: 1)
      next unless p

      s = BigRedButton.monotonic
      sleep 0.02
      busy += BigRedButton.monotonic - s
      p.release
    end
    fraction = busy / (BigRedButton.monotonic - t0)
    assert_in_delta 0.25, fraction, 0.08, "admitted fraction #{fraction.round(3)}"
  end

  def test_a_bad_token_is_a_clear_error_without_a_retry_storm
    px = proxy
    # After a refusal it waits the backoff cap (5 s here), not the base (10 ms).
    g = gate(**opts(urls: [px.url], token: "brb_0000000000_#{'0' * 64}", backoff_base: 0.01, backoff_cap: 5))
    eventually(5, "a clear log line") { @log.text.include?("refused the token") }
    assert_match(/refused the token for event stream .*unauthorized.*BRB_TOKEN/, @log.text)
    assert_match(/token/, g.last_error)
    refute g.open?
    refute g.ready?
    never(1.5, "asked again within its auth retry interval") { px.accepted > 1 }
    refute_includes @log.text, "0" * 64
  end

  # The token the README recommends for workers: a viewer scoped to the switch.
  def test_a_scoped_viewer_token_from_a_file_works
    secret = @server.create_token("rb-viewer", role: "viewer", switches: ["workers"])
    Dir.mktmpdir do |d|
      f = File.join(d, "tok")
      File.write(f, "#{secret}\n")
      g = gate(**opts(token: nil, token_file: f, worker_id: "rb-viewer"))
      assert g.ready(timeout: 10)
      eventually(5, "its reports are counted") { @server.worker("rb-viewer") }
      refute_includes @log.text, secret
      refute_includes g.inspect, secret
    end
  end
end
