package brb

import (
	"encoding/json"
	"errors"
	"math"
	"reflect"
	"strings"
	"testing"
	"time"
)

type gotEvent struct{ name, data string }

func parseAll(t *testing.T, chunks ...string) ([]gotEvent, error) {
	t.Helper()
	var p sseParser
	var got []gotEvent
	for _, c := range chunks {
		if err := p.feed([]byte(c), func(ev sseEvent) {
			got = append(got, gotEvent{ev.name, string(ev.data)})
		}); err != nil {
			return got, err
		}
	}
	return got, nil
}

// The same stream split at every byte gives the same events: a frame may be cut anywhere
// by the network, even between '\r' and '\n'.
func TestSSEParserAnySplit(t *testing.T) {
	stream := "retry: 1000\r\n\r\n: keep-alive\n\nevent: switch\r\nid: 7\r\ndata: {\"a\":\r\ndata: 1}\r\n\r\n" +
		"event: resync\rdata: {}\r\rdata:plain\n\n"
	want := []gotEvent{{"switch", "{\"a\":\n1}"}, {"resync", "{}"}, {"message", "plain"}}
	for i := 0; i <= len(stream); i++ {
		got, err := parseAll(t, stream[:i], stream[i:])
		if err != nil {
			t.Fatalf("split at %d: %v", i, err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("split at %d: got %q, want %q", i, got, want)
		}
	}
	// Byte by byte.
	var chunks []string
	for i := range stream {
		chunks = append(chunks, stream[i:i+1])
	}
	if got, err := parseAll(t, chunks...); err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("byte by byte: got %q, %v", got, err)
	}
}

// An event cut before its blank line (the connection dropped) is never dispatched.
func TestSSEParserTruncatedEventIsNotDispatched(t *testing.T) {
	got, err := parseAll(t, "event: switch\ndata: {\"name\":\"workers\",\"state\":\"paused\"")
	if err != nil || len(got) != 0 {
		t.Fatalf("got %q, %v", got, err)
	}
	got, err = parseAll(t, "event: switch\ndata: {}\n")
	if err != nil || len(got) != 0 {
		t.Fatalf("without its blank line: got %q, %v", got, err)
	}
}

func TestSSEParserBoundsLines(t *testing.T) {
	long := strings.Repeat("x", maxLine+1)
	if _, err := parseAll(t, "data: "+long[:maxLine/2], long[maxLine/2:]); !errors.Is(err, errLineTooLong) {
		t.Fatalf("a line longer than the bound: %v", err)
	}
	// Many data lines adding up past the bound.
	line := "data: " + strings.Repeat("y", 1000) + "\n"
	if _, err := parseAll(t, strings.Repeat(line, maxLine/1000+2)); !errors.Is(err, errLineTooLong) {
		t.Fatalf("an event longer than the bound: %v", err)
	}
	// Right under the bound is fine.
	if got, err := parseAll(t, "data: "+strings.Repeat("z", maxLine-10)+"\n\n"); err != nil || len(got) != 1 {
		t.Fatalf("a long but legal line: %d events, %v", len(got), err)
	}
}

func chunked(parts ...string) string {
	var b strings.Builder
	for _, p := range parts {
		b.WriteString(strings.ToUpper(strconvHex(len(p))))
		if len(p)%2 == 0 {
			b.WriteString(";ext=1")
		}
		b.WriteString("\r\n" + p + "\r\n")
	}
	return b.String()
}

func strconvHex(n int) string {
	const digits = "0123456789abcdef"
	if n == 0 {
		return "0"
	}
	var out []byte
	for ; n > 0; n >>= 4 {
		out = append([]byte{digits[n&15]}, out...)
	}
	return string(out)
}

func decodeAll(wire string, splits ...int) (string, bool, error) {
	var d chunkDecoder
	var out []byte
	ended := false
	prev := 0
	for _, at := range append(splits, len(wire)) {
		b := []byte(wire[prev:at])
		prev = at
		n, end, err := d.decode(b)
		out = append(out, b[:n]...)
		if err != nil {
			return string(out), end, err
		}
		ended = ended || end
	}
	return string(out), ended, nil
}

// Chunked framing is removed whatever the read boundaries, and the last chunk ends it.
func TestChunkDecoderAnySplit(t *testing.T) {
	body := []string{"retry: 1000\n\n", "event: switch\nid: 3\ndata: {}\n\n", "x", strings.Repeat("a", 300)}
	wire := chunked(body...) + "0\r\n\r\n"
	want := strings.Join(body, "")
	for i := 0; i <= len(wire); i++ {
		for _, j := range []int{i, (i + len(wire)) / 2} {
			got, end, err := decodeAll(wire, i, j)
			if err != nil || got != want || !end {
				t.Fatalf("splits %d,%d: got %q end=%v err=%v", i, j, got, end, err)
			}
		}
	}
}

