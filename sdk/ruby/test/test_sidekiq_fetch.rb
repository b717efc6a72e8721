# frozen_string_literal: true

require_relative "test_helper"
require_relative "support/sidekiq_harness"
require "big_red_button/sidekiq"

# The fetch strategy's paths one at a time, in this process, against a real redis-server and
# a real `brb server`: what happens to a job at each moment a pause can land.
class TestSidekiqFetch < Minitest::Test
  include BrbTest::Helpers

  Fetch = BigRedButton::Sidekiq::Fetch
  QUEUE = SidekiqHarness::QUEUE

  def setup
    @server = BrbTest::Server.new
    @redis = SidekiqHarness::RedisServer.new(@server.dir)
    ::Sidekiq.redis = { url: @redis.url, size: 4 }
    ::Sidekiq.logger.level = Logger::WARN
    @log = BrbTest::LogCapture.new
    @fetch = Fetch.new({ queues: ["default"], concurrency: 2 }, urls: @server.url, token: @server.token,
                                                                 report_interval: 1, logger: @log.logger)
    @gate = @fetch.start
    assert @gate.ready(timeout: 10), "the gate heard the control plane"
  end

  def teardown
    super
    @fetch&.stop
    @redis&.stop
    @server.cleanup
  end

  # As Sidekiq's client enqueues: to the left end; fetches take from the right.
  def push(*jobs)
    jobs.each { |j| @redis.client.lpush(QUEUE, j) }
  end

  def next_in_queue
    @redis.client.lindex(QUEUE, -1)
  end

  def pause
    v = @server.pause["version"]
    assert @gate.wait_version(v, timeout: 10)
    refute @gate.open?
  end

  def resume
    v = @server.resume["version"]
    assert @gate.wait_version(v, timeout: 10)
    assert @gate.open?
  end

  def reported(status, in_flight)
    eventually(10, "the control plane shows #{status} with #{in_flight} in flight") do
      w = @server.worker(@gate.worker_id)
      w && w["status"] == status && w["in_flight"] == in_flight && w
    end
  end

  def test_a_job_runs_under_a_slot_reported_draining_until_sidekiq_acknowledges_it
    push("j1")
    work = @fetch.retrieve_work
    assert_equal ["queue:default", "j1", "default"], [work.queue, work.job, work.queue_name]
    assert_equal 1, @gate.in_flight
    pause
    reported("draining", 1)
    refute_includes [@fetch.inspect, work.inspect, @fetch.to_s].join, @server.token, "no token in inspect"
    work.acknowledge
    w = reported("paused", 0)
    assert_equal 1, w["processed_total"]
  end

  def test_while_paused_nothing_is_fetched
    pause
    push("j1")
    # One fetch: it waits for a slot for Sidekiq's fetch timeout, then gives the thread back.
    assert_nil @fetch.retrieve_work
    assert_equal 1, @redis.client.llen(QUEUE), "the job stays queued"
    resume
    assert_equal "j1", @fetch.retrieve_work.job
  end

  def test_a_job_fetched_just_before_the_pause_goes_back_instead_of_starting
    push("j1", "j2")
    work = @fetch.retrieve_work
    assert_equal "j1", work.job
    pause
    ran = false
    BigRedButton::Sidekiq::LastLook.new(@fetch).call(nil, {}, "default") { ran = true }
    refute ran, "the job does not start after the gate closed"
    assert_equal "j1", next_in_queue, "back at the head of its queue"
    work.acknowledge # Sidekiq acknowledges the hand-over
    assert_equal [0, 0], [@gate.in_flight, @gate.processed], "not counted as run"
    reported("paused", 0)
    resume
    assert_equal %w[j1 j2], [@fetch.retrieve_work.job, @fetch.retrieve_work.job], "order kept"
  end

  # A processor thread waits in BRPOP holding no slot; the pause lands; then a job arrives.
  # The BRPOP hands it over, the gate does not admit it, it goes back. The BRPOP wait is
  # Sidekiq's 2 s, so when the pause and the push take longer than that here (a loaded
  # machine), the fetch returned before the job came: the attempt does not count, try again.
  def test_a_job_arriving_while_an_idle_thread_waits_during_a_pause_goes_back
    exercised = 5.times.any? do
      @redis.client.del(QUEUE)
      fetching = Thread.new do
        w = @fetch.retrieve_work
        [w, SidekiqHarness.monotonic]
      end
      eventually(10, "the thread waits in BRPOP") { @redis.client.client(:list).any? { |c| c["cmd"] == "brpop" } }
      pause
      pushed_at = SidekiqHarness.monotonic
      push("late")
      work, returned_at = fetching.value
      assert_nil work, "not run: the switch is paused"
      assert_equal "late", next_in_queue, "the job is back in its queue"
      assert_equal 1, @redis.client.llen(QUEUE)
      assert_equal 0, @gate.in_flight
      resume
      returned_at > pushed_at
    end
    assert exercised, "the pause and the push never fit in Sidekiq's 2 s BRPOP"
    assert_equal "late", @fetch.retrieve_work.job
  end

  def test_the_slot_of_a_processor_thread_that_died_in_a_job_is_freed
    push("j1", "j2")
    work = Thread.new { @fetch.retrieve_work }.value # the thread ends without acknowledging
    assert_equal "j1", work.job
    assert_equal 1, @gate.in_flight
    assert_equal "j2", @fetch.retrieve_work.job
    assert_equal [1, 1], [@gate.in_flight, @gate.processed], "the dead thread's job counted as run, its slot freed"
  end

  def test_enable_installs_the_fetch_and_the_middleware_once_and_refuses_another_strategy
    saved = ::Sidekiq.options
    ::Sidekiq.options = saved.merge(queues: ["default"], fetch: nil,
                                    lifecycle_events: saved[:lifecycle_events].transform_values(&:dup))
    fetch = BigRedButton::Sidekiq.enable(::Sidekiq, switch: "workers")
    assert_same fetch, ::Sidekiq.options[:fetch]
    assert_equal BigRedButton::Sidekiq::LastLook, ::Sidekiq.server_middleware.entries.first.klass
    assert_same fetch, BigRedButton::Sidekiq.enable(::Sidekiq), "a second call changes nothing"
    assert_equal 1, ::Sidekiq.options[:lifecycle_events][:startup].size

    ::Sidekiq.options[:fetch] = ::Sidekiq::BasicFetch.new(queues: ["default"])
    err = assert_raises(BigRedButton::ConfigError) { BigRedButton::Sidekiq.enable(::Sidekiq) }
    assert_match(/another fetch strategy \(Sidekiq::BasicFetch\)/, err.message)
  ensure
    ::Sidekiq.server_middleware.remove(BigRedButton::Sidekiq::LastLook)
    ::Sidekiq.options = saved
  end

  # A setting the gate refuses stops the real `sidekiq` at boot, before it runs a job.
  def test_sidekiq_does_not_start_unbraked_with_a_bad_setting
    worker = SidekiqHarness::Worker.new(dir: @server.dir, redis_url: @redis.url, brb_url: @server.url,
                                        token_file: File.join(@server.dir, "no-such-token"),
                                        concurrency: 2, name: "bad-token")
    push(JSON.generate("class" => "BrbTestJob", "args" => [0], "jid" => "j1", "retry" => false))
    eventually(60, "sidekiq exits") { !worker.alive? }
    refute worker.status.success?, "sidekiq exits with an error"
    assert_match(/token file .*no-such-token.*cannot read it/, worker.tail)
    assert_equal 1, @redis.client.llen(QUEUE), "no job was taken"
  ensure
    worker&.stop
  end
end
