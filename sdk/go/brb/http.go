package brb

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Version of this SDK, sent in the User-Agent header.
const Version = "0.1.0"

const (
	userAgent      = "brb-go/" + Version
	apiPrefix      = "/api/v1"
	connectTimeout = 3 * time.Second
	// requestTimeout bounds a report or a plain GET.
	requestTimeout = 15 * time.Second
	maxErrorBody   = 64 << 10
	maxSwitchBody  = 256 << 10
)

// answerTimeout bounds the wait for an answer's head on a stream request: a server that
// accepted the connection and never answers must not hold the gate forever. (A variable
// so that the tests of that case need not wait ten seconds.)
var answerTimeout = 10 * time.Second

// APIError is an answer from the control plane (or from something in front of it) that is
// not the success asked for.
type APIError struct {
	URL    string // the base URL that answered
	Status int    // the HTTP status
	// Code and Message come from the control plane's {"error":{"code","message"}} body;
	// Code is empty when the body was something else (a proxy's page).
	Code    string
	Message string
	// RetryAfter is the server's Retry-After (429, 503), zero when absent.
	RetryAfter time.Duration
	// Location is where a redirect pointed (never followed).
	Location string
}

func (e *APIError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s answered HTTP %d", e.URL, e.Status)
	if e.Code != "" {
		fmt.Fprintf(&b, " %s", e.Code)
	}
	if e.Message != "" {
		fmt.Fprintf(&b, ": %s", e.Message)
	}
	if e.Location != "" {
		fmt.Fprintf(&b, " (a redirect to %s, not followed)", e.Location)
	}
	if e.RetryAfter > 0 {
		fmt.Fprintf(&b, " (retry after %s)", e.RetryAfter)
	}
	switch e.Status {
	case http.StatusUnauthorized:
		b.WriteString("; the token is missing, unknown, expired or revoked: check BRB_TOKEN / the token file")
	case http.StatusForbidden:
		b.WriteString("; the token may not read this switch: check its role and scope")
	}
	return b.String()
}

// refused says whether retrying soon cannot help: the control plane itself (its error body
// says so) finds the token, its scope or the switch name wrong until someone changes it.
// The same status from something in front of it (a proxy that forbids streams) is not
// that.
func (e *APIError) refused() bool {
	return e.Code != "" && (e.Status == http.StatusUnauthorized || e.Status == http.StatusForbidden ||
		e.Status == http.StatusNotFound)
}

// UnreachableError says no control-plane URL could be reached.
type UnreachableError struct {
	// Err is the last URL's error.
	Err error
	// noAnswer: the connection was made but no answer's head came within answerTimeout,
	// which is what a proxy that holds streams back looks like. (A connection cut before
	// the answer is not that: it is what a load balancer does while the control plane
	// restarts.)
	noAnswer bool
}

func (e *UnreachableError) Error() string { return "cannot reach the control plane: " + e.Err.Error() }
func (e *UnreachableError) Unwrap() error { return e.Err }

// ProtocolError is an answer that is not the control plane's API (wrong content type, a
// body that does not parse).
type ProtocolError struct {
	URL     string
	Message string
}

func (e *ProtocolError) Error() string {
	return fmt.Sprintf("unexpected answer from %s: %s", e.URL, e.Message)
}

// client is what a gate needs to talk to the control plane. Gates with the same TLS
// settings share one http.Transport (and so its idle connections).
type client struct {
	http *http.Client
	tls  *tls.Config // for the streams' own connections

	tlsMu     sync.Mutex
	tlsByHost map[string]*tls.Config

	reports reportQueue
}

var (
	clientsMu sync.Mutex
	clients   = map[string]*client{}
)

