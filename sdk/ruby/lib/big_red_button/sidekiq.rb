# frozen_string_literal: true

require "sidekiq"
require "sidekiq/fetch"
require_relative "../big_red_button"

module BigRedButton
  # The Big Red Button in a Sidekiq server, with one line of its configuration:
  #
  #   require "big_red_button/sidekiq"
  #   Sidekiq.configure_server { |config| BigRedButton::Sidekiq.enable(config) }
  #
  # It installs a fetch strategy (Sidekiq::Fetch below) that takes every job through a Gate:
  # while the switch is paused the processor threads stop fetching, jobs already running
  # finish (the gate reports `draining` with their count, then `paused`), and after a release
  # with a ramp the gate's duty cycle limits how many jobs start.
  #
  # Sidekiq 6 (Debian's ruby-sidekiq 6.4) with its basic fetch: Sidekiq 7 replaced the fetch
  # API (capsules), and Sidekiq Pro's reliable fetch has a queue pause of its own.
  module Sidekiq
    module_function

    # Installs the fetch strategy in the Sidekiq server's options. Keywords go to
    # BigRedButton::Gate.new (switch:, urls:, token_file:, policy:...); the gate's job slots
    # are Sidekiq's concurrency, its worker id `sidekiq:` and the process's identity (as the
    # Web UI shows it), its logger Sidekiq's. The gate is made when the server starts (after
    # any fork), so a gate setting it refuses stops the server at boot, before any job runs.
    def enable(config = ::Sidekiq, **gate_options)
      unless ::Sidekiq::VERSION.start_with?("6.")
        raise ConfigError, "BigRedButton::Sidekiq supports Sidekiq 6 (its fetch strategy API); " \
                           "this is Sidekiq #{::Sidekiq::VERSION}"
      end
      opts = config.options
      current = opts[:fetch]
      if current && !current.is_a?(Fetch)
        raise ConfigError, "another fetch strategy (#{current.class}) is already configured: " \
                           "BigRedButton::Sidekiq replaces Sidekiq's basic fetch only"
      end
      return current if current

      fetch = Fetch.new(opts, **gate_options)
      opts[:fetch] = fetch
      # First in the chain: nothing of the app's runs for a job that goes back.
      config.server_middleware { |chain| chain.prepend(LastLook, fetch) }
      config.on(:startup) { fetch.start }
      config.on(:shutdown) { fetch.stop }
      fetch
    end

    # A Sidekiq 6 fetch strategy (`retrieve_work`, `bulk_requeue`) that gates Sidekiq's basic
    # fetch. Each processor thread, for each job:
    #
    # 1. takes a job slot from the gate, waiting while the switch is paused or the ramp rests
    #    every slot (in slices of TIMEOUT, so the thread sees Sidekiq's shutdown as soon as a
    #    blocked BRPOP would);
    # 2. pops a job without blocking, in Sidekiq's queue order; the slot is held while the job
    #    runs and given back when Sidekiq acknowledges it (counted; the ramp rests the slot);
    # 3. when nothing is queued, gives the slot back and waits in BRPOP holding none (an idle
    #    worker reports nothing in flight); a job that arrives then is run if the gate admits
    #    it at once, else pushed back to the head of its queue (as Sidekiq requeues) and the
    #    thread waits for a slot.
    #
    # So a job is either run under a slot taken while the switch was open, or is back in Redis:
    # the pause loses none and runs none twice.
    class Fetch
      # Sidekiq's own fetch timeout: how long a processor thread may block before looking at its
      # shutdown flag.
      TIMEOUT = ::Sidekiq::BasicFetch::TIMEOUT

      # A job taken under a gate slot: what the processor holds (Sidekiq's UnitOfWork API).
      class Work
        attr_reader :queue, :job

        def initialize(fetch, queue, job, permit)
          @fetch = fetch
          @queue = queue
          @job = job
          @permit = permit
          @put_back = false
        end

        def queue_name
          queue.delete_prefix("queue:")
        end

        # Short, and without the fetch (whose gate settings hold the token).
        def inspect
          "#<#{self.class.name} queue=#{queue_name} #{job.to_s[0, 120]}>"
        end
        alias to_s inspect

        # Sidekiq ran the job (done, or a retry scheduled): the slot is freed, counted. A job
        # LastLook put back was not run: its slot is freed uncounted.
        def acknowledge
          @fetch.__send__(:finished, self, ran: !@put_back)
        end

        # The switch closed between the fetch and the job's start: back to the head of its queue.
        def put_back
          ::Sidekiq.redis { |conn| conn.rpush(queue, job) }
          @put_back = true
        end

        # Sidekiq is stopping and gives the job back before running it: to the head of its queue.
        def requeue
          ::Sidekiq.redis { |conn| conn.rpush(queue, job) }
        ensure
          @fetch.__send__(:finished, self, ran: false)
        end

        def permit_release(ran)
          ran ? @permit.release : @permit.abandon
        end
      end

      attr_reader :gate

      def initialize(options, **gate_options)
        raise ArgumentError, "missing queue list" unless options[:queues]

        @options = options
        @gate_options = gate_options
        @lock = Mutex.new
        @gate = nil
        @basic = nil
        @held = {} # processor thread => the Work it runs
      end

      # Never the gate's settings: they may hold the token.
      def inspect
        "#<#{self.class.name} queues=#{Array(@options[:queues]).uniq.join(',')} gate=#{@gate.inspect}>"
      end
      alias to_s inspect

      # Makes the gate (once; on Sidekiq's :startup, or at the first fetch).
      def start
        @lock.synchronize do
          return @gate if @gate

          @basic = ::Sidekiq::BasicFetch.new(@options)
          opts = { max_concurrency: Integer(@options[:concurrency] || 10),
                   logger: ::Sidekiq.logger }
          identity = @options[:identity].to_s
          opts[:worker_id] = "sidekiq:#{identity}"[0, 128] unless identity.empty?
          @gate = BigRedButton::Gate.new(**opts.merge(@gate_options))
        end
      end

      # Stops following the switch (Sidekiq's :shutdown): threads waiting for a slot return at
      # once; jobs still running finish as Sidekiq lets them.
      def stop
        g = @lock.synchronize { @gate }
        g&.close
      end

      def retrieve_work
        gate = start
        settle
        permit = gate.acquire(timeout: TIMEOUT)
        return nil unless permit

        work = begin
          pop_now(permit)
        rescue StandardError, ::Sidekiq::Shutdown
          permit.abandon
          raise
        end
        return work if work

        # Nothing queued: wait for a job holding no slot, so an idle worker reports 0 in flight.
        permit.abandon
        queue, job = ::Sidekiq.redis { |conn| conn.brpop(*queues, timeout: TIMEOUT) }
        return nil unless job

        admit(queue, job, gate.try_acquire)
      rescue GateClosed
        nil
      end

      # Whether the job this processor thread fetched may start: the gate is still open. A
      # job fetched just before a pause would otherwise start after the worker reported it had
      # seen the pause (`draining`); LastLook puts it back instead. Jobs this fetch did not
      # hand out (none in a server using it) start.
      def may_start?
        work = @lock.synchronize { @held[Thread.current] }
        return true unless work

        return true if @gate.open?

        work.put_back
        false
      end

      # Sidekiq's hard shutdown: jobs still running past its timeout go back to their queues.
      def bulk_requeue(inprogress, options)
        (@basic || ::Sidekiq::BasicFetch.new(@options)).bulk_requeue(inprogress, options)
      end

      private

      # The first job queued, in the order Sidekiq's basic fetch would take it (strict, or
      # shuffled by weight), without blocking; run under `permit`.
      def pop_now(permit)
        queue, job = ::Sidekiq.redis do |conn|
          found = nil
          queues.each do |q|
            j = conn.rpop(q)
            if j
              found = [q, j]
              break
            end
          end
          found
        end
        return nil unless job

        # A pause observed while popping: the job goes back rather than start after it.
        admit(queue, job, @gate.open? ? permit : nil, abandon: permit)
      end

      # Runs `job` under `permit`, or, without one, pushes it back to the head of its queue.
      def admit(queue, job, permit, abandon: nil)
        unless permit
          abandon&.abandon
          ::Sidekiq.redis { |conn| conn.rpush(queue, job) }
          return nil
        end

        work = Work.new(self, queue, job, permit)
        @lock.synchronize { @held[Thread.current] = work }
        work
      end

      # The queues in the order Sidekiq's basic fetch would try them (strict, or shuffled by
      # weight), without its trailing timeout.
      def queues
        @basic.queues_cmd.reject { |q| q.is_a?(Numeric) }
      end

      def finished(work, ran:)
        @lock.synchronize { @held.delete_if { |_, w| w.equal?(work) } }
        work.permit_release(ran)
      end

      # A processor thread that died in a job (Sidekiq replaces it) never acknowledged it: its
      # slot is freed, counted, so the gate does not report it in flight for ever.
      def settle
        gone = @lock.synchronize do
          dead = @held.select { |t, _| !t.alive? || t.equal?(Thread.current) }
          dead.each_key { |t| @held.delete(t) }
          dead.values
        end
        gone.each { |w| w.permit_release(true) }
      end
    end

    # The outermost server middleware: a job runs only if the gate is still open right before
    # it starts (see Fetch#may_start?); otherwise it is back in its queue and Sidekiq
    # acknowledges nothing but the hand-over.
    class LastLook
      def initialize(fetch)
        @fetch = fetch
      end

      def call(_worker, _job, _queue)
        yield if @fetch.may_start?
      end
    end
  end
end
