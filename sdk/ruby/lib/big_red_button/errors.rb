# frozen_string_literal: true

module BigRedButton
  # Everything this library raises is a BigRedButton::Error.
  class Error < StandardError; end

  # A setting the gate refuses (no URL, max_concurrency 0, an unreadable CA file...). Raised by
  # Gate.new: a misconfigured worker should fail at start, not run unbraked.
  class ConfigError < Error; end

  # The gate was closed while a caller waited in #job / #acquire.
  class GateClosed < Error; end

  # The control plane answered with an error (`{"error":{"code","message"}}`, or a bare status).
  class ApiError < Error
    attr_reader :status, :code, :retry_after, :location

    def initialize(status:, code:, message:, retry_after: nil, location: nil)
      @status = status
      @code = code
      @retry_after = retry_after
      @location = location
      super("#{message} (#{code}, HTTP #{status})")
    end

    def auth?
      status == 401 || status == 403
    end
  end

  # No replica could be reached (refused, timed out, TLS failure...).
  class UnreachableError < Error; end

  # The control plane (or something in its place) answered something unreadable.
  class ProtocolError < Error; end
end
