# frozen_string_literal: true

require "minitest/autorun"
require "big_red_button"
require "fileutils"
require "json"
require "net/http"
require "socket"
require "tmpdir"

module BrbTest
  REPO = File.expand_path("../../..", __dir__)

  # The real control plane: BRB_BIN (the Makefile sets it), else this work tree's debug build.
  def self.brb_bin
    bin = ENV["BRB_BIN"].to_s
    bin = File.join(REPO, "target/debug/brb") if bin.empty?
    return bin if File.executable?(bin)

    raise "no brb binary at #{bin}: build it (cargo build -p brb) or set BRB_BIN"
  end

  # Logger device the tests read: what the SDK logged, thread-safe.
  class LogCapture
    def initialize
      @lock = Mutex.new
      @buf = +""
    end

    def write(s)
      @lock.synchronize { @buf << s.to_s }
      $stderr.write(s) if ENV["BRB_TEST_LOG"]
      s.to_s.size
    end

    def close; end

    def text
      @lock.synchronize { @buf.dup }
    end

    def logger(level: Logger::DEBUG)
      Logger.new(self, level: level)
    end
  end

  # A `brb server` child process on a free loopback port with a temp data dir.
  class Server
    attr_reader :url, :port, :dir, :token

    def initialize(env: {}, args: [], dir: nil)
      @env = env
      @args = args
      @dir = dir || Dir.mktmpdir("brb-ruby-sdk")
      @own_dir = dir.nil?
      @port = 0
      start
    end

    def start
      out_r, out_w = IO.pipe
      @log = File.open(File.join(@dir, "server.log"), "a")
      @pid = Process.spawn(@env, BrbTest.brb_bin, "server", "--listen", "127.0.0.1:#{@port}",
                           "--data-dir", @dir, *@args, out: out_w, err: @log)
      out_w.close
      deadline = BigRedButton.monotonic + 60
      line = nil
      loop do
        raise "brb server did not start (see #{@dir}/server.log)" if BigRedButton.monotonic > deadline

        ready = IO.select([out_r], nil, nil, 1)
        next unless ready

        line = out_r.gets
        raise "brb server exited at start: #{File.read(File.join(@dir, 'server.log'))[-2000..]}" if line.nil?
        break if line =~ %r{listening on (https?://\S+)}
      end
      @url = line[%r{listening on (https?://\S+)}, 1]
      @port = @url[/:(\d+)\z/, 1].to_i
      # Keep draining stdout so the server never blocks on it.
      @drain = Thread.new { out_r.each_line { nil } rescue nil }
      @token = File.read(File.join(@dir, "admin-token")).strip
      self
    end

    def running?
      !@pid.nil?
    end

    def stop(signal = "TERM")
      return unless @pid

      Process.kill(signal, @pid)
      Process.wait(@pid)
      @pid = nil
      @log&.close
    rescue Errno::ESRCH, Errno::ECHILD
      @pid = nil
    end

    def kill
      stop("KILL")
    end

    def cleanup
      stop
      FileUtils.rm_rf(@dir) if @own_dir
    end

    # Talks to the API the way an operator would (the test's own client, not the SDK).
    # For a server with TLS: {ca_file:, cert:, key:} (OpenSSL objects for cert and key).
    attr_accessor :tls

    def api(method, path, body = nil, token: @token)
      uri = URI("#{@url}/api/v1#{path}")
      http = Net::HTTP.new(uri.host, uri.port)
      if uri.scheme == "https"
        http.use_ssl = true
        http.ca_file = tls[:ca_file]
        http.cert = tls[:cert]
        http.key = tls[:key]
      end
      req = { get: Net::HTTP::Get, put: Net::HTTP::Put, post: Net::HTTP::Post }.fetch(method)
              .new(uri.request_uri, "Authorization" => "Bearer #{token}", "Content-Type" => "application/json")
      req.body = JSON.generate(body) if body
      res = http.request(req)
      [res.code.to_i, res.body.to_s.empty? ? nil : JSON.parse(res.body)]
    end

    def set_state(state, switch: "workers", **extra)
      code, body = api(:put, "/switches/#{switch}/state", { state: state }.merge(extra))
      raise "PUT state: #{code} #{body}" unless code == 200

      body
    end

    def pause(**extra)
      set_state("paused", **extra)
    end

    def resume(**extra)
      set_state("running", **extra)
    end

    def switch(name = "workers")
      api(:get, "/switches/#{name}")[1]
    end

    def workers(name = "workers")
      api(:get, "/switches/#{name}/workers")[1]
    end

    def worker(id, name = "workers")
      workers(name)["workers"].find { |w| w["worker_id"] == id }
    end

    def create_token(name, role: "viewer", switches: nil)
      req = { name: name, role: role }
      req[:scope] = { switches: switches, pause_only: false } if switches
      code, body = api(:post, "/tokens", req)
      raise "POST token: #{code} #{body}" unless code == 200 || code == 201

      body["secret"] || body["token"]
    end
  end

  # A plain TCP relay between gates and a real server, so a test can cut connections, refuse
  # them, or turn away event-stream requests as a proxy that cannot hold SSE would.
  class Proxy
    attr_reader :url, :accepted

    def initialize(upstream_port)
      @upstream = upstream_port
      @server = TCPServer.new("127.0.0.1", 0)
      @url = "http://127.0.0.1:#{@server.addr[1]}"
      @mode = :forward
      @accepted = 0
      @requests = []
      @socks = []
      @lock = Mutex.new
      @thread = Thread.new { accept_loop }
    end

    # :forward, :refuse (close at once), :refuse_sse (502 to event-stream requests),
    # :buffer_sse (an event stream's head passes, its body is held back).
    def mode=(m)
      @lock.synchronize { @mode = m }
    end

    def requests
      @lock.synchronize { @requests.dup }
    end

    # Closes every relayed connection (the control plane seems to vanish mid-stream).
    def cut
      socks = @lock.synchronize { s = @socks.dup; @socks.clear; s }
      # shutdown, not just close: it wakes a relay thread blocked in copy_stream on it.
      socks.each do |s|
        s.shutdown(Socket::SHUT_RDWR) rescue nil
        s.close rescue nil
      end
    end

    def close
      @thread.kill
      @server.close rescue nil
      cut
    end

    private

    def accept_loop
      loop do
        c = @server.accept
        Thread.new(c) { |conn| relay(conn) }
      end
    rescue IOError, SystemCallError
      nil
    end

    def relay(client)
      mode = @lock.synchronize { @accepted += 1; @mode }
      if mode == :refuse
        client.close
        return
      end
      head = +""
      head << client.readpartial(65_536) until head.include?("\r\n\r\n")
      line = head.lines.first.to_s
      @lock.synchronize { @requests << line.strip }
      if mode == :refuse_sse && line.include?("/events")
        client.write("HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/html\r\nContent-Length: 18\r\n" \
                     "Connection: close\r\n\r\n<h1>no streams</h1>"[0..])
        client.close
        return
      end
      up = TCPSocket.new("127.0.0.1", @upstream)
      @lock.synchronize { @socks << client << up }
      up.write(head)
      if mode == :buffer_sse && line.include?("/events")
        # A buffering proxy: the answer's head goes through, its body never does.
        answer = +""
        answer << up.readpartial(65_536) until answer.include?("\r\n\r\n")
        client.write(answer[0, answer.index("\r\n\r\n") + 4])
        IO.copy_stream(up, IO::NULL) rescue nil
        client.close rescue nil
        return
      end
      t = Thread.new { IO.copy_stream(up, client) rescue nil; client.close rescue nil }
      # Every request on a kept-alive connection is recorded, not only the first.
      begin
        loop do
          data = client.readpartial(65_536)
          data.scan(%r{^(?:GET|POST|PUT|PATCH|DELETE) \S+ HTTP/1\.1}) { |l| @lock.synchronize { @requests << l } }
          up.write(data)
        end
      rescue IOError, SystemCallError
        nil
      end
      up.close rescue nil
      t.join
    rescue IOError, SystemCallError
      client.close rescue nil
    end
  end

  # A server of the test's own that answers whatever the test scripts: for bad input.
  class BadServer
    Request = Struct.new(:line, :headers, :at)

    attr_reader :url, :port

    # The block gets (socket, request, n) for the n-th connection (1-based) and writes.
    def initialize(&handler)
      @server = TCPServer.new("127.0.0.1", 0)
      @port = @server.addr[1]
      @url = "http://127.0.0.1:#{@port}"
      @handler = handler
      @requests = []
      @conns = []
      @lock = Mutex.new
      @thread = Thread.new { accept_loop }
    end

    def requests
      @lock.synchronize { @requests.dup }
    end

    def count
      requests.size
    end

    def close
      @thread.kill
      @server.close rescue nil
      @lock.synchronize { @conns.each { |c| c.close rescue nil } }
    end

    private

    def accept_loop
      loop do
        c = @server.accept
        Thread.new(c) { |conn| serve(conn) }
      end
    rescue IOError, SystemCallError
      nil
    end

    def serve(conn)
      head = +""
      head << conn.readpartial(65_536) until head.include?("\r\n\r\n")
      lines = head.split("\r\n")
      headers = lines[1..].to_h { |l| k, v = l.split(":", 2); [k.to_s.strip.downcase, v.to_s.strip] }
      n = @lock.synchronize do
        @conns << conn
        @requests << Request.new(lines[0], headers, BigRedButton.monotonic)
        @requests.size
      end
      @handler.call(conn, @requests[n - 1], n)
    rescue IOError, SystemCallError
      nil
    end
  end

  def self.sse_head
    "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\r\n"
  end

  def self.switch_event(state, version, name: "workers")
    data = JSON.generate(name: name, description: "", primary: true, state: state, version: version,
                         changed_at: "2026-01-01T00:00:00Z", changed_by: "test", source: "api",
                         reason: nil, ramp: nil)
    "event: switch\nid: #{version}\ndata: #{data}\n\n"
  end

  module Helpers
    # Waits for a condition (polling it); fails with the message when it does not come.
    def eventually(timeout = 10, msg = nil)
      deadline = BigRedButton.monotonic + timeout
      loop do
        v = yield
        return v if v
        flunk(msg || "condition not met within #{timeout}s") if BigRedButton.monotonic > deadline

        sleep 0.01
      end
    end

    # Watches a condition for a window and fails if it ever holds.
    def never(window, msg = nil)
      deadline = BigRedButton.monotonic + window
      while BigRedButton.monotonic < deadline
        flunk(msg || "condition held within #{window}s") if yield
        sleep 0.01
      end
    end

    def gates
      @gates ||= []
    end

    def gate(**opts)
      g = BigRedButton::Gate.new(**opts)
      gates << g
      g
    end

    def teardown
      gates.each(&:close)
      super
    end
  end
end
