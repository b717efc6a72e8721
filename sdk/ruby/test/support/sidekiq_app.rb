# frozen_string_literal: true

# The Sidekiq application of the end-to-end test and the benchmark: `sidekiq -r THIS_FILE`.
# Its one job records when it starts (in Redis, so the test sees every process's starts in one
# list), then works for as long as it is told. The brake is wired with the README's one line.
require "big_red_button/sidekiq"

# Debian pairs Sidekiq 6.4 with redis-rb 4.8, which warns about calls Sidekiq itself makes.
Redis.silence_deprecations = true

Sidekiq.configure_server do |config|
  # The benchmark reads when each gate saw a change from a log of its own (µs timestamps).
  gate_log = ENV["BRB_GATE_LOG"].to_s.empty? ? {} : { logger: Logger.new(ENV["BRB_GATE_LOG"]) }
  BigRedButton::Sidekiq.enable(config, **gate_log)
  config.logger.level = Logger.const_get(ENV.fetch("SIDEKIQ_LOG_LEVEL", "WARN"))
end

# One job: records "jid start-time pid", then sleeps `seconds`.
class BrbTestJob
  include Sidekiq::Job

  STARTS = "brb-test:starts"

  def perform(seconds)
    Sidekiq.redis { |c| c.rpush(STARTS, "#{jid} #{format('%.6f', Time.now.to_f)} #{Process.pid}") }
    sleep(seconds)
  end
end
