# frozen_string_literal: true

# A background worker that obeys the Big Red Button.
#
# Run the control plane (`make run`), then, from the repository's root:
#
#   BRB_TOKEN=$(cat ~/.local/share/big-red-button/admin-token) \
#     ruby -Isdk/ruby/lib examples/ruby/worker.rb
#
# and press the button (`brb pause`): the worker stops taking jobs within milliseconds,
# finishes the ones in flight, and reports `paused`; `brb resume --ramp steps:2m` brings it
# back gradually. Ctrl-C (or SIGTERM) finishes the jobs in flight and exits.

require "big_red_button"

$stdout.sync = true # progress lines as they happen, also into a pipe

# Up to four jobs at once; a ramp throttles each slot by duty cycle. The URL(s) come from
# BRB_URL, the token from BRB_TOKEN or BRB_TOKEN_FILE.
gate = BigRedButton::Gate.new(switch: ENV.fetch("BRB_SWITCH", "workers"), max_concurrency: 4)
unless gate.ready(timeout: 10)
  warn "cannot reach the control plane (#{gate.last_error}); keeping the brake on until it answers"
end
puts "worker #{gate.worker_id} started (#{gate.open? ? 'running' : 'paused'})"

stopping = false
%w[INT TERM].each { |sig| trap(sig) { stopping = true } }

def process_one_job(n)
  sleep(0.05 + rand * 0.1) # the real work: a database write, an e-mail, a thumbnail...
  puts "job #{n} done"
end

jobs = 0
lock = Mutex.new
workers = Array.new(gate.max_concurrency) do
  Thread.new do
    until stopping
      # Waits while the switch is paused (at most a second, to notice a shutdown); counts the
      # job as in flight until the block returns, so the control plane sees `draining`.
      permit = gate.acquire(timeout: 1)
      next unless permit

      begin
        process_one_job(lock.synchronize { jobs += 1 })
      ensure
        permit.release
      end
    end
  end
end

# Say so on each change the gate learns (wait_version wakes at once on a new version).
until stopping
  next unless gate.wait_version(gate.version + 1, timeout: 1)

  if gate.open?
    puts "running (version #{gate.version}, admitting #{(gate.admitted_fraction * 100).round}%)"
  else
    puts "paused (version #{gate.version}): finishing #{gate.in_flight} job(s) in flight"
  end
end
workers.each(&:join)
gate.close
puts "stopped after #{gate.processed} jobs"
