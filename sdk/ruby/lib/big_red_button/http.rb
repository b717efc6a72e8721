# frozen_string_literal: true

require "ipaddr"
require "json"
require "net/http"
require "openssl"
require "uri"
require "zlib"

module BigRedButton
  # The control plane's HTTP API as a gate needs it: several replica URLs, a bearer token that
  # never leaves this object (not in #inspect, not in an error), TLS with a private CA and a
  # client certificate, no redirects followed, bounded timeouts and bounded bodies.
  class Http
    API_PREFIX = "/api/v1"
    CONNECT_TIMEOUT = 3
    # A stream's answer must start within this: a server that took the connection into its
    # accept queue and never answers would otherwise hold the watcher forever.
    STREAM_ANSWER_TIMEOUT = 10
    REQUEST_TIMEOUT = 15
    MAX_BODY = 1 << 20
    USER_AGENT = "big_red_button-ruby/#{VERSION}"

    # Connection-level failures: the next replica is tried.
    NETWORK_ERRORS = [
      SystemCallError, SocketError, IOError, EOFError, Timeout::Error, OpenSSL::SSL::SSLError,
      Net::HTTPBadResponse, Net::ProtocolError, Zlib::Error
    ].freeze

    attr_reader :bases

    SHARED = {}
    SHARED_LOCK = Mutex.new

    # One Http per configuration in the process: gates with the same URLs, token and TLS
    # files share parsed certificates and kept-alive report connections.
    def self.shared(urls:, token:, ca_file: nil, client_cert: nil, client_key: nil,
                    allow_insecure_http: false)
      key = [Array(urls).map(&:to_s), token, ca_file, client_cert, client_key, allow_insecure_http].freeze
      SHARED_LOCK.synchronize do
        SHARED[key] ||= new(urls: urls, token: token, ca_file: ca_file, client_cert: client_cert,
                            client_key: client_key, allow_insecure_http: allow_insecure_http)
      end
    end

    def initialize(urls:, token:, ca_file: nil, client_cert: nil, client_key: nil,
                   allow_insecure_http: false)
      @bases = Array(urls).map { |u| u.to_s.strip.sub(%r{/+\z}, "") }.reject(&:empty?)
      raise ConfigError, "no control-plane URL given" if @bases.empty?

      @uris = @bases.map { |b| check_url(b, allow_insecure_http) }
      @token = token
      @tls = tls_options(ca_file, client_cert, client_key)
      @idle_sessions = []
      @sessions_lock = Mutex.new
    end

    def uri(index)
      @uris[index]
    end

    # The TLS settings for the reactor's own sockets (Net::HTTP builds its own from @tls).
    def ssl_context
      @ssl_context ||= begin
        ctx = OpenSSL::SSL::SSLContext.new
        ctx.verify_mode = OpenSSL::SSL::VERIFY_PEER
        # Checked by post_connection_check after the handshake, which also covers IP
        # addresses (the context's own check needs a host name for SNI).
        ctx.verify_hostname = false
        ctx.cert_store = @tls[:store]
        ctx.cert = @tls[:cert] if @tls[:cert]
        ctx.key = @tls[:key] if @tls[:key]
        ctx.min_version = OpenSSL::SSL::TLS1_2_VERSION
        ctx
      end
    end

    # Runs the block with a kept-alive Session from this Http's small pool.
    def with_session
      s = @sessions_lock.synchronize { @idle_sessions.pop } || Session.new(self, rand(@bases.size))
      begin
        yield s
      ensure
        @sessions_lock.synchronize do
          if @idle_sessions.size < Pool::SIZE
            @idle_sessions << s
            s = nil
          end
        end
        s&.close
      end
    end

    def inspect
      "#<#{self.class.name} bases=#{@bases.inspect} token=#{@token ? '[redacted]' : 'none'}>"
    end
    alias to_s inspect

    # A Net::HTTP for one base, not yet started.
    def connection(index, read_timeout:)
      uri = @uris[index]
      http = Net::HTTP.new(uri.host, uri.port)
      http.open_timeout = CONNECT_TIMEOUT
      http.read_timeout = read_timeout
      http.write_timeout = CONNECT_TIMEOUT + 2
      http.keep_alive_timeout = 8
      # Our own retry policy (backoff with jitter) applies, not Net::HTTP's silent retry.
      http.max_retries = 0
      if uri.scheme == "https"
        http.use_ssl = true
        http.verify_mode = OpenSSL::SSL::VERIFY_PEER
        http.cert_store = @tls[:store]
        http.cert = @tls[:cert] if @tls[:cert]
        http.key = @tls[:key] if @tls[:key]
      end
      http
    end

    def headers(extra = {})
      h = { "User-Agent" => USER_AGENT, "Accept-Encoding" => "identity" }
      h["Authorization"] = "Bearer #{@token}" if @token
      h.merge(extra)
    end

    def path_for(base_index, path)
      "#{@uris[base_index].path}#{API_PREFIX}#{path}"
    end

    # Opens the event stream at base `index` and yields the response once its head arrived,
    # with the read timeout switched to `idle_timeout` (a stream silent that long is dead).
    def stream(index, path, last_event_id:, idle_timeout:)
      http = connection(index, read_timeout: STREAM_ANSWER_TIMEOUT)
      req = Net::HTTP::Get.new(path_for(index, path), headers("Accept" => "text/event-stream"))
      req["Last-Event-ID"] = last_event_id if last_event_id
      http.start do
        http.request(req) do |res|
          http.read_timeout = idle_timeout
          yield res
        end
      end
    end

    # The error a non-success answer stands for. Reads at most a few KiB of its body.
    def self.error_from(res, base)
      headers = { "retry-after" => res["Retry-After"], "location" => res["Location"] }
      body = res.code.to_i.between?(300, 399) ? "" : read_capped(res, 8192)
      error_for(res.code.to_i, headers, body, base)
    end

    # The same from a status, lower-case headers and the start of the body.
    def self.error_for(status, headers, body, base)
      retry_after = parse_retry_after(headers["retry-after"])
      if status >= 300 && status < 400
        loc = sanitize(headers["location"].to_s)
        return ApiError.new(status: status, code: "redirect", location: loc,
                            message: "#{base} answered with a redirect to #{loc.empty? ? '(nowhere)' : loc}; " \
                                     "redirects are not followed (point the gate at the control plane itself)")
      end
      body = body.to_s.dup.force_encoding(Encoding::UTF_8).scrub
      code = "http_#{status}"
      message = "HTTP #{status}: #{sanitize(body[0, 200])}"
      begin
        err = JSON.parse(body, max_nesting: 8)["error"]
        if err.is_a?(Hash) && err["code"].is_a?(String)
          code = sanitize(err["code"])
          message = sanitize(err["message"].to_s)
        end
      rescue JSON::ParserError, TypeError, NoMethodError
        nil # not the API's error body (a proxy's page): the status says enough
      end
      ApiError.new(status: status, code: code, message: "#{base}: #{message}", retry_after: retry_after)
    end

    # Reads the body up to `cap` bytes; a longer one ends the connection.
    def self.read_capped(res, cap)
      buf = +""
      catch(:enough) do
        res.read_body do |chunk|
          buf << chunk
          throw :enough if buf.bytesize > cap
        end
      end
      buf.byteslice(0, cap).force_encoding(Encoding::UTF_8).scrub
    end

    # Seconds, from `Retry-After: 12` or an HTTP date; nil when absent or unreadable. Bounded:
    # a server asking for a day is answered in at most ten minutes.
    def self.parse_retry_after(v)
      return nil if v.nil?

      v = v.strip
      secs = if v.match?(/\A\d{1,9}\z/)
               v.to_i
             else
               begin
                 Time.httpdate(v) - Time.now
               rescue ArgumentError
                 return nil
               end
             end
      secs.to_f.clamp(0.0, 600.0)
    end

    # Text from the other side, fit for one log line: no control characters, bounded.
    def self.sanitize(s)
      s.to_s.dup.force_encoding(Encoding::UTF_8).scrub("?").gsub(/[[:cntrl:]]/, " ")[0, 300]
    end

    # Describes a connection failure, with a hint for the TLS mistakes people make.
    def self.describe(base, e)
      msg = "#{base}: #{sanitize(e.message)} (#{e.class})"
      if e.is_a?(OpenSSL::SSL::SSLError)
        if e.message.include?("certificate verify failed")
          msg += " (the server's TLS certificate is not trusted: give the CA that signed it " \
                 "with ca_file: / BRB_CA_FILE)"
        elsif e.message.match?(/certificate required|alert handshake failure|alert bad certificate/i)
          msg += " (the server may require a client certificate: client_cert:/client_key:, " \
                 "or BRB_CLIENT_CERT/BRB_CLIENT_KEY)"
        end
      end
      msg
    end

    # A kept-alive connection for one purpose (reports, long-poll), moving to the next replica
    # when the current one cannot be reached.
    class Session
      def initialize(http, start_index)
        @http = http
        @index = start_index
        @conn = nil
      end

      attr_reader :index

      # Sends a JSON request; returns the parsed JSON answer (a Hash). Raises ApiError for an
      # error answer (no other replica is tried: they share one store and would say the same),
      # UnreachableError when no replica answered, ProtocolError for an unreadable answer.
      def request(method, path, body: nil, read_timeout: REQUEST_TIMEOUT)
        errors = []
        @http.bases.size.times do
          base = @http.bases[@index]
          begin
            conn = connection(read_timeout)
            req = (method == :post ? Net::HTTP::Post : Net::HTTP::Get)
                  .new(@http.path_for(@index, path), @http.headers("Accept" => "application/json"))
            if body
              req["Content-Type"] = "application/json"
              req.body = JSON.generate(body)
            end
            result = nil
            conn.request(req) do |res|
              unless res.is_a?(Net::HTTPSuccess)
                result = Http.error_from(res, base)
                next
              end
              text = Http.read_capped(res, MAX_BODY)
              begin
                result = JSON.parse(text, max_nesting: 32)
              rescue JSON::ParserError => e
                result = ProtocolError.new("#{base}: HTTP #{res.code} with an unreadable body: " \
                                           "#{Http.sanitize(e.message[0, 120])}")
              end
            end
            if result.is_a?(Exception)
              # Whatever a failed answer left unread would poison the kept-alive connection.
              close
              raise result
            end
            return result
          rescue *NETWORK_ERRORS => e
            close
            errors << Http.describe(base, e)
            @index = (@index + 1) % @http.bases.size
          end
        end
        raise UnreachableError, "cannot reach the control plane: #{errors.join('; ')}"
      end

      def close
        c = @conn
        @conn = nil
        c&.finish if c&.started?
      rescue StandardError
        nil
      end

      private

      def connection(read_timeout)
        if @conn.nil? || !@conn.started?
          @conn = @http.connection(@index, read_timeout: read_timeout)
          @conn.start
        end
        @conn.read_timeout = read_timeout
        @conn
      end
    end

    private

    def check_url(base, allow_insecure_http)
      uri = begin
        URI.parse(base)
      rescue URI::InvalidURIError
        raise ConfigError, "#{base.inspect} is not a URL"
      end
      unless %w[http https].include?(uri.scheme) && uri.host && !uri.host.empty?
        raise ConfigError, "#{base.inspect} is not an http:// or https:// URL"
      end
      raise ConfigError, "#{base.inspect}: credentials do not belong in the URL" if uri.userinfo

      if uri.scheme == "http" && !allow_insecure_http && !loopback?(uri.host)
        raise ConfigError, "#{base.inspect}: refusing plain HTTP to a host that is not loopback " \
                           "(the token would cross the network in clear text); use https://, or " \
                           "allow it explicitly (allow_insecure_http: true) when a TLS proxy on a " \
                           "trusted hop is in front"
      end
      uri.path = uri.path.sub(%r{/+\z}, "")
      uri
    end

    def loopback?(host)
      h = host.delete_prefix("[").delete_suffix("]")
      return true if h.casecmp?("localhost")

      IPAddr.new(h).loopback?
    rescue IPAddr::InvalidAddressError, IPAddr::AddressFamilyError
      false
    end

    # The system's trust store plus the private CA, if any. Loading the system's store costs
    # most of a megabyte, so one store per CA file is shared by every gate of the process
    # (OpenSSL verifies against a store from many threads), and none is built for plain HTTP.
    STORES = {}
    STORES_LOCK = Mutex.new

    def self.cert_store(ca_file)
      pem = ca_file && File.read(ca_file)
      key = pem && OpenSSL::Digest::SHA256.hexdigest(pem)
      STORES_LOCK.synchronize do
        STORES[key] ||= begin
          store = OpenSSL::X509::Store.new
          store.set_default_paths
          if pem
            certs = pem.scan(/-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----/m)
            raise ConfigError, "CA file #{ca_file}: no PEM certificate in it" if certs.empty?

            certs.each do |c|
              store.add_cert(OpenSSL::X509::Certificate.new(c))
            rescue OpenSSL::X509::CertificateError => e
              raise ConfigError, "CA file #{ca_file}: #{e.message}"
            rescue OpenSSL::X509::StoreError
              nil # the same certificate twice
            end
          end
          store
        end
      end
    rescue SystemCallError, IOError => e
      raise ConfigError, "CA file #{ca_file}: #{e.message}"
    end

    def tls_options(ca_file, client_cert, client_key)
      out = {}
      # Checked even for http:// URLs: a wrong path should fail at start, not at a move to TLS.
      out[:store] = Http.cert_store(ca_file) if ca_file || @uris.any? { |u| u.scheme == "https" }
      if client_cert || client_key
        unless client_cert && client_key
          raise ConfigError, "a client certificate needs both the certificate and the key"
        end

        begin
          out[:cert] = OpenSSL::X509::Certificate.new(read_file(client_cert, "client certificate"))
        rescue OpenSSL::X509::CertificateError => e
          raise ConfigError, "client certificate #{client_cert}: #{e.message}"
        end
        begin
          out[:key] = OpenSSL::PKey.read(read_file(client_key, "client key"))
        rescue OpenSSL::PKey::PKeyError, ArgumentError => e
          raise ConfigError, "client key #{client_key}: #{e.message}"
        end
      end
      out
    end

    def read_file(path, what)
      File.read(path)
    rescue SystemCallError, IOError => e
      raise ConfigError, "#{what} #{path}: #{e.message}"
    end
  end
end
