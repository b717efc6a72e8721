package brb

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"time"
)

// TLSError is a TLS handshake the gate refused: the certificate does not verify against
// the system's CAs and CAFile, or the server wants a client certificate it did not accept.
// Retrying soon cannot help; the gate retries at its longest backoff.
type TLSError struct {
	URL string
	Err error
}

func (e *TLSError) Error() string { return fmt.Sprintf("TLS with %s failed: %v", e.URL, e.Err) }
func (e *TLSError) Unwrap() error { return e.Err }

// openStream opens the per-switch event stream on one base URL. Without a forward proxy
// for that URL the gate dials the connection itself and reads the answer in its own
// goroutine: one connection, one small buffer and no transport goroutines per gate, which
// is what lets a process hold a thousand gates. Through a proxy, net/http does it.
func (g *Gate) openStream(ctx context.Context, b base, lastID string) (io.ReadCloser, error) {
	path := apiPrefix + "/switches/" + url.PathEscape(g.s.Switch) + "/events"
	probe := &http.Request{Method: http.MethodGet, URL: &url.URL{Scheme: map[bool]string{true: "https", false: "http"}[b.tls], Host: b.authority, Path: b.prefix + path}, Header: http.Header{}}
	if p, err := g.s.Proxy(probe); err == nil && p != nil {
		return g.openStreamHTTP(ctx, b, b.url+path, lastID)
	} else if err != nil {
		return nil, configErr("proxy for %s: %v", b.url, err)
	}
	return g.openStreamDirect(ctx, b, b.prefix+path, lastID)
}

func (g *Gate) openStreamDirect(ctx context.Context, b base, path, lastID string) (io.ReadCloser, error) {
	d := net.Dialer{Timeout: connectTimeout, KeepAlive: 15 * time.Second}
	raw, err := d.DialContext(ctx, "tcp", b.addr)
	if err != nil {
		return nil, &UnreachableError{Err: fmt.Errorf("%s: %w", b.url, err)}
	}
	conn := raw
	if !g.holdConn(conn) {
		return nil, context.Canceled
	}
	ok := false
	defer func() {
		if !ok {
			conn.Close()
			g.holdConn(nil)
		}
	}()
	_ = conn.SetDeadline(time.Now().Add(answerTimeout))
	if b.tls {
		tc := tls.Client(raw, g.c.tlsFor(b.host))
		if err := tc.HandshakeContext(ctx); err != nil {
			if isCertError(err) {
				return nil, &TLSError{URL: b.url, Err: err}
			}
			return nil, &UnreachableError{Err: fmt.Errorf("%s: TLS handshake: %w", b.url, err)}
		}
		conn = tc
		g.holdConn(conn)
	}
	var req strings.Builder
	req.Grow(256)
	fmt.Fprintf(&req, "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: %s\r\nAccept: text/event-stream\r\n", path, b.authority, userAgent)
	if tok := g.token(); tok != "" {
		req.WriteString("Authorization: Bearer " + tok + "\r\n")
	}
	if lastID != "" {
		req.WriteString("Last-Event-ID: " + lastID + "\r\n")
	}
	req.WriteString("\r\n")
	if _, err := io.WriteString(conn, req.String()); err != nil {
		return nil, &UnreachableError{Err: fmt.Errorf("%s: sending the request: %w", b.url, err)}
	}
	// A small buffer: an event is a few hundred bytes, and a thousand gates hold one each.
	br := bufio.NewReaderSize(conn, 1024)
	res, err := http.ReadResponse(br, nil)
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return nil, &UnreachableError{Err: fmt.Errorf("%s: no answer to the event-stream request within %s", b.url, answerTimeout)}
		}
		if isCertError(err) || strings.Contains(err.Error(), "certificate") {
			return nil, &TLSError{URL: b.url, Err: err}
		}
		return nil, &UnreachableError{Err: fmt.Errorf("%s: reading the answer: %w", b.url, err)}
	}
	_ = conn.SetDeadline(time.Time{})
	if err := checkStreamAnswer(b.url, res); err != nil {
		_ = conn.SetDeadline(time.Now().Add(connectTimeout))
		return nil, err
	}
	ok = true
	return &connBody{Reader: res.Body, conn: conn}, nil
}

// connBody is a stream body whose Close closes the connection it came on (the stream is
// never read to its end, so the connection is never reused).
type connBody struct {
	io.Reader
	conn net.Conn
}

