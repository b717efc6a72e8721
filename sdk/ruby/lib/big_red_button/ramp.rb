# frozen_string_literal: true

require "time"

module BigRedButton
  # A gradual release in progress, as the switch carries it. Every gate computes the admitted
  # fraction locally from the same data with the same pure function (the Rust SDK's
  # `Ramp::fraction_at`), so the fleet follows the schedule with no extra round trips.
  class Ramp
    MAX_STEPS = 20
    MAX_SECS = 86_400

    attr_reader :started_at, :duration_secs, :kind, :fractions, :from

    # Builds a ramp from the switch's `ramp` object; raises ProtocolError when it is not one.
    def self.from_json(h)
      raise ProtocolError, "ramp is not an object" unless h.is_a?(Hash)

      started = h["started_at"]
      raise ProtocolError, "ramp.started_at is not a timestamp" unless started.is_a?(String)

      begin
        started_at = Time.iso8601(started)
      rescue ArgumentError
        raise ProtocolError, "ramp.started_at is not a timestamp"
      end
      dur = h["duration_secs"]
      unless dur.is_a?(Integer) && dur >= 0
        raise ProtocolError, "ramp.duration_secs is not a non-negative integer"
      end

      fraction = ->(f) { f.is_a?(Numeric) && f.finite? && f >= 0 && f <= 1 }
      case h["kind"]
      when "steps"
        fr = h["fractions"]
        unless fr.is_a?(Array) && !fr.empty? && fr.size <= MAX_STEPS && fr.all?(&fraction)
          raise ProtocolError, "ramp.fractions is not a list of fractions"
        end

        new(started_at: started_at, duration_secs: dur, kind: :steps, fractions: fr.map(&:to_f))
      when "linear"
        raise ProtocolError, "ramp.from is not a fraction" unless fraction.call(h["from"])

        new(started_at: started_at, duration_secs: dur, kind: :linear, from: h["from"].to_f)
      else
        raise ProtocolError, "unknown ramp kind #{h['kind'].inspect[0, 40]}"
      end
    end

    def initialize(started_at:, duration_secs:, kind:, fractions: nil, from: nil)
      @started_at = started_at
      @duration_secs = duration_secs
      @kind = kind
      @fractions = fractions
      @from = from
    end

    # The fraction of normal work admitted at `now`: in [0, 1], exactly 1 once the ramp is
    # over. Before the start (clock skew between a worker and the server) it is the first step.
    def fraction_at(now = Time.now)
      elapsed = [now - @started_at, 0.0].max
      total = [@duration_secs, 1].max.to_f
      return 1.0 if elapsed >= total

      f = if @kind == :linear
            @from + (1.0 - @from) * (elapsed / total)
          else
            n = @fractions.size
            return 1.0 if n < 2

            step = total / (n - 1)
            @fractions[[(elapsed / step).floor, n - 1].min]
          end
      f.clamp(0.0, 1.0)
    end
  end
end