func TestChunkDecoderRefusesGarbage(t *testing.T) {
	for _, wire := range []string{
		"zz\r\nabc\r\n",                          // not hex
		"\r\nabc",                                // no size
		"3\r\nabcX\r\n",                          // no CRLF after the data
		"3\r\nabc\rX",                            // CR without LF
		"1000000000000000\r\n",                   // absurd size
		"3;" + strings.Repeat("e", 300) + "\r\n", // endless extension
	} {
		if _, _, err := decodeAll(wire); !errors.Is(err, errChunk) {
			t.Fatalf("%q: want errChunk, got %v", wire, err)
		}
	}
}

// A switch as the server serializes it (brb_api::Switch), with both ramp shapes and
// escaped strings.
var switchSamples = []string{
	`{"name":"workers","description":"Pause all background workers","primary":true,"state":"running","version":1,"changed_at":"2026-11-30T15:37:47.132707Z","changed_by":"system","source":"system","reason":null,"ramp":null}`,
	`{"name":"workers","description":"Pause \"all\" workers","primary":true,"state":"paused","version":42,"changed_at":"2026-11-30T15:37:58.253452Z","changed_by":"al\nice \u00e9\ud83d\ude00","source":"button","reason":"db on fire","ramp":null}`,
	`{"name":"workers","description":"","primary":false,"state":"running","version":7,"changed_at":"2026-11-30T15:37:58Z","changed_by":"admin","source":"cli","reason":null,"ramp":{"started_at":"2026-11-30T15:37:58.253452Z","duration_secs":600,"kind":"steps","fractions":[0.1,0.25,0.5,1.0]}}`,
	`{"ramp":{"kind":"linear","from":5e-2,"duration_secs":300,"started_at":"2026-11-30T15:37:58.1+01:00","extra":[1,{"a":[]}]},"version":9,"state":"running","name":"workers","changed_by":"x","source":"api","unknown":{"deep":[[[{"x":null}]]],"t":true,"f":false}}`,
	` { "name" : "workers" , "state" : "paused" , "version" : 3 , "changed_by" : "" , "source" : "web" } `,
}

// The scanner decodes what encoding/json decodes, field for field.
func TestDecodeSwitchMatchesEncodingJSON(t *testing.T) {
	for _, sample := range switchSamples {
		got, err := decodeSwitch([]byte(sample))
		if err != nil {
			t.Fatalf("%s: %v", sample, err)
		}
		var want switchView
		if err := json.Unmarshal([]byte(sample), &want); err != nil {
			t.Fatal(err)
		}
		if want.Ramp != nil {
			want.Ramp.StartedAt = want.Ramp.StartedAt.In(got.Ramp.StartedAt.Location())
			if !got.Ramp.StartedAt.Equal(want.Ramp.StartedAt) {
				t.Fatalf("%s: started_at %v, want %v", sample, got.Ramp.StartedAt, want.Ramp.StartedAt)
			}
			got.Ramp.StartedAt = want.Ramp.StartedAt
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("%s:\n got %+v %+v\nwant %+v %+v", sample, got, got.Ramp, want, want.Ramp)
		}
	}
}

// Garbage never decodes to a switch: truncations of every sample, wrong types, bad
// escapes, trailing data.
func TestDecodeSwitchRefusesGarbage(t *testing.T) {
	for _, sample := range switchSamples {
		trimmed := strings.TrimSpace(sample)
		for i := 0; i < len(trimmed); i++ {
			if _, err := decodeSwitch([]byte(trimmed[:i])); err == nil {
				t.Fatalf("the truncation %q decoded", trimmed[:i])
			}
		}
	}
	for _, bad := range []string{
		``, `null`, `[]`, `"workers"`,
		`{"name":"workers","state":"paused","version":"3"}`,
		`{"name":"workers","state":"paused","version":-3}`,
		`{"name":"workers","state":"paused","version":3.5}`,
		`{"name":workers}`,
		`{"name":"wor\xkers"}`,
		`{"name":"a\qb"}`,
		`{"name":"a` + "\x01" + `b"}`,
		`{"name":"workers"} x`,
		`{"name":"workers",}`,
		`{"x":[1,2}`,
		`{"x":{"a":1]}`,
		`{"x":` + strings.Repeat("[", 100) + strings.Repeat("]", 100) + `}`,
		`{"ramp":{"started_at":"yesterday","duration_secs":1,"kind":"linear","from":0.1}}`,
		`{"ramp":{"started_at":"2026-11-30T15:37:58Z","kind":"steps","fractions":[0.1,"x"]}}`,
		`{"ramp":{"started_at":"2026-11-30T15:37:58Z","kind":"linear","from":1e999}}`,
	} {
		if sw, err := decodeSwitch([]byte(bad)); err == nil {
			t.Fatalf("%q decoded to %+v", bad, sw)
		}
	}
}

