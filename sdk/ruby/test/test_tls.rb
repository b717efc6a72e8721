# frozen_string_literal: true

require_relative "test_helper"

# TLS with a private CA and a client certificate (mutual TLS), against a real `brb server`
# listening with --tls-cert/--tls-key/--tls-client-ca. The certificates are made here.
class TestTls < Minitest::Test
  include BrbTest::Helpers

  def cert(subject, key, issuer: nil, issuer_key: nil, ca: false, san: nil)
    c = OpenSSL::X509::Certificate.new
    c.version = 2
    c.serial = rand(1 << 62)
    c.subject = OpenSSL::X509::Name.parse(subject)
    c.issuer = issuer ? issuer.subject : c.subject
    c.public_key = key
    c.not_before = Time.now - 60
    c.not_after = Time.now + 3600
    ef = OpenSSL::X509::ExtensionFactory.new
    ef.subject_certificate = c
    ef.issuer_certificate = issuer || c
    c.add_extension(ef.create_extension("basicConstraints", ca ? "CA:TRUE" : "CA:FALSE", true))
    c.add_extension(ef.create_extension("keyUsage", ca ? "keyCertSign,cRLSign" : "digitalSignature", true))
    c.add_extension(ef.create_extension("subjectAltName", san)) if san
    c.add_extension(ef.create_extension("subjectKeyIdentifier", "hash"))
    c.sign(issuer_key || key, OpenSSL::Digest.new("SHA256"))
    c
  end

  def pem(dir, name, obj)
    path = File.join(dir, name)
    File.write(path, obj.to_pem)
    path
  end

  def setup
    @log = BrbTest::LogCapture.new
    @dir = Dir.mktmpdir("brb-ruby-tls")
    ca_key = OpenSSL::PKey::EC.generate("prime256v1")
    ca = cert("/CN=brb test CA", ca_key, ca: true)
    @ca, @ca_key = ca, ca_key
    srv_key = OpenSSL::PKey::EC.generate("prime256v1")
    srv = cert("/CN=localhost", srv_key, issuer: ca, issuer_key: ca_key, san: "DNS:localhost,IP:127.0.0.1")
    cli_ca_key = OpenSSL::PKey::EC.generate("prime256v1")
    cli_ca = cert("/CN=brb test client CA", cli_ca_key, ca: true)
    @cli_key = OpenSSL::PKey::EC.generate("prime256v1")
    @cli = cert("/CN=worker-1", @cli_key, issuer: cli_ca, issuer_key: cli_ca_key)
    @ca_file = pem(@dir, "ca.pem", ca)
    @cli_cert_file = pem(@dir, "client.pem", @cli)
    @cli_key_file = pem(@dir, "client.key", @cli_key)
    @server = BrbTest::Server.new(args: ["--tls-cert", pem(@dir, "cert.pem", srv),
                                         "--tls-key", pem(@dir, "key.pem", srv_key),
                                         "--tls-client-ca", pem(@dir, "clients.pem", cli_ca)])
    @server.tls = { ca_file: @ca_file, cert: @cli, key: @cli_key }
  end

  def teardown
    super
    @server&.cleanup
    FileUtils.rm_rf(@dir)
  end

  def opts(**o)
    { urls: [@server.url], token: @server.token, switch: "workers", logger: @log.logger,
      backoff_base: 0.1, backoff_cap: 0.3, answer_timeout: 3, worker_id: "rb-tls" }.merge(o)
  end

  def test_private_ca_and_client_certificate
    assert @server.url.start_with?("https://127.0.0.1:")

    untrusted = gate(**opts(ca_file: nil, client_cert: @cli_cert_file, client_key: @cli_key_file))
    eventually(5) { untrusted.last_error.to_s.include?("not trusted") }
    assert_match(/certificate verify failed.*give the CA that signed it/, untrusted.last_error)
    untrusted.close

    no_cert = gate(**opts(ca_file: @ca_file, client_cert: nil, client_key: nil))
    eventually(5) { no_cert.last_error }
    refute no_cert.ready?, "the server requires a client certificate"
    assert_match(/certificate required.*client_cert/, no_cert.last_error)
    no_cert.close

    g = gate(**opts(ca_file: @ca_file, client_cert: @cli_cert_file, client_key: @cli_key_file))
    assert g.ready(timeout: 10), "connected over mutual TLS: #{g.last_error}"
    assert g.open?
    @server.pause
    eventually(1, "a pause over TLS is seen within 1 s") { !g.open? }
    eventually(5, "reports go over TLS too") { @server.worker("rb-tls")&.fetch("status") == "paused" }
  end

  def test_both_transports_by_host_name
    url = @server.url.sub("127.0.0.1", "localhost")
    gs = %i[sse long_poll].map do |t|
      gate(**opts(urls: [url], transport: t, ca_file: @ca_file, client_cert: @cli_cert_file,
                  client_key: @cli_key_file, worker_id: "rb-tls-#{t}"))
    end
    gs.each { |g| assert g.ready(timeout: 10), g.last_error.to_s }
    sw = @server.pause
    eventually(1) { gs.none?(&:open?) }
    gs.each { |g| assert_equal sw["version"], g.version }
  end

  # A server whose certificate, from the trusted CA, names another host: refused, and said.
  def test_a_certificate_for_another_host_is_refused
    key = OpenSSL::PKey::EC.generate("prime256v1")
    other = cert("/CN=elsewhere", key, issuer: @ca, issuer_key: @ca_key, san: "DNS:elsewhere.example")
    ctx = OpenSSL::SSL::SSLContext.new
    ctx.cert = other
    ctx.key = key
    tcp = TCPServer.new("127.0.0.1", 0)
    tls = OpenSSL::SSL::SSLServer.new(tcp, ctx)
    served = 0
    t = Thread.new do
      loop do
        c = tls.accept
        served += 1
        c.write(BrbTest.sse_head + BrbTest.switch_event("running", 1))
      rescue OpenSSL::SSL::SSLError, IOError, SystemCallError
        nil
      end
    end
    g = gate(**opts(urls: ["https://127.0.0.1:#{tcp.addr[1]}"], ca_file: @ca_file))
    eventually(5) { g.last_error.to_s.include?("does not match") }
    refute g.ready?
    refute g.open?
  ensure
    t&.kill
    tcp&.close
  end
end
