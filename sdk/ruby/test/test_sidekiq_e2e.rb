# frozen_string_literal: true

require_relative "test_helper"
require_relative "support/sidekiq_harness"
require "open3"

# Two real `sidekiq` processes (Debian's CLI, the brake wired with BigRedButton::Sidekiq.enable)
# on a real redis-server, a producer enqueueing all along, the real `brb server` and `brb`
# CLI: the pause stops job starts, loses and repeats nothing, is acknowledged by both, and the
# ramp on release limits how many jobs start.
class TestSidekiqE2e < Minitest::Test
  include BrbTest::Helpers

  JOB = 0.1          # seconds per job
  CONCURRENCY = 5    # processor threads per Sidekiq process
  PROCESSES = 2
  SLOTS = CONCURRENCY * PROCESSES
  # Faster than the two processes can run them (2 × 5 / 0.1 s = 100 a second at most), so a
  # backlog exists from the start: every slot is busy when the pause lands (something to
  # drain) and the ramp, not the supply, limits starts on release.
  RATE = 120
  RAMP = "steps:15s"

  def setup
    @server = BrbTest::Server.new
    @token_file = File.join(@server.dir, "sidekiq-token")
    File.write(@token_file, @server.create_token("sidekiq", role: "viewer", switches: ["workers"]))
    @redis = SidekiqHarness::RedisServer.new(@server.dir)
    @workers = []
  end

  def teardown
    super
    @watcher&.kill
    @producer&.stop
    @workers.each(&:stop)
    @redis&.stop
    @server.cleanup
  end

  def test_two_sidekiq_processes_pause_drain_and_follow_the_ramp
    PROCESSES.times { |i| start_worker(i) }
    ids = eventually(90, "both Sidekiq processes report running") do
      @workers.each { |w| assert w.alive?, "sidekiq exited:\n#{w.tail}" }
      ws = @server.workers["workers"]
      ws.map { |w| w["worker_id"] } if ws.size == PROCESSES && ws.all? { |w| w["status"] == "running" }
    end
    pids = ids.map { |id| SidekiqHarness.pid_of(id) }
    assert_equal @workers.map(&:pid).sort, pids.sort, "one worker per Sidekiq process, named by its identity"

    @producer = SidekiqHarness::Producer.new(@redis.url, rate: RATE, seconds: JOB).start
    eventually(60, "both processes run jobs") do
      by_pid = starts.map(&:pid).tally
      pids.all? { |p| by_pid.fetch(p, 0) >= 20 }
    end

    @seen = []
    @watcher = Thread.new { watch_reports }
    out = brb("pause", "--reason", "sidekiq e2e", "--wait", "30")
    assert_match(%r{paused · #{PROCESSES}/#{PROCESSES} workers acknowledged in \d+ ms}, out)
    paused_v = Integer(out[/\(v(\d+),/, 1])
    eventually(30, "both report paused") do
      ws = @server.workers["workers"]
      ws.all? { |w| w["status"] == "paused" && w["observed_version"] >= paused_v && w["in_flight"].zero? }
    end
    # The producer goes on: let two seconds' worth of jobs wait in the queue.
    enqueued = @producer.count
    eventually(30, "jobs queue up during the pause") { @producer.count >= enqueued + 2 * RATE }
    queued_at_resume = @redis.client.llen(SidekiqHarness::QUEUE)

    out = brb("resume", "--ramp", RAMP, "--wait", "30")
    assert_match(%r{running · #{PROCESSES}/#{PROCESSES} workers acknowledged}, out)
    @watcher.kill # it has seen the pause through; polling on would only load the machine
    sw = @server.switch
    resumed_at = Time.iso8601(sw["changed_at"]).to_f
    ramp = sw["ramp"]
    ramp_start = Time.iso8601(ramp["started_at"]).to_f
    ramp_end = ramp_start + ramp["duration_secs"]
    # Four seconds at full speed after the ramp, the backlog still there: the rate to compare with.
    eventually(ramp["duration_secs"] + 90, "jobs start at full speed after the ramp") do
      SidekiqHarness.latest_start(@redis.client).to_f >= ramp_end + 4
    end
    jids = @producer.stop
    eventually(240, "every enqueued job starts (#{jids.size})") { SidekiqHarness.start_count(@redis.client) >= jids.size }
    all = starts

    # Every enqueued job ran exactly once.
    runs = all.map(&:jid).tally
    assert_empty runs.select { |_, n| n > 1 }, "jobs started twice"
    assert_empty jids - runs.keys, "jobs never started"
    assert_empty runs.keys - jids, "jobs started that were never enqueued"

    # No job started after its worker acknowledged the pause (its first report of the pause's
    # version, `draining` or `paused`, as the control plane received it), until the resume.
    ids.each do |id|
      pid = SidekiqHarness.pid_of(id)
      acked = @seen.select { |r| r[:id] == id && r[:version] >= paused_v }.map { |r| r[:at] }.min
      refute_nil acked, "#{id} acknowledged the pause"
      late = all.select { |s| s.pid == pid && s.at >= acked && s.at < resumed_at }
      assert_empty late, "#{id}: jobs started after it acknowledged the pause at #{acked}"
      assert(all.any? { |s| s.pid == pid && s.at >= resumed_at }, "#{id} ran jobs after the resume")
    end

    assert_operator queued_at_resume, :>=, 2 * RATE, "jobs waited during the pause"

    # draining (with the jobs in flight) -> paused, never back.
    drained = 0
    ids.each do |id|
      seq = @seen.select { |r| r[:id] == id && r[:version] == paused_v }
      statuses = seq.map { |r| r[:status] }.chunk_while { |a, b| a == b }.map(&:first)
      assert_includes [%w[paused], %w[draining paused]], statuses, "#{id}: #{seq}"
      seq.each do |r|
        assert_operator r[:in_flight], :>, 0, "#{id} draining with nothing in flight" if r[:status] == "draining"
        assert_equal 0, r[:in_flight], "#{id} paused with jobs in flight" if r[:status] == "paused"
      end
      drained += 1 if statuses.first == "draining"
    end
    assert_operator drained, :>=, 1, "a worker was seen draining its jobs in flight: #{@seen}"
    $stderr.puts "sidekiq reports around the pause: #{@seen.select { |r| r[:version] == paused_v }}" if ENV["BRB_TEST_LOG"]

    assert_follows_ramp(all, ramp, ramp_start, ramp_end)
  end

  # The complaint heard most about job-system pauses: a deploy undoes them. A Sidekiq process
  # stopped during a pause and started again comes up paused (it runs nothing before the
  # control plane has told it the state, and the state is paused); the jobs queued meanwhile
  # run once, after the release.
  def test_a_process_restarted_during_a_pause_stays_paused
    producer = SidekiqHarness::Producer.new(@redis.url, rate: 1, seconds: JOB)
    worker = start_worker("before")
    eventually(90, "it reports running") { @server.workers["workers"].any? { |w| w["status"] == "running" } }
    producer.burst(20)
    eventually(60, "it runs them") { SidekiqHarness.start_count(@redis.client) >= 20 }
    v = @server.pause["version"]
    eventually(30, "it reports paused") { @server.worker(worker_id(worker), "workers")&.fetch("status") == "paused" }
    producer.burst(30)
    worker.stop
    assert worker.status.success?, "sidekiq stops cleanly on TERM during a pause: #{worker.tail}"

    again = start_worker("after")
    eventually(90, "the new process reports paused at the pause's version") do
      w = @server.worker(worker_id(again), "workers")
      w && w["status"] == "paused" && w["observed_version"] >= v
    end
    assert_equal 20, SidekiqHarness.start_count(@redis.client), "nothing ran during the pause"
    assert_equal 30, @redis.client.llen(SidekiqHarness::QUEUE), "the jobs wait in their queue"

    @server.resume
    eventually(60, "the jobs run after the release") { SidekiqHarness.start_count(@redis.client) >= 50 }
    runs = starts.map(&:jid).tally
    assert_equal producer.stop.sort, runs.keys.sort
    assert(runs.values.all?(1), "each ran once")
    assert(starts.last(30).all? { |s| s.pid == again.pid }, "the new process ran them")
  end

  private

  def start_worker(name)
    w = SidekiqHarness::Worker.new(dir: @server.dir, redis_url: @redis.url, brb_url: @server.url,
                                   token_file: @token_file, concurrency: CONCURRENCY, name: "sidekiq-#{name}")
    @workers << w
    w
  end

  # The worker id the control plane knows a Sidekiq process by (its identity names its pid).
  def worker_id(worker)
    pid = worker.pid
    (@server.workers["workers"] || []).map { |w| w["worker_id"] }.find { |id| SidekiqHarness.pid_of(id) == pid }
  end

  def starts
    SidekiqHarness.starts(@redis.client)
  end

  def brb(*args)
    env = { "BRB_URL" => @server.url, "BRB_TOKEN_FILE" => File.join(@server.dir, "admin-token"),
            "BRB_TOKEN" => nil }
    out, status = Open3.capture2e(env, BrbTest.brb_bin, *args)
    assert status.success?, "brb #{args.join(' ')}: #{out}"
    out
  end

  # Every change of a worker's report as the control plane shows it, with when it received it.
  def watch_reports
    last = {}
    loop do
      (@server.workers["workers"] || []).each do |w|
        key = [w["status"], w["observed_version"], w["in_flight"]]
        next if last[w["worker_id"]] == key

        last[w["worker_id"]] = key
        @seen << { id: w["worker_id"], status: w["status"], version: w["observed_version"],
                   in_flight: w["in_flight"], at: Time.iso8601(w["last_seen"]).to_f }
      end
      sleep 0.005
    end
  end

  # Job starts per step of the ramp follow its fractions of the full rate measured after it.
  #
  # Tolerance: each of the SLOTS job slots starts one job per cycle of job time / fraction, so
  # a window holds one cycle more or less per slot (±SLOTS); at a step change the slots first
  # finish the rest set under the previous fraction (at most one cycle each, -SLOTS); and 20 %
  # of the expected count for the per-job overhead on a loaded 2-core machine (the full rate is
  # measured in the same run, so a slow machine scales both sides).
  def assert_follows_ramp(all, ramp, ramp_start, ramp_end)
    full = all.count { |s| s.at >= ramp_end + 0.5 && s.at < ramp_end + 4 } / 3.5
    fractions = ramp["fractions"]
    step = ramp["duration_secs"].fdiv(fractions.size - 1)
    counts = fractions[0..-2].each_with_index.map do |f, i|
      from = ramp_start + i * step
      n = all.count { |s| s.at >= from && s.at < from + step }
      expected = f * full * step
      msg = "step #{i} (#{(f * 100).round}% of #{full.round(1)} jobs/s for #{step.round(1)} s): " \
            "#{n} starts, expected #{expected.round}"
      assert_in_delta expected, n, 2 * SLOTS + 0.2 * expected, msg
      n
    end
    if ENV["BRB_TEST_LOG"]
      $stderr.puts "sidekiq ramp: full #{full.round(1)} jobs/s, starts per step #{counts} of #{step.round(1)} s"
    end
    assert_equal counts.sort, counts, "starts grow with the ramp: #{counts}"
    assert_operator counts.last, :<, full * step * 0.75, "the last step is below full speed"
  end
end
