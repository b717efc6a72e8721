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
	"sync"
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

// source is an open event stream: next gives the body's bytes as they arrive (valid until
// the next call), Close ends it (also from another goroutine).
type source interface {
	next() ([]byte, error)
	Close() error
}

// openStream opens the per-switch event stream on one base URL. Without a forward proxy
// for that URL the gate dials the connection itself and reads the answer in its own
// goroutine: one connection, one small buffer and no transport goroutines per gate, which
// is what lets a process hold a thousand gates. Through a proxy, net/http does it.
func (g *Gate) openStream(b base, lastID string) (source, error) {
	path := apiPrefix + "/switches/" + url.PathEscape(g.s.Switch) + "/events"
	if g.s.direct {
		return g.openStreamDirect(b, b.prefix+path, lastID)
	}
	scheme := "http"
	if b.tls {
		scheme = "https"
	}
	probe := &http.Request{Method: http.MethodGet, URL: &url.URL{Scheme: scheme, Host: b.authority, Path: b.prefix + path}, Header: http.Header{}}
	p, err := g.s.Proxy(probe)
	if err != nil {
		return nil, configErr("proxy for %s: %v", b.url, err)
	}
	if p != nil {
		return g.openStreamHTTP(b, b.url+path, lastID)
	}
	return g.openStreamDirect(b, b.prefix+path, lastID)
}

// connectSlots bounds the stream connects (dial, TLS handshake, request, answer's head) a
// process starts at once. Each runs on a short-lived goroutine, so that the gate's own
// goroutine, which holds the stream for hours, keeps a small stack: net.Dialer and
// crypto/tls grow a stack to 8 KiB. A thousand gates starting together would still grow a
// thousand such stacks at the same instant; through a few slots the stacks are reused.
// A slot is given back after slotHold even while its connect goes on, so that connects to a
// dead or mute host do not hold up the rest.
var connectSlots = make(chan struct{}, 16)

const slotHold = 100 * time.Millisecond

// openOnHelper runs openStream on a goroutine of its own (see connectSlots).
func (g *Gate) openOnHelper(b base, lastID string) (source, error) {
	type result struct {
		src source
		err error
	}
	ch := make(chan result, 1)
	go func() {
		connectSlots <- struct{}{}
		var once sync.Once
		release := func() { once.Do(func() { <-connectSlots }) }
		t := time.AfterFunc(slotHold, release)
		src, err := g.openStream(b, lastID)
		t.Stop()
		release()
		ch <- result{src, err}
	}()
	r := <-ch
	return r.src, r.err
}

func (g *Gate) dialAndHandshake(b base) (net.Conn, error) {
	d := net.Dialer{KeepAlive: 15 * time.Second}
	ctx, done := g.opContext(&g.dialCancel, connectTimeout)
	raw, err := d.DialContext(ctx, "tcp", b.addr)
	done()
	if err != nil {
		return nil, &UnreachableError{Err: fmt.Errorf("%s: %w", b.url, err)}
	}
	if !g.holdConn(raw) {
		raw.Close()
		return nil, context.Canceled
	}
	// The answer's head must come within answerTimeout of the connection (cleared once it
	// has come).
	_ = raw.SetDeadline(time.Now().Add(answerTimeout))
	if !b.tls {
		return raw, nil
	}
	tc := tls.Client(raw, g.c.tlsFor(b.host))
	// Bounded by the connection's deadline, and ended by Close closing the connection.
	if err := tc.Handshake(); err != nil {
		raw.Close()
		g.holdConn(nil)
		if isCertError(err) {
			return nil, &TLSError{URL: b.url, Err: err}
		}
		return nil, &UnreachableError{Err: fmt.Errorf("%s: TLS handshake: %w", b.url, err)}
	}
	g.holdConn(tc)
	return tc, nil
}

func (g *Gate) openStreamDirect(b base, path, lastID string) (source, error) {
	conn, err := g.dialAndHandshake(b)
	if err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			conn.Close()
			g.holdConn(nil)
		}
	}()
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
	br := bufio.NewReaderSize(conn, 512)
	res, err := http.ReadResponse(br, nil)
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return nil, &UnreachableError{Err: fmt.Errorf("%s: no answer to the event-stream request within %s", b.url, answerTimeout), noAnswer: true}
		}
		if isCertError(err) {
			return nil, &TLSError{URL: b.url, Err: err}
		}
		return nil, &UnreachableError{Err: fmt.Errorf("%s: reading the answer: %w", b.url, err)}
	}
	if err := checkStreamAnswer(b.url, res); err != nil {
		return nil, err
	}
	_ = conn.SetDeadline(time.Time{})
	ok = true
	// Only the head is taken from net/http: the body is read from the connection itself,
	// so nothing of the answer (its header map, the head's buffer) stays with the gate.
	chunked := len(res.TransferEncoding) > 0 && res.TransferEncoding[0] == "chunked"
	var pending []byte
	if n := br.Buffered(); n > 0 {
		b, _ := br.Peek(n)
		pending = append([]byte(nil), b...)
	}
	return newWireBody(conn, pending, chunked), nil
}

func (g *Gate) openStreamHTTP(b base, full, lastID string) (source, error) {
	// Close cancels the request while it waits for its answer (dialCancel), then by closing
	// the body (holdConn).
	ctx, cancel := context.WithCancel(context.Background())
	g.mu.Lock()
	if g.closed {
		cancel()
	}
	g.dialCancel = cancel
	g.mu.Unlock()
	defer func() {
		g.mu.Lock()
		g.dialCancel = nil
		g.mu.Unlock()
	}()
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
			return nil, &UnreachableError{Err: fmt.Errorf("%s: no answer to the event-stream request within %s", b.url, answerTimeout), noAnswer: true}
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
	body := &readerBody{body: res.Body, cancel: cancel, buf: make([]byte, 512)}
	if !g.holdConn(body) {
		body.Close()
		return nil, context.Canceled
	}
	return body, nil
}

// readerBody is a stream read through net/http (via a proxy).
type readerBody struct {
	body   io.ReadCloser
	cancel context.CancelFunc
	buf    []byte
}

func (r *readerBody) next() ([]byte, error) {
	n, err := r.body.Read(r.buf)
	if n > 0 {
		return r.buf[:n], nil
	}
	if err == nil {
		err = io.ErrNoProgress
	}
	return nil, err
}

func (r *readerBody) Close() error {
	r.cancel()
	return r.body.Close()
}

// checkStreamAnswer turns anything but a 200 text/event-stream into an error (reading the
// error body).
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
	timer *time.Timer
	fired atomic.Bool
}

func newIdleWatch(src source, idle time.Duration) *idleWatch {
	w := &idleWatch{}
	w.timer = time.AfterFunc(idle, func() {
		w.fired.Store(true)
		src.Close()
	})
	return w
}
