# frozen_string_literal: true

require_relative "test_helper"
require "open3"

# The conformance driver (bin/brb-conformance-driver) speaking sdk/conformance/PROTOCOL.md to
# this test as the orchestrator would, against a real `brb server`.
class TestDriver < Minitest::Test
  include BrbTest::Helpers

  DRIVER = File.expand_path("../bin/brb-conformance-driver", __dir__)

  def setup
    @server = BrbTest::Server.new
    @err = File.join(@server.dir, "driver.err")
    @in, @out, @wait = Open3.popen2("ruby", DRIVER, err: @err)
    @id = 0
  end

  def teardown
    super
    @in.close unless @in.closed?
    @wait.value
    @server.cleanup
  end

  def cmd(op, **h)
    @id += 1
    @in.puts(JSON.generate({ id: @id, op: op }.merge(h)))
    line = @out.gets
    refute_nil line, "the driver answered nothing to #{op}"
    ans = JSON.parse(line)
    assert_equal @id, ans["id"], "answers come in order"
    ans
  end

  def ok(op, **h)
    ans = cmd(op, **h)
    assert ans["ok"], "#{op}: #{ans['error']}"
    ans
  end

  def config(**o)
    { urls: [@server.url], token: @server.token, switch: "workers", worker_id: "conf-g1",
      report_interval_ms: 500, backoff_base_ms: 200, backoff_cap_ms: 1000 }.merge(o)
  end

  def now_ms
    Process.clock_gettime(Process::CLOCK_REALTIME, :millisecond)
  end

  def test_every_command
    ok("start", gate: "g1", config: config(max_concurrency: 2))
    assert_equal({ "opened" => true }, ok("wait_open", gate: "g1", timeout_ms: 5000).slice("opened"))
    st = ok("state", gate: "g1")
    assert_equal [true, true, 0, "running", 0, 1.0, 1],
                 st.values_at("open", "connected", "staleness_ms", "status", "in_flight", "admitted_fraction", "connects")
    assert_equal @server.switch["version"], st["version"]
    assert_in_delta now_ms, st["connect_times"][0], 10_000

    t0 = now_ms
    jobs = ok("work", gate: "g1", for_ms: 300, job_ms: 20)["jobs"]
    assert_operator jobs.size, :>=, 10, "two slots of 20 ms jobs for 300 ms"
    jobs.each { |s, e| assert_operator e - s, :>=, 19 }
    assert_operator jobs.map(&:first).min, :>=, t0
    assert_equal 2, jobs.count { |s, _| s < jobs.map(&:last).min }, "both slots work at once"
    assert_equal jobs.size, ok("state", gate: "g1")["processed"]

    assert ok("begin_job", gate: "g1", job: "j1")["admitted"]
    assert_equal 1, ok("state", gate: "g1")["in_flight"]
    @server.pause
    eventually(1) { !ok("state", gate: "g1")["open"] }
    assert_equal "draining", ok("state", gate: "g1")["status"]
    refute ok("begin_job", gate: "g1", job: "j2")["admitted"]
    assert_equal({ "opened" => false }, ok("wait_open", gate: "g1", timeout_ms: 100).slice("opened"))
    t1 = now_ms
    assert_empty ok("work", gate: "g1", for_ms: 200, job_ms: 10)["jobs"], "no job while paused"
    assert_operator now_ms - t1, :>=, 200
    ok("end_job", gate: "g1", job: "j1")
    assert_equal "paused", ok("state", gate: "g1")["status"]
    eventually(5) { @server.worker("conf-g1")&.fetch("status") == "paused" }
    refute cmd("end_job", gate: "g1", job: "j1")["ok"], "ending a job twice"

    bad = cmd("start", gate: "g2", config: config(max_concurrency: 0))
    refute bad["ok"]
    assert_match(/max_concurrency/, bad["error"])
    refute cmd("state", gate: "nope")["ok"]
    refute cmd("teleport")["ok"]
    @in.puts("this is not json")
    assert_equal false, JSON.parse(@out.gets)["ok"]

    ok("stop", gate: "g1")
    refute cmd("state", gate: "g1")["ok"], "a stopped gate is gone"
    assert_operator ok("rss")["rss_bytes"], :>, 1_000_000
    @in.close
    assert @wait.value.success?, "exits 0 when stdin closes"
    refute_includes File.read(@err), @server.token
  end

  def test_token_file_and_policy_settings_reach_the_sdk
    f = File.join(@server.dir, "tok")
    File.write(f, @server.token)
    ok("start", gate: "g1", config: config(token: nil, token_file: f, policy: "closed", grace_ms: 300,
                                           transport: "long_poll", idle_timeout_ms: 2000))
    eventually(5) { ok("state", gate: "g1")["open"] }
    @server.kill
    eventually(5, "closed after its grace") { !ok("state", gate: "g1")["open"] }
    assert_operator ok("state", gate: "g1")["staleness_ms"], :>, 0
  end

  # Many gates in one process: all see a press, and each costs little memory (the issue's
  # target is 64 KiB per watcher; a thread or a trust store per gate would blow it).
  def test_fleet
    resumed = @server.resume
    rss0 = ok("rss")["rss_bytes"]
    ok("fleet_start", count: 200, config: config(reports: false, worker_id: "fleet"))
    assert_equal 200, ok("fleet_ready", timeout_ms: 30_000)["ready"]
    per_gate = (ok("rss")["rss_bytes"] - rss0) / 200.0
    assert_operator per_gate, :<, 64 * 1024, "resident memory per gate: #{(per_gate / 1024).round(1)} KiB"
    t0 = Process.clock_gettime(Process::CLOCK_REALTIME, :microsecond)
    sw = @server.pause
    assert_operator sw["version"], :>, resumed["version"]
    seen = ok("fleet_seen", version: sw["version"], timeout_ms: 5000)
    assert_equal 0, seen["missing"]
    assert_equal 200, seen["seen_us"].size
    seen["seen_us"].each do |us|
      assert_operator us, :>, t0
      assert_operator us - t0, :<, 1_000_000, "seen within 1 s of the press"
    end
    stale = ok("fleet_seen", version: sw["version"] + 1, timeout_ms: 200)
    assert_equal 200, stale["missing"]
  end
end
