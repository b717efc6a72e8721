package brb

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"
)

// FailPolicy says what a gate does while the control plane cannot be reached.
type FailPolicy int

const (
	// KeepLastKnown acts on the last state the control plane confirmed (closed if none yet):
	// an outage never silently undoes a pause. The default.
	KeepLastKnown FailPolicy = iota
	// FailOpen lets work through once the control plane has been unreachable for Grace.
	FailOpen
	// FailClosed stops work once the control plane has been unreachable for Grace.
	FailClosed
)

// String gives the policy's name as the protocol and the docs spell it.
func (p FailPolicy) String() string {
	switch p {
	case KeepLastKnown:
		return "keep_last_known"
	case FailOpen:
		return "open"
	case FailClosed:
		return "closed"
	}
	return fmt.Sprintf("FailPolicy(%d)", int(p))
}

// MarshalText writes the policy's name.
func (p FailPolicy) MarshalText() ([]byte, error) { return []byte(p.String()), nil }

// UnmarshalText reads "keep_last_known", "open" or "closed", so a policy can come from a
// JSON, YAML or flag value.
func (p *FailPolicy) UnmarshalText(b []byte) error {
	switch string(b) {
	case "keep_last_known", "":
		*p = KeepLastKnown
	case "open":
		*p = FailOpen
	case "closed":
		*p = FailClosed
	default:
		return fmt.Errorf("brb: unknown fail policy %q (want keep_last_known, open or closed)", b)
	}
	return nil
}

// Transport says how a gate learns about changes.
type Transport int

const (
	// Auto holds an SSE stream and falls back to long-poll for a while when SSE keeps being
	// refused (a proxy that forbids or buffers streams). The default.
	Auto Transport = iota
	// SSE only.
	SSE
	// LongPoll only: one request at a time, answered as soon as the version passes ours.
	LongPoll
)

// String gives the transport's name as the protocol spells it.
func (t Transport) String() string {
	switch t {
	case Auto:
		return "auto"
	case SSE:
		return "sse"
	case LongPoll:
		return "long_poll"
	}
	return fmt.Sprintf("Transport(%d)", int(t))
}

// MarshalText writes the transport's name.
func (t Transport) MarshalText() ([]byte, error) { return []byte(t.String()), nil }

// UnmarshalText reads "auto", "sse" or "long_poll".
func (t *Transport) UnmarshalText(b []byte) error {
	switch string(b) {
	case "auto", "":
		*t = Auto
	case "sse":
		*t = SSE
	case "long_poll":
		*t = LongPoll
	default:
		return fmt.Errorf("brb: unknown transport %q (want auto, sse or long_poll)", b)
	}
	return nil
}

// Logger receives the gate's log lines (one call per line). *log.Logger satisfies it.
// Tokens never appear in them.
type Logger interface {
	Printf(format string, v ...any)
}

// Config says which switch a gate follows and how. Zero fields take the defaults written
// next to them; negative durations and counts are refused by NewGate.
type Config struct {
	// URLs of the control plane, one per replica (e.g. "https://brb-1:7070"); default
	// $BRB_URL (comma-separated), else http://127.0.0.1:7070. Each gate starts at a random
	// one and moves to the next when one cannot be reached.
	URLs []string
	// Switch is the switch's name; default "workers" (the Big Red Button's default name).
	Switch string
	// Token is the API token. When empty: the file named by TokenFile, else $BRB_TOKEN,
	// else the file named by $BRB_TOKEN_FILE. A token read from a file is read again after
	// the control plane refuses it (the file may have been rotated).
	Token string
	// TokenFile names a file holding the token (surrounding whitespace is ignored).
	TokenFile string
	// WorkerID names this worker in the control plane's counts; default
	// "hostname-pid-random".
	WorkerID string
	// Policy applies while the control plane is unreachable; default KeepLastKnown.
	Policy FailPolicy
	// Grace is how long the control plane may be unreachable before FailOpen/FailClosed
	// apply; default 10 s.
	Grace time.Duration
	// MaxConcurrency is how many jobs Acquire admits at once; default 1. A ramp's duty
	// cycle applies per slot.
	MaxConcurrency int
	// ReportInterval is the heartbeat report interval (a report also goes out at once on
	// every change); default 5 s. The control plane calls a worker stale after 15 s.
	ReportInterval time.Duration
	// DisableReports stops worker reports. Only for benchmarks of pure fan-out: a gate that
	// does not report is not counted by `brb pause`.
	DisableReports bool
	// DisableSamples stops the sdk_jobs_processed counter samples (at most one a second,
	// while jobs finish) that make the control plane's fleet-wide jobs-per-second graph.
	DisableSamples bool
	// Transport is how changes arrive; default Auto.
	Transport Transport
	// BackoffBase bounds the first reconnect delays (full jitter in [0, bound]); the bound
	// doubles per failed attempt up to BackoffCap. Defaults 1 s and 30 s.
	BackoffBase time.Duration
	BackoffCap  time.Duration
	// IdleTimeout ends a connected stream that sends nothing, not even a keep-alive, for
	// this long (the server sends one every 15 s); default 45 s.
	IdleTimeout time.Duration
	// CAFile is a PEM bundle of CA certificates trusted besides the system's (a private
	// CA); default $BRB_CA_FILE. Certificates are always verified.
	CAFile string
	// ClientCert and ClientKey are PEM files for mutual TLS (both or neither); default
	// $BRB_CLIENT_CERT and $BRB_CLIENT_KEY.
	ClientCert string
	ClientKey  string
	// AllowInsecureHTTP allows http:// to a host that is not loopback: only for a control
	// plane behind a TLS-terminating proxy on a trusted hop. Without it such a URL is
	// refused, since the token would cross the network in clear text.
	AllowInsecureHTTP bool
	// Proxy picks a forward proxy per request; default http.ProxyFromEnvironment
	// (HTTPS_PROXY, HTTP_PROXY, NO_PROXY).
	Proxy func(*http.Request) (*url.URL, error)
	// Logger receives the gate's log lines; default the standard logger (log.Printf).
	Logger Logger
}

