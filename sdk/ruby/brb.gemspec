# frozen_string_literal: true

require_relative "lib/big_red_button/version"

Gem::Specification.new do |s|
  s.name = "big_red_button"
  s.version = BigRedButton::VERSION
  s.summary = "Big Red Button worker SDK: pause background workers from one button"
  s.description = "A gate that follows a Big Red Button switch over SSE (long-poll fallback), " \
                  "admits jobs with the release ramp's duty cycle, applies a fail policy and " \
                  "reports running/draining/paused to the control plane. Standard library only."
  s.authors = ["Big Red Button"]
  s.licenses = ["MIT", "Apache-2.0"]
  s.required_ruby_version = ">= 3.1"
  s.files = Dir["lib/**/*.rb", "bin/*", "README.md"]
  s.bindir = "bin"
  s.executables = ["brb-conformance-driver"]
  s.require_paths = ["lib"]
  s.metadata["rubygems_mfa_required"] = "true"
end