func newClient(s *settings, proxyGiven bool) (*client, error) {
	tlsConf, key, err := tlsConfig(s)
	if err != nil {
		return nil, err
	}
	if !proxyGiven {
		clientsMu.Lock()
		defer clientsMu.Unlock()
		if c, ok := clients[key]; ok {
			return c, nil
		}
	}
	tr := &http.Transport{
		Proxy: s.Proxy,
		DialContext: (&net.Dialer{
			Timeout:   connectTimeout,
			KeepAlive: 15 * time.Second,
		}).DialContext,
		TLSClientConfig:     tlsConf.Clone(),
		TLSHandshakeTimeout: answerTimeout,
		ForceAttemptHTTP2:   true,
		// Reports from many gates in one process share a few warm connections; the server
		// closes idle ones after its header-read timeout (10 s), so drop them first.
		MaxIdleConns:        maxReporters * 2,
		MaxIdleConnsPerHost: maxReporters,
		IdleConnTimeout:     8 * time.Second,
		ReadBufferSize:      2048,
		WriteBufferSize:     1024,
	}
	c := &client{
		http: &http.Client{
			Transport: tr,
			// A redirect is never followed: it would send the token to another host.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		tls: tlsConf,
	}
	if !proxyGiven {
		clients[key] = c
	}
	return c, nil
}

// tlsConfig builds the TLS settings from the files named, and a key naming them and their
// contents (so a changed file gets a new transport).
func tlsConfig(s *settings) (*tls.Config, string, error) {
	conf := &tls.Config{
		MinVersion: tls.VersionTLS12,
		// Resumed sessions make a fleet's reconnect after a restart cheaper on both ends.
		ClientSessionCache: tls.NewLRUClientSessionCache(64),
	}
	h := sha256.New()
	if s.CAFile != "" {
		pem, err := os.ReadFile(s.CAFile)
		if err != nil {
			return nil, "", configErr("CA file: %v", err)
		}
		pool, err := x509.SystemCertPool()
		if err != nil || pool == nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, "", configErr("CA file %s: no PEM certificate in it", s.CAFile)
		}
		conf.RootCAs = pool
		h.Write([]byte("ca\x00"))
		h.Write(pem)
	}
	if s.ClientCert != "" {
		certPEM, err := os.ReadFile(s.ClientCert)
		if err != nil {
			return nil, "", configErr("client certificate: %v", err)
		}
		keyPEM, err := os.ReadFile(s.ClientKey)
		if err != nil {
			return nil, "", configErr("client key: %v", err)
		}
		cert, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			return nil, "", configErr("client certificate/key: %v", err)
		}
		conf.Certificates = []tls.Certificate{cert}
		h.Write([]byte("cert\x00"))
		h.Write(certPEM)
		h.Write(keyPEM)
	}
	return conf, hex.EncodeToString(h.Sum(nil)), nil
}

// apiError reads an error answer (at most maxErrorBody of it).
func apiError(baseURL string, res *http.Response) *APIError {
	e := &APIError{URL: baseURL, Status: res.StatusCode}
	body, _ := io.ReadAll(io.LimitReader(res.Body, maxErrorBody))
	var wire struct {
		Error struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	if json.Unmarshal(body, &wire) == nil && wire.Error.Code != "" {
		e.Code, e.Message = wire.Error.Code, wire.Error.Message
	} else if res.StatusCode < 300 || res.StatusCode >= 400 {
		e.Message = http.StatusText(res.StatusCode)
	}
	if res.StatusCode >= 300 && res.StatusCode < 400 {
		e.Location = res.Header.Get("Location")
		if e.Location == "" {
			e.Location = "(no Location)"
		}
	}
	e.RetryAfter = retryAfter(res.Header.Get("Retry-After"), time.Now())
	return e
}

// retryAfter reads Retry-After: seconds or an HTTP date; zero when absent or unreadable.
func retryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if n, err := strconv.ParseInt(v, 10, 64); err == nil {
		if n <= 0 {
			return 0
		}
		if n > 86400 {
			n = 86400
		}
		return time.Duration(n) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return 0
}

// call sends one request to each base in turn, starting with the one that last answered,
// until one answers; an answer (even an error) is final. It returns the body of a 2xx.
func (g *Gate) call(ctx context.Context, method, path string, body []byte, timeout time.Duration) ([]byte, error) {
	var lastErr error
	n := len(g.s.bases)
	start := int(g.sticky.Load())
	for i := 0; i < n; i++ {
		idx := (start + i) % n
		b := g.s.bases[idx]
		out, err := g.callOne(ctx, b, method, path, body, timeout)
		var unreachable *UnreachableError
		if errors.As(err, &unreachable) {
			lastErr = err
			if ctx.Err() != nil {
				return nil, err
			}
			continue
		}
		g.sticky.Store(int32(idx))
		return out, err
	}
	return nil, lastErr
}

func (g *Gate) callOne(ctx context.Context, b base, method, path string, body []byte, timeout time.Duration) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, b.url+apiPrefix+path, rd)
	if err != nil {
		return nil, &ProtocolError{URL: b.url, Message: err.Error()}
	}
	req.Header.Set("User-Agent", userAgent)
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if tok := g.token(); tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	res, err := g.c.http.Do(req)
	if err != nil {
		return nil, &UnreachableError{Err: fmt.Errorf("%s: %w", b.url, stripURL(err))}
	}
	defer res.Body.Close()
	if res.StatusCode < 200 || res.StatusCode > 299 {
		return nil, apiError(b.url, res)
	}
	out, err := io.ReadAll(io.LimitReader(res.Body, maxSwitchBody))
	if err != nil {
		return nil, &UnreachableError{Err: fmt.Errorf("%s: reading the answer: %w", b.url, err)}
	}
	return out, nil
}

// stripURL drops the *url.Error wrapper, which repeats the whole URL in every message.
func stripURL(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}