// String describes the configuration with the token redacted, so that logging a Config
// (with %v, %+v or %s) never prints the secret.
func (c Config) String() string {
	tok := "none"
	if c.Token != "" {
		tok = "<redacted>"
	}
	return fmt.Sprintf("brb.Config{URLs:%q Switch:%q Token:%s TokenFile:%q WorkerID:%q Policy:%s Grace:%s "+
		"MaxConcurrency:%d ReportInterval:%s DisableReports:%t DisableSamples:%t Transport:%s BackoffBase:%s "+
		"BackoffCap:%s IdleTimeout:%s CAFile:%q ClientCert:%q ClientKey:%q AllowInsecureHTTP:%t}",
		c.URLs, c.Switch, tok, c.TokenFile, c.WorkerID, c.Policy, c.Grace, c.MaxConcurrency,
		c.ReportInterval, c.DisableReports, c.DisableSamples, c.Transport, c.BackoffBase, c.BackoffCap,
		c.IdleTimeout, c.CAFile, c.ClientCert, c.ClientKey, c.AllowInsecureHTTP)
}

// GoString is String: %#v must not print the token either.
func (c Config) GoString() string { return c.String() }

// ErrConfig wraps every error NewGate returns for a configuration it refuses.
var ErrConfig = errors.New("brb: invalid configuration")

func configErr(format string, v ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrConfig}, v...)...)
}

// base is one control-plane URL, split for the stream's own HTTP/1.1 requests.
type base struct {
	url       string // scheme://authority[/prefix], no trailing slash
	tls       bool
	addr      string // host:port to dial
	authority string // Host header
	host      string // for TLS server name verification
	prefix    string
}

// settings is a Config with defaults applied and files read.
type settings struct {
	Config
	bases     []base // shared, read-only, by gates with the same URLs
	tokenFrom string // the file the token came from ("" when given directly)
	direct    bool   // no proxy can apply: streams need not ask Proxy
}

// proxyEnvEmpty says whether http.ProxyFromEnvironment would never name a proxy.
func proxyEnvEmpty() bool {
	for _, k := range []string{"HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "REQUEST_METHOD"} {
		if os.Getenv(k) != "" {
			return false
		}
	}
	return true
}

// parsedBases keeps the parsed URL lists, so that a thousand gates of one process with the
// same URLs share one.
var parsedBases sync.Map // "allow\x00url\x00url..." -> []base

func parseBases(urls []string, allowInsecure bool) ([]base, error) {
	key := fmt.Sprintf("%t\x00%s", allowInsecure, strings.Join(urls, "\x00"))
	if v, ok := parsedBases.Load(key); ok {
		return v.([]base), nil
	}
	var bases []base
	for _, u := range urls {
		b, err := parseBase(u, allowInsecure)
		if err != nil {
			return nil, err
		}
		bases = append(bases, b)
	}
	parsedBases.Store(key, bases)
	return bases, nil
}

