package brb_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/big-red-button/brb/sdk/go/brb"
	"github.com/big-red-button/brb/sdk/go/internal/brbtest"
)

// testCA issues certificates for the test: a private CA as an operator would make one.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

func newCA(t *testing.T, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &testCA{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// issue writes a leaf certificate and its key into dir; server leaves name 127.0.0.1.
func (ca *testCA) issue(t *testing.T, dir, name string, server bool) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.IPAddresses = []net.IP{net.ParseIP("127.0.0.1")}
		tmpl.DNSNames = []string{"localhost"}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, name+".pem"), filepath.Join(dir, name+".key")
	write(t, certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	write(t, keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}))
	return certFile, keyFile
}

func write(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// The control plane on TLS with a private CA and mutual TLS: a gate that trusts the CA
// and shows its client certificate follows the switch and is counted; one without the
// certificate, or without the CA, gets a clear TLS error and no retry storm.
func TestTLSPrivateCAAndClientCertificate(t *testing.T) {
	dir := t.TempDir()
	ca, clientCA := newCA(t, "brb test CA"), newCA(t, "brb clients CA")
	caFile, clientCAFile := filepath.Join(dir, "ca.pem"), filepath.Join(dir, "clients-ca.pem")
	write(t, caFile, ca.pem)
	write(t, clientCAFile, clientCA.pem)
	srvCert, srvKey := ca.issue(t, dir, "server", true)
	cliCert, cliKey := clientCA.issue(t, dir, "worker", false)

	srv := brbtest.Start(t, "--tls-cert", srvCert, "--tls-key", srvKey, "--tls-client-ca", clientCAFile)
	if srv.URL[:8] != "https://" {
		t.Fatalf("the server is not on TLS: %s", srv.URL)
	}
	admin := srv.Admin()
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca.pem)
	pair, err := tls.LoadX509KeyPair(cliCert, cliKey)
	if err != nil {
		t.Fatal(err)
	}
	admin.HTTP.Transport = &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{pair}}}

	g, _ := start(t, brb.Config{URLs: []string{srv.URL}, Token: srv.Token, WorkerID: "w-tls",
		CAFile: caFile, ClientCert: cliCert, ClientKey: cliKey})
	ready(t, g)
	paused := admin.SetState("workers", "paused")
	brbtest.Eventually(t, wait, "the pause arrives over TLS", func() bool { return !g.IsOpen() && g.Version() == paused.Version })
	brbtest.Eventually(t, wait, "the report arrives over TLS", func() bool {
		st, _, _, _, ok := worker(t, admin, "w-tls")
		return ok && st == "paused"
	})

	for _, c := range []struct {
		name string
		cfg  brb.Config
		says string
	}{
		{"no client certificate", brb.Config{CAFile: caFile}, "certificate required"},
		{"unknown CA", brb.Config{ClientCert: cliCert, ClientKey: cliKey}, "certificate signed by unknown authority"},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg := c.cfg
			cfg.URLs = []string{srv.URL}
			cfg.Token = srv.Token
			cfg.BackoffBase = time.Millisecond
			cfg.BackoffCap = 300 * time.Millisecond
			g, logs := start(t, cfg)
			brbtest.Eventually(t, wait, "a TLS error", func() bool { return logs.Has(c.says) })
			var tlsErr *brb.TLSError
			if !errors.As(g.LastError(), &tlsErr) {
				t.Fatalf("last error %v, want a TLSError", g.LastError())
			}
			if n := logs.Count(c.says); n != 1 {
				t.Fatalf("logged %d times", n)
			}
			if g.IsOpen() || g.Connected() {
				t.Fatal("the gate opened without TLS")
			}
		})
	}
}
