# frozen_string_literal: true

module BigRedButton
  # One thread per process that holds every gate's event stream and timers: sockets watched
  # with IO.select, timers in a heap. A Ruby thread blocked in a read costs about 35 KiB of
  # resident memory; a thousand gates in one process would spend 35 MB on stacks alone, so no
  # gate has a thread of its own (long-poll, a fallback, is the exception).
  #
  # Everything registered here runs on the reactor thread and must not block. Other threads
  # hand work in with #submit.
  class Reactor
    LOCK = Mutex.new

    # The process's reactor (a new one after a fork: threads do not survive it).
    def self.instance
      LOCK.synchronize do
        @instance = new if @instance.nil? || !@instance.alive?
        @instance
      end
    end

    class Timer
      attr_reader :at

      def initialize(at, block)
        @at = at
        @block = block
        @cancelled = false
      end

      def cancel
        @cancelled = true
      end

      def cancelled?
        @cancelled
      end

      def fire
        @block.call unless @cancelled
      end
    end

    # Decoding shared by the streams of this reactor (SseParser::Memo; reactor thread only).
    attr_reader :memo
    # The buffer every stream reads into (reactor thread only; readers copy what they keep):
    # a fresh 16 KiB string per read was a malloc and a shrink per delivery.
    attr_reader :read_buffer

    def initialize
      @pid = Process.pid
      @memo = SseParser::Memo.new
      @read_buffer = String.new(capacity: StreamConnection::READ_SIZE, encoding: Encoding::BINARY)
      @queue = Queue.new
      @wake_r, @wake_w = IO.pipe
      @heap = []
      @seq = 0
      @handlers = {} # io => handler (#want -> :read/:write, #on_ready)
      @dirty = true
      @log = BigRedButton.default_logger
      @thread = Thread.new { run }
      @thread.name = "brb-reactor"
      @thread.report_on_exception = false
    end

    def alive?
      @pid == Process.pid && @thread.alive?
    end

    def on_thread?
      Thread.current == @thread
    end

    # Runs the block on the reactor thread, soon.
    def submit(&block)
      @queue << block
      @wake_w.write_nonblock(".", exception: false)
      nil
    rescue IOError
      nil
    end

    # A Timer firing the block on the reactor thread at monotonic time `at`. Reactor thread only.
    def at(time, &block)
      t = Timer.new(time, block)
      @seq += 1
      push([time, @seq, t])
      t
    end

    def after(secs, &block)
      at(BigRedButton.monotonic + secs, &block)
    end

    # Watches an IO for the handler's #want (:read or :write). Reactor thread only.
    def watch(io, handler)
      @handlers[io] = handler
      @dirty = true
    end

    def unwatch(io)
      @dirty = true if @handlers.delete(io)
    end

    # A handler's #want changed: the select sets are rebuilt before the next wait.
    def interest_changed
      @dirty = true
    end

    private

    def run
      loop do
        run_queue
        fire_timers
        timeout = @heap.empty? ? nil : [@heap[0][0] - BigRedButton.monotonic, 0].max
        if @dirty
          # Rebuilt only when interest changed: a thousand streams make these arrays long.
          @dirty = false
          @readers = [@wake_r]
          @writers = []
          @handlers.each { |io, h| (h.want == :write ? @writers : @readers) << io }
        end
        ready = begin
          IO.select(@readers, @writers, nil, timeout)
        rescue IOError, SystemCallError
          # A handler closed its IO without unwatching it: drop it.
          @handlers.delete_if { |io, _| io.closed? }
          @dirty = true
          next
        end
        next unless ready

        ready[0].each do |io|
          if io == @wake_r
            @wake_r.read_nonblock(4096, exception: false)
          else
            dispatch(io)
          end
        end
        ready[1].each { |io| dispatch(io) }
      end
    rescue Exception => e # rubocop:disable Lint/RescueException
      @log.error("brb: the reactor thread died: #{e.class}: #{Http.sanitize(e.message)}") unless e.is_a?(SignalException)
      raise
    end

    def dispatch(io)
      h = @handlers[io]
      safely { h.on_ready } if h
    end

    # Only what was queued before: a task that queues another (a busy stream reading on)
    # waits for the next turn, so timers and other streams get theirs.
    def run_queue
      @queue.size.times do
        blk = begin
          @queue.pop(true)
        rescue ThreadError
          break
        end
        safely { blk.call }
      end
    end

    def fire_timers
      now = BigRedButton.monotonic
      while (top = @heap[0]) && top[0] <= now
        pop
        safely { top[2].fire }
      end
    end

    # Nothing one gate meets may stop the others.
    def safely
      yield
    rescue StandardError => e
      @log.error("brb: reactor task failed: #{e.class}: #{Http.sanitize(e.message)} " \
                 "(#{e.backtrace&.first})")
    end

    # A binary min-heap on [at, seq].
    def push(item)
      h = @heap
      h << item
      i = h.size - 1
      while i.positive?
        parent = (i - 1) / 2
        break if (h[parent] <=> h[i]) <= 0

        h[parent], h[i] = h[i], h[parent]
        i = parent
      end
    end

    def pop
      h = @heap
      last = h.pop
      return if h.empty?

      h[0] = last
      i = 0
      n = h.size
      loop do
        l = 2 * i + 1
        r = l + 1
        m = i
        m = l if l < n && (h[l] <=> h[m]).negative?
        m = r if r < n && (h[r] <=> h[m]).negative?
        break if m == i

        h[m], h[i] = h[i], h[m]
        i = m
      end
    end
  end

  # A few threads for blocking work the reactor must not do itself: reports, samples, name
  # lookups. Shared by every gate of the process.
  class Pool
    SIZE = 4
    LOCK = Mutex.new

    def self.instance
      LOCK.synchronize do
        @instance = new if @instance.nil? || @instance.pid != Process.pid
        @instance
      end
    end

    attr_reader :pid

    # Decoding shared by the streams of this reactor (SseParser::Memo; reactor thread only).
    attr_reader :memo
    # The buffer every stream reads into (reactor thread only; readers copy what they keep):
    # a fresh 16 KiB string per read was a malloc and a shrink per delivery.
    attr_reader :read_buffer

    def initialize
      @pid = Process.pid
      @memo = SseParser::Memo.new
      @read_buffer = String.new(capacity: StreamConnection::READ_SIZE, encoding: Encoding::BINARY)
      @queue = Queue.new
      @threads = []
      @idle = 0
      @lock = Mutex.new
    end

    def post(&block)
      @lock.synchronize do
        @threads.select!(&:alive?)
        spawn if @idle.zero? && @threads.size < SIZE
      end
      @queue << block
      nil
    end

    private

    def spawn
      t = Thread.new do
        loop do
          @lock.synchronize { @idle += 1 }
          blk = @queue.pop
          @lock.synchronize { @idle -= 1 }
          begin
            blk.call
          rescue StandardError => e
            BigRedButton.default_logger.error("brb: background task failed: #{e.class}: " \
                                              "#{Http.sanitize(e.message)}")
          end
        end
      end
      t.name = "brb-pool"
      t.report_on_exception = false
      @threads << t
    end
  end
end
