# frozen_string_literal: true

module BigRedButton
  # An incremental Server-Sent Events parser (the WHATWG event-stream format), with no I/O.
  #
  # Bytes arrive in arbitrary chunks (a frame may be split anywhere, even inside a UTF-8
  # sequence or between "\r" and "\n"); #feed buffers what is incomplete and returns every
  # event completed so far. An event is only dispatched at its blank line, so a stream cut in
  # the middle of an event never yields half of it. Lines longer than MAX_LINE raise
  # LineTooLong rather than let a server make the client buffer without bound.
  class SseParser
    MAX_LINE = 1 << 20

    Event = Struct.new(:event, :id, :data)

    class LineTooLong < ProtocolError
      def initialize
        super("event-stream line longer than #{MAX_LINE} bytes")
      end
    end

    attr_reader :retry_ms, :last_id

    def initialize
      @buf = +"".b
      @after_cr = false
      reset_event
      @last_id = nil
      @retry_ms = nil
    end

    # Nothing buffered, no event half-read: the next byte starts a line of a new event.
    def idle?
      @buf.empty? && !@after_cr && @event.nil? && @data.nil?
    end

    # Returns the events completed by this chunk (possibly none).
    def feed(chunk)
      out = []
      data = chunk.b
      # The usual case, one or two whole frames with "\n" line ends: split, no byte loop.
      if !@after_cr && !data.include?("\r")
        lines = data.split("\n", -1)
        rest = lines.pop
        lines.each do |l|
          push(l)
          end_line(out)
        end
        push(rest)
        return out
      end
      pos = 0
      if @after_cr
        @after_cr = false
        pos = 1 if data.getbyte(0) == 10
      end
      len = data.bytesize
      while pos < len
        i = data.index(/[\r\n]/n, pos)
        unless i
          push(data.byteslice(pos, len - pos))
          break
        end
        push(data.byteslice(pos, i - pos))
        end_line(out)
        pos = i + 1
        next unless data.getbyte(i) == 13

        if pos >= len
          @after_cr = true
        elsif data.getbyte(pos) == 10
          pos += 1
        end
      end
      out
    end

    # What #feed of these bytes does to an idle parser, when a Memo already decoded them: only
    # the id and retry the bytes themselves set.
    def resume(last_id, retry_ms)
      @last_id = last_id if last_id
      @retry_ms = retry_ms if retry_ms
    end

    # The decoding of the last frame, shared by every parser of a process (one thread only).
    # Gates of one process on one switch receive the same bytes for each change; the first
    # decodes them, the others compare bytes. A frame is remembered only when decoding it is
    # independent of what came before: read from an idle parser, leaving it idle, and every
    # event carrying an id the frame itself set. Anything else is decoded as usual.
    class Memo
      def initialize
        @bytes = nil
        @events = nil
      end

      # The events of `bytes` for `parser`, as parser.feed(bytes) would return them.
      def feed(parser, bytes)
        return parser.feed(bytes) unless parser.idle?

        if @bytes && bytes == @bytes
          parser.resume(@last_id, @retry_ms)
          return @events
        end
        fresh = SseParser.new
        events = fresh.feed(bytes)
        # An event whose id came from an earlier frame depends on the parser: decode it there.
        return parser.feed(bytes) unless fresh.idle? && events.all?(&:id)

        @bytes = bytes.frozen? ? bytes : bytes.dup.freeze
        @events = events.each { |e| e.data.freeze }.each(&:freeze).freeze
        @last_id = fresh.last_id
        @retry_ms = fresh.retry_ms
        parser.resume(@last_id, @retry_ms)
        @events
      end

      # The block's value for a `data` string, remembered for the next equal one (the switch
      # decoded from the same event). A block that raises is not remembered.
      def decoded(data)
        return @decoded if @decoded_data && (data.equal?(@decoded_data) || data == @decoded_data)

        value = yield
        @decoded_data = data.frozen? ? data : data.dup.freeze
        @decoded = value
      end
    end

    private

    def reset_event
      @event = nil
      @data = nil
    end

    def push(bytes)
      if @buf.bytesize + bytes.bytesize > MAX_LINE
        @buf = +"".b
        raise LineTooLong
      end
      @buf << bytes
    end

    def end_line(out)
      line = @buf
      @buf = +"".b
      if line.empty?
        dispatch(out)
        return
      end
      return if line.getbyte(0) == 58 # ':' a comment: the keep-alive

      colon = line.index(":")
      if colon
        field = line.byteslice(0, colon)
        value = line.byteslice(colon + 1, line.bytesize - colon - 1)
        value = value.byteslice(1, value.bytesize - 1) if value.getbyte(0) == 32
      else
        field = line
        value = "".b
      end
      value = value.force_encoding(Encoding::UTF_8)
      value = value.scrub("\uFFFD") unless value.valid_encoding?
      case field
      when "event" then @event = value
      when "data" then @data = @data ? "#{@data}\n#{value}" : value
      when "id" then @last_id = value unless value.include?("\0")
      when "retry" then @retry_ms = value.to_i if value.match?(/\A\d+\z/)
      end
    end

    def dispatch(out)
      if @data
        out << Event.new(@event.nil? || @event.empty? ? "message" : @event, @last_id, @data)
      end
      reset_event
    end
  end
end