func resolve(c Config) (*settings, error) {
	s := &settings{Config: c}
	if len(s.URLs) == 0 {
		env := os.Getenv("BRB_URL")
		if env == "" {
			env = "http://127.0.0.1:7070"
		}
		for _, u := range strings.Split(env, ",") {
			if u = strings.TrimSpace(u); u != "" {
				s.URLs = append(s.URLs, u)
			}
		}
		if len(s.URLs) == 0 {
			return nil, configErr("BRB_URL names no control-plane URL")
		}
	}
	bases, err := parseBases(s.URLs, c.AllowInsecureHTTP)
	if err != nil {
		return nil, err
	}
	s.bases = bases
	if s.Switch == "" {
		s.Switch = "workers"
	}
	envDefault := func(v *string, name string) {
		if *v == "" {
			*v = os.Getenv(name)
		}
	}
	envDefault(&s.CAFile, "BRB_CA_FILE")
	envDefault(&s.ClientCert, "BRB_CLIENT_CERT")
	envDefault(&s.ClientKey, "BRB_CLIENT_KEY")
	if c.MaxConcurrency < 0 {
		return nil, configErr("MaxConcurrency must be at least 1 (0 means the default, 1), got %d", c.MaxConcurrency)
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"Grace", c.Grace}, {"ReportInterval", c.ReportInterval}, {"BackoffBase", c.BackoffBase},
		{"BackoffCap", c.BackoffCap}, {"IdleTimeout", c.IdleTimeout}} {
		if d.v < 0 {
			return nil, configErr("%s must not be negative, got %s", d.name, d.v)
		}
	}
	def := func(v *time.Duration, d time.Duration) {
		if *v == 0 {
			*v = d
		}
	}
	def(&s.Grace, 10*time.Second)
	def(&s.ReportInterval, 5*time.Second)
	def(&s.BackoffBase, time.Second)
	def(&s.BackoffCap, 30*time.Second)
	def(&s.IdleTimeout, 45*time.Second)
	if s.BackoffCap < s.BackoffBase {
		s.BackoffCap = s.BackoffBase
	}
	if s.MaxConcurrency == 0 {
		s.MaxConcurrency = 1
	}
	if s.WorkerID == "" {
		s.WorkerID = DefaultWorkerID()
	}
	if len(s.WorkerID) > 128 || strings.IndexFunc(s.WorkerID, isControl) >= 0 {
		return nil, configErr("WorkerID must be 1 to 128 characters with no control characters")
	}
	if s.Proxy == nil {
		s.Proxy = http.ProxyFromEnvironment
		s.direct = proxyEnvEmpty()
	}
	if s.Logger == nil {
		s.Logger = log.Default()
	}
	if (s.ClientCert == "") != (s.ClientKey == "") {
		return nil, configErr("a client certificate needs both ClientCert and ClientKey")
	}
	if s.Token == "" {
		s.tokenFrom = s.TokenFile
		if s.tokenFrom == "" {
			s.Token = os.Getenv("BRB_TOKEN")
		}
		if s.Token == "" && s.tokenFrom == "" {
			s.tokenFrom = os.Getenv("BRB_TOKEN_FILE")
		}
		if s.tokenFrom != "" {
			t, err := readToken(s.tokenFrom)
			if err != nil {
				return nil, err
			}
			s.Token = t
		}
	}
	if err := checkToken(s.Token); err != nil {
		return nil, err
	}
	return s, nil
}

func isControl(r rune) bool { return r < 0x20 || (r >= 0x7f && r <= 0x9f) }

func readToken(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", configErr("token file: %v", err)
	}
	t := strings.TrimSpace(string(b))
	if t == "" {
		return "", configErr("token file %s is empty", path)
	}
	return t, checkToken(t)
}

// checkToken refuses what could not be sent in a header (and would let a file's content
// inject one). The token itself never appears in the message.
func checkToken(t string) error {
	for i := 0; i < len(t); i++ {
		if t[i] <= ' ' || t[i] >= 0x7f {
			return configErr("the token contains a space, a control or a non-ASCII character")
		}
	}
	return nil
}

// parseBase checks one URL: http(s) only, and plain HTTP only to loopback unless allowed.
func parseBase(raw string, allowInsecure bool) (base, error) {
	raw = strings.TrimRight(strings.TrimSpace(raw), "/")
	u, err := url.Parse(raw)
	if err != nil {
		return base{}, configErr("URL %q: %v", raw, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return base{}, configErr("%q is not an http:// or https:// URL", raw)
	}
	if u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return base{}, configErr("%q: want scheme://host[:port][/path], with no user, query or fragment", raw)
	}
	host := u.Hostname()
	port := u.Port()
	if port == "" {
		port = map[string]string{"http": "80", "https": "443"}[u.Scheme]
	}
	if u.Scheme == "http" && !allowInsecure && !isLoopback(host) {
		return base{}, configErr("%q: refusing plain HTTP to a host that is not loopback (the token would "+
			"cross the network in clear text); use https://, or set AllowInsecureHTTP when a TLS proxy on "+
			"a trusted hop is in front", raw)
	}
	return base{
		url:       raw,
		tls:       u.Scheme == "https",
		addr:      net.JoinHostPort(host, port),
		authority: u.Host,
		host:      host,
		prefix:    u.EscapedPath(),
	}, nil
}

func isLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// DefaultWorkerID is "hostname-pid-xxxx": unique enough to tell workers apart.
func DefaultWorkerID() string {
	host := os.Getenv("HOSTNAME")
	if host == "" {
		host, _ = os.Hostname()
	}
	host = strings.TrimSpace(host)
	if host == "" {
		host = "worker"
	}
	var b [2]byte
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("%s-%d-%04x", host, os.Getpid(), binary.BigEndian.Uint16(b[:]))
}
