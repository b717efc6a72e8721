# frozen_string_literal: true

require "json"
require "logger"
require "securerandom"
require "socket"

module BigRedButton
  # A gate on one switch: what a background worker checks before taking a job.
  #
  # The process's Reactor thread holds the switch's event stream open (SSE; long-poll, on a
  # thread of its own, when SSE cannot be held) and writes what it learns into the gate; #open?
  # reads one instance variable, so it can be called before every job at no cost.
  #
  # #job is the fuller form: it waits while the switch is closed, counts the job as in flight
  # (so the gate reports `draining` while jobs started before a pause finish), and applies a
  # release ramp by duty cycle: at an admitted fraction f each job slot rests
  # `job time × (1 − f) / f` after a job, so the worker does f of its normal work whatever its
  # job length.
  #
  # When the control plane cannot be reached the gate keeps the last known state
  # (:keep_last_known, the default: an outage never silently undoes a pause), or fails :open or
  # :closed after a grace period. Reconnects use exponential backoff with full jitter.
  class Gate
    POLICIES = %i[keep_last_known open closed].freeze
    TRANSPORTS = %i[auto sse long_poll].freeze
    # Failed reconnects retried within `backoff_base` before the bound starts doubling: a
    # restarting control plane is usually back within it.
    FLAT_ATTEMPTS = 2
    # Consecutive SSE failures before :auto falls back to long-poll, and for how long.
    SSE_FAILURES_BEFORE_FALLBACK = 3
    LONG_POLL_SPELL = 300
    LONG_POLL_WAIT = 25
    BUSY = Float::INFINITY

    # What a stream or long-poll attempt came to.
    Outcome = Struct.new(:heard, :refused, :wait, keyword_init: true)

    attr_reader :switch, :worker_id, :policy, :transport, :max_concurrency

    # Every setting but `switch` has a default. Durations are in seconds.
    #
    # urls::              replica base URLs (Array or comma-separated String); default BRB_URL,
    #                     else http://127.0.0.1:7070
    # token::             bearer token; else token_file:, else BRB_TOKEN, else BRB_TOKEN_FILE
    # policy::            :keep_last_known (default), :open or :closed (after `grace`)
    # transport::         :auto (SSE, long-poll when SSE keeps failing), :sse, :long_poll
    # ca_file::           private CA bundle (PEM); default BRB_CA_FILE
    # client_cert/key::   client certificate for mutual TLS; default BRB_CLIENT_CERT/KEY
    # auth_retry::        how long to wait after a 401/403 before asking again (default: the
    #                     backoff cap, as the other SDKs: a fixed token is noticed, no storm)
    # answer_timeout::    how long a stream's answer may take to start (connect, TLS, head)
    # reports::           report to the control plane (on every change and every interval)
    # samples::           a `sdk_jobs_processed` counter sample, at most once a second while
    #                     jobs finish
    def initialize(switch: "workers", urls: nil, token: nil, token_file: nil, worker_id: nil,
                   policy: :keep_last_known, grace: 10, max_concurrency: 1, report_interval: 5,
                   transport: :auto, backoff_base: 1, backoff_cap: 30, idle_timeout: 45,
                   auth_retry: nil, answer_timeout: Http::STREAM_ANSWER_TIMEOUT,
                   ca_file: ENV["BRB_CA_FILE"], client_cert: ENV["BRB_CLIENT_CERT"],
                   client_key: ENV["BRB_CLIENT_KEY"], allow_insecure_http: false, reports: true,
                   samples: true, logger: nil)
      @switch = switch.to_s
      raise ConfigError, "a switch name is needed" if @switch.empty?

      @policy = symbol(policy, POLICIES, "policy")
      @transport = symbol(transport, TRANSPORTS, "transport")
      unless max_concurrency.is_a?(Integer) && max_concurrency >= 1
        raise ConfigError, "max_concurrency must be an integer of at least 1"
      end

      @max_concurrency = max_concurrency
      @grace = seconds(grace, "grace", zero: true)
      @report_interval = seconds(report_interval, "report_interval")
      @backoff_base = seconds(backoff_base, "backoff_base")
      @backoff_cap = [seconds(backoff_cap, "backoff_cap"), @backoff_base].max
      @idle_timeout = seconds(idle_timeout, "idle_timeout")
      @auth_retry = auth_retry.nil? ? @backoff_cap : seconds(auth_retry, "auth_retry")
      @answer_timeout = seconds(answer_timeout, "answer_timeout")
      @worker_id = (worker_id || BigRedButton.default_worker_id).to_s
      if @worker_id.empty? || @worker_id.size > 128 || @worker_id.match?(/[[:cntrl:]]/)
        raise ConfigError, "worker_id must be 1 to 128 characters, none of them control characters"
      end

      @reports = reports
      @samples = samples
      @log = logger || BigRedButton.default_logger
      urls ||= ENV.fetch("BRB_URL", "http://127.0.0.1:7070")
      urls = urls.split(",") if urls.is_a?(String)
      @http = Http.shared(urls: urls, token: BigRedButton.resolve_token(token, token_file),
                          ca_file: blank(ca_file), client_cert: blank(client_cert),
                          client_key: blank(client_key), allow_insecure_http: allow_insecure_http)
      @path = "/switches/#{BigRedButton.escape(@switch)}"

      @mutex = Mutex.new
      @changed = ConditionVariable.new # state, version, slots: waiters re-check
      @open = false
      @known = nil # :running / :paused once the control plane said
      @version = 0
      @ramp = nil
      @connected = false
      @last_contact = nil # monotonic
      @lost_at = now # never connected counts as lost since the start, for the grace
      @in_flight = 0
      @processed = 0
      @slots = Array.new(@max_concurrency, 0.0)
      @connects = 0
      @connect_times = []
      @last_change = nil
      @last_error = nil
      @closed = false
      # Each gate starts at a random replica, so a fleet spreads over them.
      @base_index = rand(@http.bases.size)

      # Reactor-thread state: the stream's attempt counters, timers, the report in flight.
      @reactor = Reactor.instance
      @attempt = 0
      @sse_failures = 0
      @long_poll_until = nil
      @conn = nil
      @long_poll_thread = nil
      @retry_timer = nil
      @report_timer = nil
      @report_busy = false
      @report_again = false
      @report_queued = false
      @sample_timer = nil
      @sample_queued = false
      @samples_sent = 0
      @policy_timer = nil
      @reactor.submit do
        next if @closed

        start_attempt
        @report_timer = @reactor.after(0) { request_report } if @reports
        arm_policy_timer
      end
    end

    def inspect
      "#<#{self.class.name} switch=#{@switch} worker_id=#{@worker_id} open=#{@open} " \
        "version=#{@version} #{@http.inspect}>"
    end
    alias to_s inspect

    # Whether the switch lets work through now. Reads one variable: call it before every job.
    def open?
      @open
    end

    # Waits until the switch lets work through (or `timeout` seconds, or the gate closes).
    # True when open.
    def wait_open(timeout: nil)
      deadline = timeout && now + timeout
      @mutex.synchronize do
        until @open || @closed
          left = deadline && deadline - now
          return false if left && left <= 0

          @changed.wait(@mutex, left)
        end
        @open
      end
    end

    # Runs the block as one job once the gate admits it: waits while the switch is closed,
    # all slots are busy, or the ramp's duty cycle rests the free slots. Returns the block's
    # value. With `timeout`, raises BigRedButton::NotAdmitted when not admitted in time.
    def job(timeout: nil)
      permit = acquire(timeout: timeout)
      raise NotAdmitted, "not admitted within #{timeout}s" unless permit

      begin
        yield
      ensure
        permit.release
      end
    end

    # Runs the block as one job if the gate admits it now; true if it ran, false if not.
    def try_job
      permit = try_acquire
      return false unless permit

      begin
        yield
      ensure
        permit.release
      end
      true
    end

    # Takes a job slot without waiting: a Permit, or nil when closed, all slots are busy or
    # resting. Release it (Permit#release) when the job is done.
    def try_acquire
      @mutex.synchronize { take_slot(now) }
    end

    # Waits for a job slot (see #job); nil after `timeout` seconds. Raises GateClosed if the
    # gate is closed meanwhile.
    def acquire(timeout: nil)
      deadline = timeout && now + timeout
      @mutex.synchronize do
        loop do
          raise GateClosed, "the gate on #{@switch} is closed" if @closed

          t = now
          permit = take_slot(t)
          return permit if permit

          left = deadline && deadline - t
          return nil if left && left <= 0

          wait = left
          if @open
            # Open but no slot yet: until the next slot has rested (or a permit is released).
            rest = (@slots.min - t).clamp(0.001, 0.25)
            wait = wait ? [wait, rest].min : rest
          end
          @changed.wait(@mutex, wait)
        end
      end
    end

    # The fraction of normal work admitted now: 0 when closed, the ramp's fraction while
    # ramping, else 1.
    def admitted_fraction
      return 0.0 unless @open

      ramp = @ramp
      ramp && @known == :running ? ramp.fraction_at(Time.now) : 1.0
    end

    # The switch version this gate acts on (0 before first contact).
    def version
      @version
    end

    def connected?
      @connected
    end

    # Whether the control plane was heard from at least once.
    def ready?
      !@known.nil?
    end

    # Waits until the gate has heard from the control plane once (or the timeout).
    def ready(timeout:)
      wait_until(timeout) { !@known.nil? }
    end

    # Waits until the gate acts on `version` or a later one (or the timeout).
    def wait_version(version, timeout:)
      wait_until(timeout) { !@known.nil? && @version >= version }
    end

    # How old the gate's knowledge may be, in seconds: 0 while the event stream is connected
    # (every change is pushed at once), else the time since the control plane was last heard
    # from; nil if it never was.
    def staleness
      return 0.0 if @connected

      last = @last_contact
      last && [now - last, 0.0].max
    end

    # What the gate reports: :running, :draining (closed, jobs still in flight) or :paused.
    def status
      if @open then :running
      elsif @in_flight.positive? then :draining
      else :paused
      end
    end

    def in_flight
      @in_flight
    end

    def processed
      @processed
    end

    # How many times the event stream (or long-poll) has connected, and when (Time).
    def connects
      @connects
    end

    def connect_times
      @mutex.synchronize { @connect_times.dup }
    end

    # [version, Unix microseconds] of the last version applied: from that instant #open?
    # answered by it. nil before the first.
    def last_change
      @last_change
    end

    # The latest problem with the control plane, as logged (nil once connected again).
    def last_error
      @last_error
    end

    def closed?
      @closed
    end

    # Stops following the switch and closes the gate's connections. Waiters in #wait_open
    # return false, waiters in #job / #acquire raise GateClosed.
    def close
      @mutex.synchronize do
        return if @closed

        @closed = true
        @changed.broadcast
      end
      done = Queue.new
      @reactor.submit do
        [@retry_timer, @report_timer, @sample_timer, @policy_timer].each { |t| t&.cancel }
        @conn&.close
        @conn = nil
        done << true
      end
      lp = @long_poll_thread
      if lp && lp != Thread.current
        lp.kill
        lp.join(2)
      end
      # The reactor lets go of the stream (bounded: a wedged reactor must not hang shutdown).
      Thread.new { done.pop }.join(2) unless @reactor.on_thread?
      nil
    end

    # A job slot taken from a gate; #release ends the job.
    class Permit
      def initialize(gate, slot, started)
        @gate = gate
        @slot = slot
        @started = started
        @done = false
      end

      # The job is done: counted, and the slot rests per the ramp.
      def release
        return if @done

        @done = true
        @gate.__send__(:release_slot, @slot, @started, true)
      end

      # Gives the slot back without counting a job (the worker found nothing to do).
      def abandon
        return if @done

        @done = true
        @gate.__send__(:release_slot, @slot, @started, false)
      end
    end

    private

    def now
      BigRedButton.monotonic
    end

    def wall_us
      Process.clock_gettime(Process::CLOCK_REALTIME, :microsecond)
    end

    def symbol(v, allowed, what)
      s = v.to_s.to_sym
      return s if allowed.include?(s)

      raise ConfigError, "#{what} must be one of #{allowed.join(', ')} (got #{v.inspect})"
    end

    def seconds(v, what, zero: false)
      unless v.is_a?(Numeric) && v.finite? && (zero ? v >= 0 : v.positive?)
        raise ConfigError, "#{what} must be a #{zero ? 'non-negative' : 'positive'} number of seconds"
      end

      v.to_f
    end

    def blank(v)
      v.nil? || v.to_s.empty? ? nil : v.to_s
    end

    def wait_until(timeout)
      deadline = now + timeout
      @mutex.synchronize do
        until yield
          left = deadline - now
          return false if left <= 0 || @closed

          @changed.wait(@mutex, left)
        end
        true
      end
    end

    # Under @mutex.
    def take_slot(t)
      return nil unless @open && !@closed

      slot = @slots.index { |free_at| free_at <= t }
      return nil unless slot

      @slots[slot] = BUSY # until released; then it rests
      @in_flight += 1
      Permit.new(self, slot, t)
    end

    def release_slot(slot, started, counted)
      @mutex.synchronize do
        t = now
        if counted
          f = admitted_fraction
          # Duty cycle: at fraction f the slot rests took·(1−f)/f, so it works f of the time.
          rest = f.positive? && f < 1 ? (t - started) * (1 - f) / f : 0.0
          @slots[slot] = t + rest
          @processed += 1
          arm_sample_timer
        else
          @slots[slot] = t
        end
        @in_flight -= 1
        signal_report if @in_flight.zero? && !@open # drained: say so at once
        @changed.broadcast
      end
    end

    # Asks for a report at once (a change, or drained). Any thread; coalesced.
    def signal_report
      return unless @reports && !@report_queued

      @report_queued = true
      @reactor.submit do
        @report_queued = false
        request_report
      end
    end

    def recompute
      beyond = !@connected && @lost_at && now - @lost_at >= @grace
      open = case @policy
             when :open then beyond ? true : @known == :running
             when :closed then beyond ? false : @known == :running
             else @known == :running
             end
      return false if open == @open

      @open = open
      if beyond && @policy != :keep_last_known
        @log.warn("brb: switch=#{@switch} control plane unreachable for #{@grace}s; " \
                  "failing #{open ? 'open' : 'closed'} (policy #{@policy})")
      end
      @changed.broadcast
      signal_report
      true
    end

    def contact
      @last_contact = now
    end

    # Applies a switch the control plane sent. `current`: it follows a `resync` event, so it
    # is the current state even if its version is below ours.
    def apply(sw, current: false)
      @mutex.synchronize do
        return if @closed
        # An older event (a lagging replica): ignore.
        return if !current && @known && sw[:version] < @version

        @ramp = sw[:ramp]
        @last_change = [sw[:version], wall_us] if sw[:version] != @version || @known.nil?
        @version = sw[:version]
        prev = @known
        @known = sw[:state]
        contact
        recompute
        if prev.nil?
          @log.debug { "brb: switch=#{@switch} state=#{@known} version=#{@version} learned" }
        elsif prev != @known
          # A block: the line is not even built below info (a process may hold many gates).
          @log.info do
            "brb: switch=#{@switch} state=#{@known} version=#{@version} " \
              "changed_by=#{Http.sanitize(sw[:changed_by])} source=#{Http.sanitize(sw[:source])} observed a change"
          end
        end
        # Waiters also learn of a new version or ramp with the same decision.
        @changed.broadcast
        signal_report
      end
    end

    def set_connected(yes)
      @mutex.synchronize do
        was = @connected
        @connected = yes
        if yes
          @lost_at = nil
          @last_error = nil
          contact
          unless was
            @connects += 1
            @connect_times << Time.now
            @connect_times.shift if @connect_times.size > 1000
          end
        elsif was || @lost_at.nil?
          @lost_at = now
        end
        recompute
      end
      arm_policy_timer unless yes
    end

    # Logs a problem: a warning when it is new, quieter when it repeats, so a long outage is
    # one line plus debug, not a line per attempt.
    def problem(msg, level: :warn)
      repeat = @last_error == msg
      @last_error = msg
      @log.public_send(repeat ? :debug : level, "brb: switch=#{@switch} #{msg}")
    end

    # ---- the event stream (on the reactor thread) ----

    def start_attempt
      @retry_timer = nil
      return if @closed

      use_long_poll = case @transport
                      when :long_poll then true
                      when :sse then false
                      else !@long_poll_until.nil? && now < @long_poll_until
                      end
      if use_long_poll
        @long_poll_thread = Thread.new do
          out = begin
            long_poll
          rescue StandardError => e
            problem("long-poll failed: #{e.class}: #{Http.sanitize(e.message)}", level: :error)
            Outcome.new(heard: false)
          end
          @reactor.submit { attempt_done(out, long_poll: true) }
        end
        @long_poll_thread.name = "brb-long-poll-#{@switch}"
        @long_poll_thread.report_on_exception = false
      else
        sse_try(0, [])
      end
    end

    # One attempt is over: back off (full jitter), maybe fall back to long-poll, go again.
    def attempt_done(out, long_poll: false)
      @conn = nil
      @long_poll_thread = nil if long_poll
      return if @closed

      set_connected(false)
      if out.heard
        @sse_failures = 0 unless long_poll
      elsif out.refused && !long_poll
        @sse_failures += 1
      end
      if @transport == :auto && @long_poll_until.nil? && @sse_failures >= SSE_FAILURES_BEFORE_FALLBACK
        @log.warn("brb: switch=#{@switch} the event stream keeps failing; falling back to " \
                  "long-poll for #{LONG_POLL_SPELL}s")
        @long_poll_until = now + LONG_POLL_SPELL
        @sse_failures = 0
      elsif @long_poll_until && now >= @long_poll_until
        @long_poll_until = nil
      end
      @attempt = out.heard ? 0 : @attempt + 1
      delay = BigRedButton.backoff(@backoff_base, @backoff_cap, [@attempt - FLAT_ATTEMPTS, 0].max)
      delay = [delay, out.wait].max if out.wait
      @retry_timer = @reactor.after(delay) { start_attempt }
    end

    # Opens the event stream at the current replica; on no answer, the next one.
    def sse_try(tried, errors)
      return if @closed

      headers = @http.headers("Accept" => "text/event-stream")
      headers["Last-Event-ID"] = @version.to_s if @known
      @stream = { base: @http.bases[@base_index], parser: SseParser.new, heard: false, after_resync: false }
      handler = StreamHandler.new(self, tried, errors)
      conn = StreamConnection.new(@reactor, @http, @base_index, @http.path_for(@base_index, "#{@path}/events"),
                                  headers, idle_timeout: @idle_timeout,
                                  answer_timeout: @answer_timeout, handler: handler)
      @conn = conn
      begin
        conn.start
      rescue StandardError => e
        # Out of file descriptors, say: this attempt failed; the next one is scheduled as usual.
        conn.close
        stream_failed(tried, errors, Http.describe(@stream[:base], e)) if @conn.equal?(conn)
      end
    end

    # Routes a StreamConnection's news to the gate (reactor thread).
    class StreamHandler
      def initialize(gate, tried, errors)
        @gate = gate
        @tried = tried
        @errors = errors
      end

      def failed(message)
        @gate.__send__(:stream_failed, @tried, @errors, message)
      end

      def refused(err)
        @gate.__send__(:stream_refused, err)
      end

      def not_stream(message)
        @gate.__send__(:stream_not_stream, message)
      end

      def ended(message, idle:)
        @gate.__send__(:stream_ended, message, idle)
      end

      def data(bytes)
        @gate.__send__(:stream_data, bytes)
      end
    end

    def stream_failed(tried, errors, message)
      return if @closed

      errors << message
      @base_index = (@base_index + 1) % @http.bases.size
      if tried + 1 < @http.bases.size
        @log.debug("brb: switch=#{@switch} #{message}; trying the next replica")
        sse_try(tried + 1, errors)
      else
        problem("cannot reach the control plane: #{errors.join('; ')}")
        attempt_done(Outcome.new(heard: false, refused: false))
      end
    end

    def stream_refused(err)
      attempt_done(refusal(err, what: "event stream"))
    end

    def stream_not_stream(message)
      problem(message)
      attempt_done(Outcome.new(heard: false, refused: true))
    end

    def stream_ended(message, idle)
      heard = @stream[:heard]
      if idle
        problem("#{message}; reconnecting")
      elsif heard
        @log.info("brb: switch=#{@switch} #{message}; reconnecting")
      else
        problem(message)
      end
      # A stream that answered and then stayed mute is what a buffering proxy does.
      attempt_done(Outcome.new(heard: heard, refused: !heard))
    end

    def stream_data(bytes)
      st = @stream
      unless st[:heard]
        st[:heard] = true
        set_connected(true)
        @log.debug("brb: switch=#{@switch} event stream connected to #{st[:base]}")
      end
      begin
        events = @reactor.memo.feed(st[:parser], bytes)
      rescue SseParser::LineTooLong => e
        problem("#{st[:base]}: #{e.message}; reconnecting")
        end_stream
        return
      end
      @mutex.synchronize { contact } if events.empty? # a keep-alive: the line is alive
      events.each do |ev|
        case ev.event
        when "switch"
          sw = parse_switch(ev.data, st[:base])
          if sw
            apply(sw, current: st[:after_resync])
            st[:after_resync] = false
          end
        when "resync"
          st[:after_resync] = parse_resync(ev.data, st[:base])
          @mutex.synchronize { contact }
        when "deleted"
          @log.error("brb: switch=#{@switch} the switch was deleted; keeping the last known state")
          end_stream
          return
        else
          problem("#{st[:base]} sent an event of unknown type #{Http.sanitize(ev.event)[0, 40].inspect}; ignored",
                  level: :info)
          @mutex.synchronize { contact }
        end
      end
    end

    # Ends the current stream on our side and counts it as heard (it was).
    def end_stream
      c = @conn
      return unless c

      c.close
      attempt_done(Outcome.new(heard: @stream[:heard]))
    end

    # A `switch` event's data, checked; nil (with a log line) when it is not one.
    # A String comes from the event stream (reactor thread): the gates of the process share its
    # decoding (the reactor's memo); a Hash from long-poll.
    def parse_switch(data, base)
      sw = data.is_a?(String) ? @reactor.memo.decoded(data) { decode_switch(data) } : decode_switch(data)
      raise ProtocolError, "for switch #{Http.sanitize(sw[:name])[0, 64].inspect}" unless sw[:name] == @switch

      sw
    rescue JSON::ParserError, ProtocolError => e
      problem("#{base} sent an unreadable switch event (#{Http.sanitize(e.message)[0, 160]}); ignored, " \
              "state unchanged")
      nil
    end

    # A switch's JSON (or the Hash long-poll read), checked; frozen, as gates may share it.
    def decode_switch(data)
      h = data.is_a?(Hash) ? data : JSON.parse(data, max_nesting: 8)
      raise ProtocolError, "not an object" unless h.is_a?(Hash)

      state = { "running" => :running, "paused" => :paused }[h["state"]]
      raise ProtocolError, "state #{h['state'].inspect[0, 40]}" unless state

      v = h["version"]
      raise ProtocolError, "version #{v.inspect[0, 40]}" unless v.is_a?(Integer) && v >= 0

      ramp = h["ramp"].nil? ? nil : Ramp.from_json(h["ramp"])
      { name: h["name"], state: state, version: v, ramp: ramp, changed_by: h["changed_by"],
        source: h["source"] }.freeze
    end

    def parse_resync(data, base)
      h = JSON.parse(data, max_nesting: 4)
      unless h.is_a?(Hash) && h["after"].is_a?(Integer) && h["current"].is_a?(Integer)
        raise ProtocolError, "not a resync"
      end

      @log.info("brb: switch=#{@switch} resync: the stream skipped from version #{h['after']} to " \
                "#{h['current']} (#{Http.sanitize(h['reason'])[0, 40]}); the state that follows is current")
      true
    rescue JSON::ParserError, ProtocolError
      problem("#{base} sent an unreadable resync event; ignored")
      false
    end

    # What an error answer means for the next attempt: how long to wait, and whether it counts
    # against SSE (a proxy refusing streams) rather than against us.
    def refusal(err, what:)
      if err.auth?
        problem("the control plane refused the token for #{what} (#{err.message}); check " \
                "BRB_TOKEN / BRB_TOKEN_FILE and the token's role and scope; asking again in " \
                "#{@auth_retry.round}s", level: :error)
        return Outcome.new(heard: false, refused: false, wait: @auth_retry + rand * @backoff_base)
      end
      if err.status == 429
        secs = err.retry_after || @backoff_cap
        problem("#{what}: rate limited (#{err.message}); retrying after #{secs.round(1)}s")
        return Outcome.new(heard: false, refused: false, wait: secs + rand * @backoff_base)
      end
      if err.status == 404
        problem("#{what}: #{err.message}; retrying with backoff", level: :error)
        return Outcome.new(heard: false, refused: false, wait: @backoff_cap * (0.5 + rand * 0.5))
      end
      problem("#{what} refused: #{err.message}")
      Outcome.new(heard: false, refused: true)
    end

    # Long-polls until an error (on its own thread). Heard: the control plane answered.
    def long_poll
      session = Http::Session.new(@http, @base_index)
      heard = false
      until @closed
        path = @known ? "#{@path}?after_version=#{@version}&wait=#{LONG_POLL_WAIT}" : @path
        begin
          h = session.request(:get, path, read_timeout: LONG_POLL_WAIT + 10)
        rescue ApiError => e
          out = refusal(e, what: "long-poll")
          out.heard = heard
          return out
        rescue Error => e
          problem("long-poll: #{e.message}")
          return Outcome.new(heard: heard, refused: false)
        ensure
          @base_index = session.index
        end
        sw = parse_switch(h, @http.bases[session.index])
        return Outcome.new(heard: heard, refused: true) unless sw

        unless heard
          heard = true
          set_connected(true)
        end
        apply(sw)
      end
      Outcome.new(heard: heard)
    ensure
      session&.close
    end

    # ---- reports, samples, the failure policy's clock (reactor thread; I/O on the pool) ----

    # Sends a report now, or right after the one in flight.
    def request_report
      return if @closed || !@reports

      if @report_busy
        @report_again = true
        return
      end
      @report_timer&.cancel
      @report_timer = nil
      if @known.nil?
        # Nothing observed yet, nothing to acknowledge: look again at the next interval.
        @report_timer = @reactor.after(@report_interval) { request_report }
        return
      end
      @report_busy = true
      body = report_body
      Pool.instance.post do
        @http.with_session { |s| send_report(s, body) }
        @reactor.submit do
          @report_busy = false
          next if @closed

          if @report_again
            @report_again = false
            request_report
          else
            @report_timer = @reactor.after(@report_interval) { request_report }
          end
        end
      end
    end

    def report_body
      @mutex.synchronize do
        { worker_id: @worker_id, switch: @switch, observed_version: @version,
          status: status.to_s, in_flight: @in_flight, processed_total: @processed }
      end
    end

    def send_report(session, body)
      session.request(:post, "/workers/report", body: body)
    rescue ApiError => e
      @log.public_send(e.auth? ? :error : :warn,
                       "brb: switch=#{@switch} the control plane refused the report: #{e.message}")
    rescue Error => e
      @log.debug("brb: switch=#{@switch} report failed: #{e.message}")
    end

    # A job finished: within a second, the jobs finished since the last sample go out as one
    # counter sample. No timer runs while no job finishes.
    def arm_sample_timer
      return unless @samples && !@sample_queued && !@closed

      @sample_queued = true
      @reactor.submit do
        next if @closed || @sample_timer

        @sample_timer = @reactor.after(1) { send_samples }
      end
    end

    def send_samples
      @sample_queued = false
      @sample_timer = nil
      n = @processed - @samples_sent
      return if n <= 0 || @closed

      @samples_sent += n
      Pool.instance.post do
        @http.with_session do |s|
          s.request(:post, "/metrics",
                    body: { samples: [{ name: "sdk_jobs_processed", value: n, kind: "counter" }] })
        rescue Error => e
          @log.debug("brb: switch=#{@switch} sending samples failed: #{e.message}")
        end
      end
    end

    # While disconnected, Open/Closed apply once the grace has run out: one timer at that
    # instant (nothing ticks while connected, or under keep_last_known).
    def arm_policy_timer
      return if @policy == :keep_last_known || @closed

      unless @reactor.on_thread?
        @reactor.submit { arm_policy_timer }
        return
      end
      lost = @lost_at
      return if lost.nil? || @connected

      @policy_timer&.cancel
      @policy_timer = @reactor.at(lost + @grace) { @mutex.synchronize { recompute } }
    end
  end
end
