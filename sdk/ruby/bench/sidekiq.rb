# frozen_string_literal: true

# Figures for BigRedButton::Sidekiq (BENCHMARKS.md, "Job systems" / "Sidekiq"): two real
# `sidekiq` processes (Debian's 6.4, 5 threads each, jobs of 100 ms) on a private redis-server,
# a real `brb server`, a backlog of jobs at every moment measured.
#
#   BRB_BIN=target/debug/brb ruby -Isdk/ruby/lib sdk/ruby/bench/sidekiq.rb [PRESSES] [RAMP]
#
# PRESSES (default 10): pauses, each timed from the press (the switch's `changed_at`, stamped
# by the control plane as it commits the change) to the last job start any process recorded (the job's first line, in
# Redis; negative when no job started after the press), with the count of jobs that started
# after the press, and to both workers acknowledging (`last_ack_ms`); resumed at once between
# presses; and to each process's gate applying it (the gate's own log line).
# RAMP (default steps:1m): the release curve, job starts per second after `brb resume` at once
# and after `brb resume --ramp RAMP`, each from a paused fleet with a backlog.
# It prints what it measured, the machine's load average before and after, and the curve as a
# table of 5-second buckets with bars.
require_relative "../test/support/sidekiq_harness"
require "json"
require "net/http"
require "tmpdir"

