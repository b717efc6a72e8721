# frozen_string_literal: true

require "socket"
require "openssl"

module BigRedButton
  # One event-stream request (HTTP/1.1 GET, plain or TLS) driven by the Reactor without
  # blocking: connect, handshake, send, read the head, then decode the body (chunked, sized or
  # until close) and hand its bytes on. Runs on the reactor thread only.
  #
  # The handler is told exactly one of:
  # - failed(message):  no answer (refused, unreachable, TLS failure, no head in time): the
  #                     caller may try the next replica;
  # - refused(error):   an answer that is not a stream (an ApiError from its status and body);
  # - ended(message):   the stream was open and ended (EOF, broken, silent for idle_timeout,
  #                     or a protocol error);
  # and, while the stream is open, data(bytes) for each piece of body (a String of its own: the
  # socket is read into the reactor's shared buffer, which no piece is).
  class StreamConnection
    MAX_HEAD = 16 * 1024
    MAX_ERROR_BODY = 8 * 1024
    READ_SIZE = 16 * 1024
    # Reads per wake-up per connection, so one busy stream cannot starve the others.
    READS_PER_WAKE = 8

    attr_reader :want

    def initialize(reactor, http, index, path, headers, idle_timeout:, handler:,
                   answer_timeout: Http::STREAM_ANSWER_TIMEOUT)
      @reactor = reactor
      @http = http
      @uri = http.uri(index)
      @base = http.bases[index]
      @request = build_request(@uri, path, headers)
      @idle_timeout = idle_timeout
      @answer_timeout = answer_timeout
      @handler = handler
      @state = :resolving
      @want = :read
      @io = nil
      @sock = nil
      @timers = []
      @idle_timer = nil
      @done = false
    end

    # Starts connecting. Separate from new: a failure may be reported (and the handler start
    # the next connection) before this returns, so the caller must already hold this one.
    def start
      # An address of the text's own needs no lookup; a name is looked up off the reactor,
      # which must never wait on DNS.
      # The whole answer (connect, handshake, head) must come within this.
      deadline(@answer_timeout) do
        fail_with("#{@base}: no answer to the event-stream request within #{@answer_timeout}s") unless @state == :body
      end
      host = @uri.hostname
      if host.match?(/\A[\d.]+\z|:/) || host.casecmp?("localhost")
        addrs = lookup(host)
        connect_to(addrs) if addrs
      else
        Pool.instance.post do
          addrs = lookup(host)
          @reactor.submit { connect_to(addrs) if addrs && !@done }
        end
      end
    end

    # Ends the connection without telling the handler (the gate is closing, or it decided).
    def close
      finish(nil, nil)
    end

    def on_ready
      return if @done

      case @state
      when :connecting then continue_connect
      when :handshake then continue_handshake
      when :sending then continue_send
      else read_some
      end
    rescue SystemCallError, IOError, SocketError, OpenSSL::SSL::SSLError, ProtocolError => e
      fail_with(Http.describe(@base, e))
    end

    private

    def set_want(w)
      return if @want == w

      @want = w
      @reactor.interest_changed
    end

    def build_request(uri, path, headers)
      host = uri.host.include?(":") ? "[#{uri.host}]" : uri.host
      default = uri.default_port == uri.port
      lines = ["GET #{path} HTTP/1.1", "Host: #{host}#{default ? '' : ":#{uri.port}"}"]
      headers.each { |k, v| lines << "#{k}: #{v}" }
      lines << "Connection: close"
      "#{lines.join("\r\n")}\r\n\r\n"
    end

    def lookup(host)
      Addrinfo.getaddrinfo(host, @uri.port, nil, :STREAM)
    rescue SocketError => e
      @reactor.submit { fail_with("#{@base}: cannot resolve #{host}: #{Http.sanitize(e.message)}") }
      nil
    end

    def deadline(secs, &block)
      @timers << @reactor.after(secs, &block)
    end

    def connect_to(addrs)
      return if @done

      @addrs = addrs
      @errors = []
      next_address
    end

    def next_address
      ai = @addrs.shift
      unless ai
        fail_with("#{@base}: #{@errors.uniq.join('; ')}")
        return
      end
      @ai = ai
      @sock = Socket.new(ai.afamily, Socket::SOCK_STREAM, 0)
      @sock.setsockopt(Socket::SOL_SOCKET, Socket::SO_KEEPALIVE, true)
      @io = @sock
      @state = :connecting
      set_want(:write)
      @reactor.watch(@sock, self)
      connect_timeout = [Http::CONNECT_TIMEOUT, @answer_timeout].min
      connect_deadline = @reactor.after(connect_timeout) do
        if @state == :connecting && @ai.equal?(ai)
          @errors << "connect timed out after #{connect_timeout}s"
          drop_socket
          next_address
        end
      end
      @timers << connect_deadline
      continue_connect
    end

    def continue_connect
      r = begin
        @sock.connect_nonblock(@ai, exception: false)
      rescue Errno::EISCONN
        0
      rescue SystemCallError => e
        @errors << e.message
        drop_socket
        next_address
        return
      end
      return if r == :wait_writable

      connected
    end

    def drop_socket
      @reactor.unwatch(@sock) if @sock
      @sock&.close
    rescue IOError
      nil
    end

    def connected
      if @uri.scheme == "https"
        ssl = OpenSSL::SSL::SSLSocket.new(@sock, @http.ssl_context)
        ssl.hostname = @uri.hostname unless @uri.hostname.match?(/\A[\d.]+\z|:/)
        ssl.sync_close = true
        @io = ssl
        @state = :handshake
        continue_handshake
      else
        start_send
      end
    end

    def continue_handshake
      r = @io.connect_nonblock(exception: false)
      case r
      when :wait_readable then set_want(:read)
      when :wait_writable then set_want(:write)
      else
        @io.post_connection_check(@uri.hostname)
        start_send
      end
    end

    def start_send
      @out = @request.b
      @state = :sending
      continue_send
    end

    def continue_send
      until @out.empty?
        n = @io.write_nonblock(@out, exception: false)
        case n
        when :wait_writable then set_want(:write)
                                 return
        when :wait_readable then set_want(:read)
                                 return
        end
        @out = @out.byteslice(n, @out.bytesize - n)
      end
      set_want(:read)
      @state = :head
      @head = +"".b
    end

    def read_some
      READS_PER_WAKE.times do
        data = @io.read_nonblock(READ_SIZE, @reactor.read_buffer, exception: false)
        case data
        when :wait_readable then set_want(:read)
                                 return
        when :wait_writable then set_want(:write)
                                 return
        when nil
          eof
          return
        end
        set_want(:read)
        @last_read = BigRedButton.monotonic
        case @state
        when :head then head_bytes(data)
        when :body, :error_body then body_bytes(data)
        end
        return if @done
        # A short read from a plain socket drained it (select reports the next bytes); a TLS
        # socket may hold decrypted bytes select cannot see, so it reads on.
        return if data.bytesize < READ_SIZE && @io.equal?(@sock)
      end
      # More may be waiting (TLS buffers it where select cannot see): look again soon.
      @reactor.submit { on_ready }
    end

    def head_bytes(data)
      @head << data
      i = @head.index("\r\n\r\n")
      unless i
        raise ProtocolError, "answer head longer than #{MAX_HEAD} bytes" if @head.bytesize > MAX_HEAD

        return
      end
      rest = @head.byteslice(i + 4, @head.bytesize - i - 4)
      lines = @head.byteslice(0, i).split("\r\n")
      @head = nil
      status_line = lines.shift.to_s
      m = status_line.match(%r{\AHTTP/1\.[01] (\d{3})})
      raise ProtocolError, "not an HTTP answer: #{Http.sanitize(status_line[0, 60])}" unless m

      @status = m[1].to_i
      @headers = {}
      lines.each do |l|
        k, v = l.split(":", 2)
        @headers[k.strip.downcase] = v.to_s.strip if v
      end
      te = @headers["transfer-encoding"].to_s.downcase
      @decoder = if te.include?("chunked") then ChunkedDecoder.new
                 elsif @headers["content-length"]&.match?(/\A\d+\z/) then SizedDecoder.new(@headers["content-length"].to_i)
                 else SizedDecoder.new(nil)
                 end
      if @status == 200 && @headers["content-type"].to_s.start_with?("text/event-stream")
        @state = :body
        @timers.each(&:cancel)
        @timers.clear
        idle_check
      elsif @status == 200
        fail_with(nil, refused: "#{@base} answered the event stream with HTTP 200 " \
                                "#{Http.sanitize(@headers['content-type'])}, not an event stream (a proxy?)")
        return
      else
        @state = :error_body
        @error_body = +"".b
      end
      body_bytes(rest) unless rest.empty?
    end

    def body_bytes(data)
      @decoder.feed(data) do |piece|
        if @state == :body
          @handler.data(piece)
        else
          @error_body << piece
          error_answer if @error_body.bytesize >= MAX_ERROR_BODY
        end
        return if @done
      end
      return unless @decoder.done?

      @state == :body ? finish(:ended, "#{@base}: the event stream ended") : error_answer
    end

    def error_answer
      return if @done

      err = Http.error_for(@status, @headers, @error_body.byteslice(0, MAX_ERROR_BODY), @base)
      finish(:refused, err)
    end

    def eof
      case @state
      when :body then finish(:ended, "#{@base}: the event stream was closed")
      when :error_body then error_answer
      else fail_with("#{@base}: connection closed before an answer")
      end
    end

    # A stream that sends nothing (not even a keep-alive) for idle_timeout is dead. One timer
    # per connection, re-armed from the last read rather than on every read.
    def idle_check
      @last_read ||= BigRedButton.monotonic
      due = @last_read + @idle_timeout
      @idle_timer = @reactor.at(due) do
        if @done then nil
        elsif BigRedButton.monotonic - @last_read >= @idle_timeout
          finish(:ended, "#{@base}: the event stream was silent for #{@idle_timeout}s", idle: true)
        else
          idle_check
        end
      end
    end

    def fail_with(message, refused: nil)
      if refused
        finish(:not_stream, refused)
      elsif @state == :body
        finish(:ended, message)
      else
        finish(:failed, message)
      end
    end

    def finish(kind, detail, idle: false)
      return if @done

      @done = true
      @timers.each(&:cancel)
      @timers.clear
      @idle_timer&.cancel
      if @sock
        @reactor.unwatch(@sock)
        begin
          @io.close
        rescue IOError, SystemCallError, OpenSSL::SSL::SSLError
          nil
        end
        @sock.close unless @sock.closed?
      end
      case kind
      when :failed then @handler.failed(detail)
      when :refused then @handler.refused(detail)
      when :not_stream then @handler.not_stream(detail)
      when :ended then @handler.ended(detail, idle: idle)
      end
    rescue IOError
      nil
    end

    # Decodes `Transfer-Encoding: chunked` incrementally.
    class ChunkedDecoder
      MAX_SIZE_LINE = 1024

      def initialize
        @state = :size
        @line = +"".b
        @left = 0
      end

      def done?
        @state == :done
      end

      def feed(data)
        pos = 0
        len = data.bytesize
        # The usual read: exactly one whole chunk ("size\r\n" data "\r\n"), nothing pending.
        if @state == :size && @line.empty?
          i = data.index("\r\n")
          if i && i <= 8 && (hex = data.byteslice(0, i)).match?(/\A\h+\z/)
            n = hex.to_i(16)
            if n.positive? && len == i + n + 4 && data.getbyte(len - 2) == 13 && data.getbyte(len - 1) == 10
              yield data.byteslice(i + 2, n)
              return
            end
          end
        end
        while pos < len && @state != :done
          case @state
          when :size, :crlf, :trailer
            i = data.index("\n", pos)
            piece = data.byteslice(pos, (i || len) - pos)
            @line << piece
            raise ProtocolError, "chunk size line too long" if @line.bytesize > MAX_SIZE_LINE
            break unless i

            pos = i + 1
            line = @line.chomp("\r")
            @line = +"".b
            line_done(line)
          when :data
            n = [@left, len - pos].min
            yield data.byteslice(pos, n)
            pos += n
            @left -= n
            @state = :crlf if @left.zero?
          end
        end
      end

      private

      def line_done(line)
        case @state
        when :size
          hex = line.split(";", 2)[0].to_s.strip
          raise ProtocolError, "bad chunk size #{Http.sanitize(hex[0, 20]).inspect}" unless hex.match?(/\A\h{1,8}\z/)

          @left = hex.to_i(16)
          @state = @left.zero? ? :trailer : :data
        when :crlf
          raise ProtocolError, "chunk not followed by CRLF" unless line.empty?

          @state = :size
        when :trailer
          @state = :done if line.empty?
        end
      end
    end

    # A body of known length, or until the connection closes (length nil).
    class SizedDecoder
      def initialize(length)
        @left = length
      end

      def done?
        @left&.zero?
      end

      # `data` is the reactor's read buffer: what is yielded is a copy.
      def feed(data)
        data = data.byteslice(0, @left || data.bytesize)
        @left -= data.bytesize if @left
        yield data unless data.empty?
      end
    end
  end
end