func (c *connBody) Close() error { return c.conn.Close() }

func (g *Gate) openStreamHTTP(ctx context.Context, b base, full, lastID string) (io.ReadCloser, error) {
	ctx, cancel := context.WithCancel(ctx)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, full, nil)
	if err != nil {
		cancel()
		return nil, &ProtocolError{URL: b.url, Message: err.Error()}
	}
	req.Header.Set("User-Agent", userAgent)
	req.Header.Set("Accept", "text/event-stream")
	if tok := g.token(); tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	if lastID != "" {
		req.Header.Set("Last-Event-ID", lastID)
	}
	var late atomic.Bool
	timer := time.AfterFunc(answerTimeout, func() { late.Store(true); cancel() })
	res, err := g.c.http.Do(req)
	timer.Stop()
	if err != nil {
		cancel()
		if late.Load() {
			return nil, &UnreachableError{Err: fmt.Errorf("%s: no answer to the event-stream request within %s", b.url, answerTimeout)}
		}
		if isCertError(err) {
			return nil, &TLSError{URL: b.url, Err: stripURL(err)}
		}
		return nil, &UnreachableError{Err: fmt.Errorf("%s: %w", b.url, stripURL(err))}
	}
	if err := checkStreamAnswer(b.url, res); err != nil {
		res.Body.Close()
		cancel()
		return nil, err
	}
	body := &cancelBody{ReadCloser: res.Body, cancel: cancel}
	if !g.holdConn(body) {
		body.Close()
		return nil, context.Canceled
	}
	return body, nil
}

type cancelBody struct {
	io.ReadCloser
	cancel context.CancelFunc
}

func (c *cancelBody) Close() error {
	c.cancel()
	return c.ReadCloser.Close()
}

// checkStreamAnswer turns anything but a 200 text/event-stream into an error (and reads
// the error body, which the caller then drops).
func checkStreamAnswer(baseURL string, res *http.Response) error {
	if res.StatusCode != http.StatusOK {
		return apiError(baseURL, res)
	}
	ct, _, _ := mime.ParseMediaType(res.Header.Get("Content-Type"))
	if ct != "text/event-stream" {
		return &ProtocolError{URL: baseURL, Message: fmt.Sprintf("the event stream answered with Content-Type %q, not text/event-stream (a proxy in the way?)", res.Header.Get("Content-Type"))}
	}
	return nil
}

func isCertError(err error) bool {
	var unknown x509.UnknownAuthorityError
	var invalid x509.CertificateInvalidError
	var host x509.HostnameError
	if errors.As(err, &unknown) || errors.As(err, &invalid) || errors.As(err, &host) {
		return true
	}
	// The server refusing our client certificate arrives as a TLS alert.
	msg := err.Error()
	return strings.Contains(msg, "tls: bad certificate") || strings.Contains(msg, "certificate required") ||
		strings.Contains(msg, "tls: unknown certificate authority")
}

// tlsFor gives the TLS settings for one server name (shared by every gate of the client).
func (c *client) tlsFor(host string) *tls.Config {
	c.tlsMu.Lock()
	defer c.tlsMu.Unlock()
	if conf, ok := c.tlsByHost[host]; ok {
		return conf
	}
	conf := c.tls.Clone()
	conf.ServerName = host
	if c.tlsByHost == nil {
		c.tlsByHost = map[string]*tls.Config{}
	}
	c.tlsByHost[host] = conf
	return conf
}

// idleWatch closes a stream that stays silent for the idle timeout: a connection that a
// dead peer or a broken middlebox left open would otherwise keep a gate believing it is
// connected.
type idleWatch struct {
	r     io.Reader
	timer *time.Timer
	idle  time.Duration
	fired atomic.Bool
}

func newIdleWatch(body io.ReadCloser, idle time.Duration) *idleWatch {
	w := &idleWatch{r: body, idle: idle}
	w.timer = time.AfterFunc(idle, func() {
		w.fired.Store(true)
		body.Close()
	})
	return w
}

func (w *idleWatch) Read(p []byte) (int, error) {
	n, err := w.r.Read(p)
	if n > 0 {
		w.timer.Reset(w.idle)
	}
	return n, err
}

func (w *idleWatch) stop() { w.timer.Stop() }
