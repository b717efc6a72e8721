# frozen_string_literal: true

require_relative "test_helper"
require "open3"

# examples/ruby/worker.rb runs as the README says, against a real server, and obeys it.
class TestExample < Minitest::Test
  include BrbTest::Helpers

  EXAMPLE = File.join(BrbTest::REPO, "examples/ruby/worker.rb")

  def setup
    @server = BrbTest::Server.new
  end

  def teardown
    super
    @server.cleanup
  end

  def test_the_example_worker_pauses_drains_and_stops
    env = { "BRB_URL" => @server.url, "BRB_TOKEN" => @server.token }
    lib = File.expand_path("../lib", __dir__)
    stdin, out, wait = Open3.popen2e(env, "ruby", "-I#{lib}", EXAMPLE)
    stdin.close
    lines = Queue.new
    all = []
    reader = Thread.new { out.each_line { |l| lines << l.chomp } }
    take = lambda do |re|
      eventually(10, "the example printed #{re.inspect}; it printed #{all.last(5)}") do
        all << lines.pop until lines.empty?
        all.find { |l| l.match?(re) }
      end
    end
    take.call(/job \d+ done/)
    sw = @server.pause
    take.call(/\Apaused \(version #{sw['version']}\)/)
    paused_at = all.index { |l| l.start_with?("paused") }
    eventually(5, "the worker reports paused once drained") do
      w = @server.workers["workers"].first
      w && w["status"] == "paused"
    end
    all << lines.pop until lines.empty?
    assert_operator all[paused_at..].count { |l| l.match?(/job \d+ done/) }, :<=, 4,
                    "only the jobs in flight at the pause finish"
    Process.kill("TERM", wait.pid)
    assert wait.value.success?
    reader.join
    all << lines.pop until lines.empty?
    assert_match(/\Astopped after \d+ jobs\z/, all.last)
    refute(all.any? { |l| l.include?(@server.token) })
  end
end
