# frozen_string_literal: true

require "logger"
require "securerandom"
require "socket"

require_relative "big_red_button/version"
require_relative "big_red_button/errors"
require_relative "big_red_button/sse_parser"
require_relative "big_red_button/ramp"
require_relative "big_red_button/http"
require_relative "big_red_button/reactor"
require_relative "big_red_button/stream_connection"
require_relative "big_red_button/gate"

# The Big Red Button worker SDK: a Gate follows one switch of the control plane and tells a
# background worker whether to take jobs. See sdk/ruby/README.md.
module BigRedButton
  # `Gate#job(timeout:)` ran out of time before the gate admitted the job.
  class NotAdmitted < Error; end

  module_function

  def monotonic
    Process.clock_gettime(Process::CLOCK_MONOTONIC)
  end

  # `hostname-pid-random`, unique enough to tell workers apart.
  def default_worker_id
    host = ENV["HOSTNAME"].to_s.strip
    host = Socket.gethostname.to_s.strip if host.empty?
    host = "worker" if host.empty?
    "#{host}-#{Process.pid}-#{SecureRandom.hex(2)}"
  end

  def default_logger
    @default_logger ||= Logger.new($stderr, level: Logger::INFO, progname: "big_red_button")
  end

  # The token: the argument, else the file named by the argument, else BRB_TOKEN, else the
  # file named by BRB_TOKEN_FILE. Never logged; only the file's name appears in errors.
  def resolve_token(token, token_file)
    raise ConfigError, "give token: or token_file:, not both" if token && token_file

    if token.nil? && token_file.nil?
      token = ENV["BRB_TOKEN"] unless ENV["BRB_TOKEN"].to_s.empty?
      token_file = ENV["BRB_TOKEN_FILE"] if token.nil? && !ENV["BRB_TOKEN_FILE"].to_s.empty?
    end
    if token_file
      begin
        token = File.read(token_file.to_s)
      rescue SystemCallError, IOError => e
        raise ConfigError, "token file #{token_file}: #{e.class.name.split('::').last}: cannot read it"
      end
      token = token.strip
      raise ConfigError, "token file #{token_file} is empty" if token.empty?
    end
    return nil if token.nil?

    token = token.to_s.strip
    # A header value with a line break would be a request of the token's own making.
    if token.empty? || token.match?(/[[:cntrl:] ]/)
      raise ConfigError, "the token is empty or has whitespace or control characters in it"
    end

    token
  end

  # Full-jitter exponential backoff: a random delay in [0, min(cap, base·2^attempt)].
  def backoff(base, cap, attempt)
    [base * (2**[attempt, 20].min), cap].min * rand
  end

  # Percent-encodes a path segment.
  def escape(s)
    s.to_s.b.gsub(/[^A-Za-z0-9\-_.~]/n) { |c| format("%%%02X", c.ord) }
  end
end
