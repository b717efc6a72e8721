# frozen_string_literal: true

# Real parts for the Sidekiq end-to-end test and benchmark: a `redis-server` on a loopback port
# picked here, `sidekiq` processes (Debian's CLI) running support/sidekiq_app.rb, and a
# producer that enqueues through Sidekiq's own client.
require "fileutils"
require "open3"
require "socket"
require "time"
require "big_red_button"

begin
  require "sidekiq"
  require "sidekiq/api"
rescue LoadError
  raise LoadError, "the Sidekiq tests need Debian's ruby-sidekiq and ruby-redis " \
                   "(scripts/ensure-packages.sh test)"
end
Redis.silence_deprecations = true

module SidekiqHarness
  APP = File.expand_path("sidekiq_app.rb", __dir__)
  LIB = File.expand_path("../../lib", __dir__)
  STARTS = "brb-test:starts"
  QUEUE = "queue:default"

  def self.monotonic
    Process.clock_gettime(Process::CLOCK_MONOTONIC)
  end

  # Waits for a condition (polling it); raises with the message when it does not come.
  def self.wait_for(timeout, what)
    deadline = monotonic + timeout
    loop do
      v = yield
      return v if v
      raise "timed out after #{timeout}s waiting for #{what}" if monotonic > deadline

      sleep 0.02
    end
  end

  # A private redis-server: no persistence, loopback only, on a free port (tried again on
  # another port if the one picked is taken meanwhile).
  class RedisServer
    attr_reader :url, :port

    def initialize(dir)
      @dir = dir
      5.times do
        @port = free_port
        log = File.join(dir, "redis-#{@port}.log")
        @pid = Process.spawn("redis-server", "--port", @port.to_s, "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no", "--dir", dir,
                             "--logfile", log, out: File::NULL, err: File::NULL)
        @url = "redis://127.0.0.1:#{@port}/0"
        return if up?(log)

        stop
      end
      raise "redis-server did not start (see #{dir}/redis-*.log)"
    end

    def client
      @client ||= ::Redis.new(url: @url)
    end

    def stop
      return unless @pid

      Process.kill("TERM", @pid)
      Process.wait(@pid)
    rescue Errno::ESRCH, Errno::ECHILD
      nil
    ensure
      @pid = nil
    end

    private

    def free_port
      s = TCPServer.new("127.0.0.1", 0)
      s.addr[1]
    ensure
      s&.close
    end

    # Up when it answers PING; not when the process exited (the port was taken).
    def up?(log)
      deadline = SidekiqHarness.monotonic + 30
      while SidekiqHarness.monotonic < deadline
        return false if Process.wait(@pid, Process::WNOHANG)

        begin
          return true if ::Redis.new(url: @url, timeout: 1).ping == "PONG"
        rescue ::Redis::BaseConnectionError
          nil
        end
        sleep 0.05
      end
      raise "redis-server did not answer within 30 s: #{File.read(log)[-500..]}"
    end
  end

  # A `sidekiq` process (the real CLI) running the test app with the brake wired in.
  class Worker
    attr_reader :log, :pid

    def initialize(dir:, redis_url:, brb_url:, token_file:, concurrency:, name:, env: {})
      @log = File.join(dir, "#{name}.log")
      env = { "RUBYLIB" => [LIB, ENV["RUBYLIB"]].compact.join(":"), "REDIS_URL" => redis_url,
              "BRB_URL" => brb_url, "BRB_TOKEN_FILE" => token_file, "BRB_TOKEN" => nil }.merge(env)
      @pid = Process.spawn(env, "sidekiq", "-r", APP, "-c", concurrency.to_s, "-q", "default",
                           "-t", "10", out: @log, err: @log, pgroup: true)
    end

    # How it exited, once it has.
    attr_reader :status

    def alive?
      return false unless @pid

      _, @status = Process.wait2(@pid, Process::WNOHANG)
      @pid = nil if @status
      @status.nil?
    rescue Errno::ECHILD
      @pid = nil
      false
    end

    # Stops it as a deploy would (TERM: Sidekiq finishes or requeues what it holds).
    def stop(signal = "TERM")
      return unless @pid

      Process.kill(signal, @pid)
      _, @status = Process.wait2(@pid)
    rescue Errno::ESRCH, Errno::ECHILD
      nil
    ensure
      @pid = nil
    end

    def tail
      File.exist?(@log) ? File.read(@log)[-3000..] || File.read(@log) : "(no log)"
    end
  end

  # Enqueues BrbTestJob(seconds) at a steady rate through Sidekiq's client, on its own
  # thread, and remembers every jid it was given.
  class Producer
    attr_reader :jids

    def initialize(redis_url, rate:, seconds:)
      pool = ConnectionPool.new(size: 1) { ::Redis.new(url: redis_url) }
      @client = ::Sidekiq::Client.new(pool)
      @rate = rate
      @seconds = seconds
      @jids = []
      @lock = Mutex.new
      @stop = false
    end

    def start
      @thread = Thread.new do
        t0 = SidekiqHarness.monotonic
        i = 0
        until @stop
          jid = @client.push("class" => "BrbTestJob", "args" => [@seconds], "retry" => false)
          @lock.synchronize { @jids << jid }
          i += 1
          # The producer's own pace (not a wait in the test): the next push is due at i/rate.
          ahead = t0 + i.fdiv(@rate) - SidekiqHarness.monotonic
          sleep ahead if ahead.positive?
        end
      end
      self
    end

    # Pushes `n` jobs at once (a backlog).
    def burst(n)
      jobs = Array.new(n) { [@seconds] }
      jids = @client.push_bulk("class" => "BrbTestJob", "args" => jobs, "retry" => false)
      @lock.synchronize { @jids.concat(jids) }
    end

    def count
      @lock.synchronize { @jids.size }
    end

    def stop
      @stop = true
      @thread&.join
      @lock.synchronize { @jids.dup }
    end
  end

  Start = Struct.new(:jid, :at, :pid)

  # Every job start recorded so far, in the order recorded.
  def self.starts(redis)
    redis.lrange(STARTS, 0, -1).map do |line|
      jid, at, pid = line.split(" ")
      Start.new(jid, Float(at), Integer(pid))
    end
  end

  # How many starts are recorded, and the latest: cheap enough to poll while thousands are.
  def self.start_count(redis)
    redis.llen(STARTS)
  end

  def self.latest_start(redis)
    line = redis.lindex(STARTS, -1)
    line && Float(line.split(" ")[1])
  end

  # The pid inside a worker id made by BigRedButton::Sidekiq (`sidekiq:HOST:PID:NONCE`).
  def self.pid_of(worker_id)
    worker_id.to_s.split(":")[-2].to_i
  end
end