// Whatever the bytes, the scanner agrees with encoding/json on whether a document is a
// valid switch object, and never panics (go test -fuzz=FuzzDecodeSwitch explores more).
func FuzzDecodeSwitch(f *testing.F) {
	for _, s := range switchSamples {
		f.Add([]byte(s))
	}
	f.Add([]byte(`{"name":"\ud800","state":"paused","version":1}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := decodeSwitch(b)
		if err != nil {
			return
		}
		// encoding/json matches keys case-insensitively; a map keeps them as they are.
		var m map[string]json.RawMessage
		if werr := json.Unmarshal(b, &m); werr != nil {
			t.Fatalf("%q: the scanner took what encoding/json refuses (%v)", b, werr)
		}
		var name, state, by, source string
		var version uint64
		for key, dst := range map[string]any{"name": &name, "state": &state, "version": &version, "changed_by": &by, "source": &source} {
			if raw, ok := m[key]; ok {
				if err := json.Unmarshal(raw, dst); err != nil {
					t.Fatalf("%q: the scanner took %s %s, which encoding/json refuses (%v)", b, key, raw, err)
				}
			}
		}
		if got.Name != name || got.State != state || got.Version != version || got.ChangedBy != by || got.Source != source {
			t.Fatalf("%q: got %+v, want name %q state %q version %d changed_by %q source %q", b, got, name, state, version, by, source)
		}
	})
}

func TestRampFractionAt(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	steps := &Ramp{StartedAt: t0, DurationSecs: 90, Kind: "steps", Fractions: []float64{0.1, 0.25, 0.5, 1}}
	for _, c := range []struct{ s, want float64 }{{-5, 0.1}, {0, 0.1}, {29.9, 0.1}, {30, 0.25}, {59, 0.25}, {60, 0.5}, {89.9, 0.5}, {90, 1}, {1e6, 1}} {
		if got := steps.FractionAt(at(c.s)); got != c.want {
			t.Fatalf("steps at %vs: %v, want %v", c.s, got, c.want)
		}
	}
	linear := &Ramp{StartedAt: t0, DurationSecs: 100, Kind: "linear", From: 0.05}
	for _, c := range []struct{ s, want float64 }{{0, 0.05}, {50, 0.525}, {99, 0.9905}, {100, 1}} {
		if got := linear.FractionAt(at(c.s)); math.Abs(got-c.want) > 1e-9 {
			t.Fatalf("linear at %vs: %v, want %v", c.s, got, c.want)
		}
	}
	odd := &Ramp{StartedAt: t0, DurationSecs: 100, Kind: "sideways"}
	if got := odd.FractionAt(at(1)); got != 1 {
		t.Fatalf("an unknown shape admits everything, got %v", got)
	}
}

func TestBackoffIsJitteredAndCapped(t *testing.T) {
	base, cap := 100*time.Millisecond, 30*time.Second
	seen := map[time.Duration]bool{}
	for i := 0; i < 200; i++ {
		d := Backoff(base, cap, 0)
		if d < 0 || d > base {
			t.Fatalf("attempt 0: %s outside [0, %s]", d, base)
		}
		seen[d] = true
	}
	if len(seen) < 100 {
		t.Fatalf("full jitter spreads delays: only %d distinct in 200", len(seen))
	}
	for _, attempt := range []int{3, 10, 40, 1000} {
		bound := cap
		if attempt == 3 {
			bound = 800 * time.Millisecond
		}
		for i := 0; i < 50; i++ {
			if d := Backoff(base, cap, attempt); d < 0 || d > bound {
				t.Fatalf("attempt %d: %s outside [0, %s]", attempt, d, bound)
			}
		}
	}
	if d := Backoff(time.Hour, 2*time.Hour, 62); d > 2*time.Hour || d < 0 {
		t.Fatalf("no overflow for a large base: %s", d)
	}
}

func TestRetryAfter(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, c := range []struct {
		v    string
		want time.Duration
	}{{"", 0}, {"3", 3 * time.Second}, {" 120 ", 2 * time.Minute}, {"0", 0}, {"-5", 0}, {"soon", 0},
		{"999999", 24 * time.Hour}, {"Thu, 01 Jan 2026 00:00:30 GMT", 30 * time.Second}, {"Wed, 31 Dec 2025 23:00:00 GMT", 0}} {
		if got := retryAfter(c.v, now); got != c.want {
			t.Fatalf("Retry-After %q: %s, want %s", c.v, got, c.want)
		}
	}
}