module SidekiqBench
  JOB = 0.1
  CONCURRENCY = 5
  PROCESSES = 2
  SLOTS = CONCURRENCY * PROCESSES

  # A `brb server` on a free loopback port with a temp data dir; talks to it as an operator.
  class Brb
    attr_reader :url, :token, :bin

    def initialize(dir)
      @bin = ENV["BRB_BIN"].to_s
      @bin = File.expand_path("../../../target/debug/brb", __dir__) if @bin.empty?
      raise "no brb binary at #{@bin}: build it (cargo build -p brb) or set BRB_BIN" unless File.executable?(@bin)

      @dir = dir
      r, w = IO.pipe
      @pid = Process.spawn(@bin, "server", "--listen", "127.0.0.1:0", "--data-dir", dir,
                           out: w, err: File.join(dir, "server.log"))
      w.close
      deadline = SidekiqHarness.monotonic + 60
      line = nil
      until line&.include?("listening on")
        raise "brb server did not start (see #{dir}/server.log)" if SidekiqHarness.monotonic > deadline
        next unless IO.select([r], nil, nil, 1)

        line = r.gets or raise "brb server exited (see #{dir}/server.log)"
      end
      @url = line[%r{listening on (https?://\S+)}, 1]
      Thread.new { r.each_line { nil } }
      @token = File.read(File.join(dir, "admin-token")).strip
    end

    def api(method, path, body = nil)
      uri = URI("#{@url}/api/v1#{path}")
      klass = { get: Net::HTTP::Get, put: Net::HTTP::Put, post: Net::HTTP::Post }.fetch(method)
      req = klass.new(uri, "Authorization" => "Bearer #{@token}", "Content-Type" => "application/json")
      req.body = JSON.generate(body) if body
      res = Net::HTTP.start(uri.host, uri.port) { |h| h.request(req) }
      raise "#{method} #{path}: #{res.code} #{res.body}" unless res.code.start_with?("2")

      JSON.parse(res.body)
    end

    def set(state, **extra)
      api(:put, "/switches/workers/state", { state: state }.merge(extra))
    end

    def workers
      api(:get, "/switches/workers/workers")["workers"]
    end

    def cli(*args)
      env = { "BRB_URL" => @url, "BRB_TOKEN_FILE" => File.join(@dir, "admin-token"), "BRB_TOKEN" => nil }
      out, st = Open3.capture2e(env, @bin, *args)
      raise "brb #{args.join(' ')}: #{out}" unless st.success?

      out
    end

    def stop
      Process.kill("TERM", @pid)
      Process.wait(@pid)
    rescue Errno::ESRCH, Errno::ECHILD
      nil
    end
  end

  module_function

  def load_avg
    File.read("/proc/loadavg").split[0, 3].join(" ")
  end

  def pct(sorted, q)
    sorted[[(q * sorted.size).ceil - 1, 0].max]
  end

  def run(presses:, ramp:)
    dir = Dir.mktmpdir("brb-sidekiq-bench")
    puts "load average before: #{load_avg} (#{Etc.nprocessors} cores)"
    brb = Brb.new(dir)
    token_file = File.join(dir, "sidekiq-token")
    tok = brb.api(:post, "/tokens", { name: "sidekiq", role: "viewer", scope: { switches: ["workers"], pause_only: false } })
    File.write(token_file, tok["secret"] || tok["token"])
    redis = SidekiqHarness::RedisServer.new(dir)
    workers = Array.new(PROCESSES) do |i|
      SidekiqHarness::Worker.new(dir: dir, redis_url: redis.url, brb_url: brb.url, token_file: token_file,
                                 concurrency: CONCURRENCY, name: "sidekiq-#{i}",
                                 env: { "BRB_GATE_LOG" => File.join(dir, "gate-#{i}.log") })
    end
    SidekiqHarness.wait_for(120, "both Sidekiq processes to report") do
      brb.workers.count { |w| w["status"] == "running" } == PROCESSES
    end
    producer = SidekiqHarness::Producer.new(redis.url, rate: 1, seconds: JOB)
    starts = -> { SidekiqHarness.starts(redis.client) }
    backlog = lambda do |n|
      have = redis.client.llen(SidekiqHarness::QUEUE)
      producer.burst(n - have) if have < n
    end

    puts "\n#{PROCESSES} sidekiq processes x #{CONCURRENCY} threads, jobs of #{(JOB * 1000).round} ms, " \
         "a backlog at every press"
    to_start = []
    late = []
    pauses = []
    to_paused = []
    presses.times do |i|
      backlog.call(600)
      seen = SidekiqHarness.start_count(redis.client)
      SidekiqHarness.wait_for(60, "jobs to flow") { SidekiqHarness.start_count(redis.client) >= seen + 3 * SLOTS }
      # Slots running equal jobs start them in waves, and the count above grows a wave at a
      # time: pressing at once would always press just after a wave. A random point of the
      # job's cycle instead.
      sleep(rand * JOB)
      sw = brb.set("paused", reason: "bench press #{i + 1}")
      pressed = Time.iso8601(sw["changed_at"]).to_f
      pauses << [sw["version"], pressed]
      SidekiqHarness.wait_for(60, "both workers to report paused") do
        ws = brb.workers
        ws.size == PROCESSES && ws.all? { |w| w["status"] == "paused" && w["observed_version"] >= sw["version"] }
      end
      ack = brb.api(:get, "/switches/workers/workers")["changes"].find { |c| c["version"] == sw["version"] }
      all = starts.call
      last = all.map(&:at).max
      after = all.count { |st| st.at >= pressed }
      late << after
      to_start << (last - pressed) * 1000
      to_paused << ack["last_ack_ms"]
      printf("  press %2d: last job start %+7.1f ms from the press (%d after it), all acknowledged in %s ms\n",
             i + 1, to_start.last, after, ack["last_ack_ms"].inspect)
      brb.set("running")
    end
    # When each process's gate applied each pause (its log line, µs): from there its threads
    # fetch nothing more.
    closed = Array.new(PROCESSES) { |i| gate_changes(File.join(dir, "gate-#{i}.log")) }
    to_closed = pauses.flat_map do |v, pressed|
      closed.map { |c| c[v] && (c[v] - pressed) * 1000 }
    end.compact.sort
    s = to_start.sort
    puts format("press -> last job start: p50 %+.1f ms, max %+.1f ms (%d presses; negative: the last job " \
                "started before the press); jobs started after the press: %d in all", pct(s, 0.5), s.last, s.size, late.sum)
    puts format("press -> each process's gate closed: p50 %.1f ms, max %.1f ms (%d)", pct(to_closed, 0.5),
                to_closed.last, to_closed.size) unless to_closed.empty?
    acks = to_paused.compact.sort
    puts format("press -> %d/%d workers acknowledged: p50 %d ms, max %d ms", PROCESSES, PROCESSES,
                pct(acks, 0.5), acks.last) unless acks.empty?

    curves = {}
    [["at once", []], ["--ramp #{ramp}", ["--ramp", ramp]]].each do |name, args|
      brb.cli("pause", "--reason", "bench curve", "--wait", "30")
      SidekiqHarness.wait_for(60, "paused") { brb.workers.all? { |w| w["status"] == "paused" } }
      secs = args.empty? ? 20 : ramp_secs(ramp) + 20
      # Enough for the whole curve at full speed, so the supply never limits it.
      backlog.call((secs * SLOTS / JOB * 1.2).ceil)
      brb.cli("resume", *args, "--wait", "30")
      resumed = Time.iso8601(brb.api(:get, "/switches/workers")["changed_at"]).to_f
      SidekiqHarness.wait_for(secs + 120, "#{secs} s of starts") do
        SidekiqHarness.latest_start(redis.client).to_f >= resumed + secs
      end
      per_sec = Array.new(secs, 0)
      starts.call.each do |st|
        k = (st.at - resumed).floor
        per_sec[k] += 1 if k >= 0 && k < secs
      end
      curves[name] = per_sec
      puts "\njob starts per second after `#{['brb resume', *args].join(' ')}`:"
      puts "  #{per_sec.join(' ')}"
    end
    print_table(curves)
    puts "\nload average after: #{load_avg}"
  ensure
    producer&.stop
    workers&.each(&:stop)
    redis&.stop
    brb&.stop
    FileUtils.rm_rf(dir) if dir
  end

  # version => when the gate logged that it applied the pause of that version (Unix seconds).
  def gate_changes(path)
    File.foreach(path).each_with_object({}) do |line, h|
      m = line.match(/\[(\S+) #\d+\].*state=paused version=(\d+) .*observed a change/)
      h[Integer(m[2])] = Time.strptime(m[1], "%Y-%m-%dT%H:%M:%S.%N").to_f if m
    end
  end

  def ramp_secs(ramp)
    n, unit = ramp[/:(\d+[smh])\z/, 1].to_s.match(/(\d+)([smh])/).captures
    Integer(n) * { "s" => 1, "m" => 60, "h" => 3600 }.fetch(unit)
  end

  # 5-second buckets, jobs started per second on average, with a bar each.
  def print_table(curves)
    names = curves.keys
    len = curves.values.map(&:size).max
    puts "\n| seconds after resume | #{names.join(' | ')} |"
    puts "| --- |#{' ---: |' * names.size}"
    (0...len).step(5) do |from|
      cells = names.map do |n|
        b = curves[n][from, 5] || []
        next "" if b.empty?

        avg = b.sum.fdiv(b.size)
        format("%.0f %s", avg, "█" * (avg / 5).round)
      end
      puts "| #{from}–#{from + 5} | #{cells.join(' | ')} |"
    end
  end
end

require "etc"
SidekiqBench.run(presses: Integer(ARGV[0] || 10), ramp: ARGV[1] || "steps:1m")
