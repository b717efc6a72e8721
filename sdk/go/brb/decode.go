package brb

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"time"
	"unicode/utf16"
	"unicode/utf8"
)

// decodeSwitch reads the fields a gate needs from a switch's JSON (the data of a switch
// event, or a long-poll answer) and skips the rest.
//
// Why not encoding/json: its reflective decoder runs deep, and every gate decodes on its
// own goroutine at each change, so a thousand gates' stacks would each grow from 4 to 8 KiB
// at every press. This scanner is iterative and shallow. It is strict: anything that is
// not well-formed JSON of the expected types is an error, and the event is ignored.
func decodeSwitch(b []byte) (switchView, error) {
	var sw switchView
	s := scanner{b: b}
	err := s.object(func(key []byte) error {
		var err error
		switch string(key) {
		case "name":
			sw.Name, err = s.str()
		case "state":
			sw.State, err = s.str()
		case "version":
			sw.Version, err = s.uint()
		case "changed_by":
			sw.ChangedBy, err = s.str()
		case "source":
			sw.Source, err = s.str()
		case "ramp":
			sw.Ramp, err = s.ramp()
		default:
			err = s.skip()
		}
		return err
	})
	if err == nil {
		s.ws()
		if s.i != len(s.b) {
			err = s.fail("data after the object")
		}
	}
	if err != nil {
		return switchView{}, err
	}
	return sw, nil
}

func (s *scanner) ramp() (*Ramp, error) {
	if s.null() {
		return nil, nil
	}
	r := &Ramp{}
	var started string
	err := s.object(func(key []byte) error {
		var err error
		switch string(key) {
		case "started_at":
			started, err = s.str()
		case "duration_secs":
			r.DurationSecs, err = s.uint()
		case "kind":
			r.Kind, err = s.str()
		case "from":
			r.From, err = s.float()
		case "fractions":
			r.Fractions = r.Fractions[:0]
			err = s.array(func() error {
				f, err := s.float()
				r.Fractions = append(r.Fractions, f)
				return err
			})
		default:
			err = s.skip()
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	t, err := time.Parse(time.RFC3339Nano, started)
	if err != nil {
		return nil, fmt.Errorf("ramp.started_at: %w", err)
	}
	r.StartedAt = t
	return r, nil
}

// decodeResync reads a resync event's data: {"after","current","reason"}.
func decodeResync(b []byte) (after, current uint64, reason string, err error) {
	s := scanner{b: b}
	err = s.object(func(key []byte) error {
		var err error
		switch string(key) {
		case "after":
			after, err = s.uint()
		case "current":
			current, err = s.uint()
		case "reason":
			reason, err = s.str()
		default:
			err = s.skip()
		}
		return err
	})
	return after, current, reason, err
}

// scanner is a minimal JSON reader over a byte slice.
type scanner struct {
	b []byte
	i int
}

// maxDepth bounds nesting in skipped values.
const maxDepth = 64

var errSyntax = errors.New("malformed JSON")

func (s *scanner) fail(what string) error {
	return fmt.Errorf("%w at byte %d: %s", errSyntax, s.i, what)
}

func (s *scanner) ws() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

func (s *scanner) peek() byte {
	s.ws()
	if s.i < len(s.b) {
		return s.b[s.i]
	}
	return 0
}

func (s *scanner) lit(word string) bool {
	s.ws()
	if len(s.b)-s.i >= len(word) && string(s.b[s.i:s.i+len(word)]) == word {
		s.i += len(word)
		return true
	}
	return false
}

func (s *scanner) null() bool { return s.lit("null") }

// object reads {"key": value, ...}, calling field with each key (raw, unescaped only if it
// had escapes) positioned at the value, which field must consume.
func (s *scanner) object(field func(key []byte) error) error {
	if s.peek() != '{' {
		return s.fail("want an object")
	}
	s.i++
	if s.peek() == '}' {
		s.i++
		return nil
	}
	for {
		if s.peek() != '"' {
			return s.fail("want a key")
		}
		key, err := s.rawStr()
		if err != nil {
			return err
		}
		if s.peek() != ':' {
			return s.fail("want ':'")
		}
		s.i++
		if err := field(key); err != nil {
			return err
		}
		switch s.peek() {
		case ',':
			s.i++
		case '}':
			s.i++
			return nil
		default:
			return s.fail("want ',' or '}'")
		}
	}
}

func (s *scanner) array(elem func() error) error {
	if s.peek() != '[' {
		return s.fail("want an array")
	}
	s.i++
	if s.peek() == ']' {
		s.i++
		return nil
	}
	for {
		if err := elem(); err != nil {
			return err
		}
		switch s.peek() {
		case ',':
			s.i++
		case ']':
			s.i++
			return nil
		default:
			return s.fail("want ',' or ']'")
		}
	}
}

func (s *scanner) str() (string, error) {
	if s.peek() != '"' {
		return "", s.fail("want a string")
	}
	b, err := s.rawStr()
	if err == nil && !utf8.Valid(b) {
		return "", s.fail("invalid UTF-8 in a string") // the server only sends valid UTF-8
	}
	return string(b), err
}

// rawStr reads a string at s.i (which is '"'): its bytes, unescaped into a new slice only
// when it has escapes.
func (s *scanner) rawStr() ([]byte, error) {
	s.i++
	start := s.i
	for s.i < len(s.b) {
		c := s.b[s.i]
		switch {
		case c == '"':
			out := s.b[start:s.i]
			s.i++
			return out, nil
		case c == '\\':
			return s.escaped(start)
		case c < 0x20:
			return nil, s.fail("control character in a string")
		}
		s.i++
	}
	return nil, s.fail("unterminated string")
}

func (s *scanner) escaped(start int) ([]byte, error) {
	out := append([]byte(nil), s.b[start:s.i]...)
	for s.i < len(s.b) {
		c := s.b[s.i]
		switch {
		case c == '"':
			s.i++
			return out, nil
		case c < 0x20:
			return nil, s.fail("control character in a string")
		case c != '\\':
			out = append(out, c)
			s.i++
			continue
		}
		s.i++
		if s.i >= len(s.b) {
			break
		}
		e := s.b[s.i]
		s.i++
		switch e {
		case '"', '\\', '/':
			out = append(out, e)
		case 'b':
			out = append(out, '\b')
		case 'f':
			out = append(out, '\f')
		case 'n':
			out = append(out, '\n')
		case 'r':
			out = append(out, '\r')
		case 't':
			out = append(out, '\t')
		case 'u':
			r, ok := s.hex4()
			if !ok {
				return nil, s.fail("bad \\u escape")
			}
			if utf16.IsSurrogate(r) {
				// A pair when a low surrogate follows; else U+FFFD, and what follows is
				// read as itself.
				r2 := utf8.RuneError
				if s.i+1 < len(s.b) && s.b[s.i] == '\\' && s.b[s.i+1] == 'u' {
					save := s.i
					s.i += 2
					lo, ok := s.hex4()
					if !ok {
						return nil, s.fail("bad \\u escape")
					}
					if lo >= 0xdc00 && lo <= 0xdfff {
						r2 = lo
					} else {
						s.i = save
					}
				}
				r = utf16.DecodeRune(r, r2)
			}
			out = utf8.AppendRune(out, r)
		default:
			return nil, s.fail("bad escape")
		}
	}
	return nil, s.fail("unterminated string")
}

func (s *scanner) hex4() (rune, bool) {
	if len(s.b)-s.i < 4 {
		return 0, false
	}
	var r rune
	for _, c := range s.b[s.i : s.i+4] {
		var v byte
		switch {
		case c >= '0' && c <= '9':
			v = c - '0'
		case c >= 'a' && c <= 'f':
			v = c - 'a' + 10
		case c >= 'A' && c <= 'F':
			v = c - 'A' + 10
		default:
			return 0, false
		}
		r = r<<4 | rune(v)
	}
	s.i += 4
	return r, true
}

// number returns a JSON number's text.
func (s *scanner) number() ([]byte, error) {
	s.ws()
	start := s.i
	if s.i < len(s.b) && s.b[s.i] == '-' {
		s.i++
	}
	digits := func() int {
		n := 0
		for s.i < len(s.b) && s.b[s.i] >= '0' && s.b[s.i] <= '9' {
			s.i++
			n++
		}
		return n
	}
	if s.i < len(s.b) && s.b[s.i] == '0' {
		s.i++ // a leading zero stands alone
	} else if digits() == 0 {
		return nil, s.fail("want a number")
	}
	if s.i < len(s.b) && s.b[s.i] == '.' {
		s.i++
		if digits() == 0 {
			return nil, s.fail("bad number")
		}
	}
	if s.i < len(s.b) && (s.b[s.i] == 'e' || s.b[s.i] == 'E') {
		s.i++
		if s.i < len(s.b) && (s.b[s.i] == '+' || s.b[s.i] == '-') {
			s.i++
		}
		if digits() == 0 {
			return nil, s.fail("bad number")
		}
	}
	return s.b[start:s.i], nil
}

func (s *scanner) uint() (uint64, error) {
	n, err := s.number()
	if err != nil {
		return 0, err
	}
	v, err := strconv.ParseUint(string(n), 10, 64)
	if err != nil {
		return 0, s.fail("want a non-negative integer")
	}
	return v, nil
}

func (s *scanner) float() (float64, error) {
	n, err := s.number()
	if err != nil {
		return 0, err
	}
	v, err := strconv.ParseFloat(string(n), 64)
	if err != nil || math.IsInf(v, 0) {
		return 0, s.fail("number out of range")
	}
	return v, nil
}

// skip consumes any value, iteratively (no recursion, however deep the value).
func (s *scanner) skip() error {
	var objects uint64 // bit d: the container at depth d+1 is an object
	depth := 0
	for {
		c := s.peek()
		switch {
		case c == '{' || c == '[':
			if depth == maxDepth {
				return s.fail("nested too deep")
			}
			if c == '{' {
				objects |= 1 << uint(depth)
			} else {
				objects &^= 1 << uint(depth)
			}
			depth++
			s.i++
			if n := s.peek(); (c == '{' && n == '}') || (c == '[' && n == ']') {
				s.i++
				depth--
				break
			}
			if c == '{' {
				if err := s.key(); err != nil {
					return err
				}
			}
			continue
		case c == '"':
			if _, err := s.rawStr(); err != nil {
				return err
			}
		case c == '-' || (c >= '0' && c <= '9'):
			if _, err := s.number(); err != nil {
				return err
			}
		case s.lit("true") || s.lit("false") || s.lit("null"):
		default:
			return s.fail("want a value")
		}
		// After a value: close containers, or go on to the next element.
	after:
		for {
			if depth == 0 {
				return nil
			}
			object := objects&(1<<uint(depth-1)) != 0
			switch s.peek() {
			case ',':
				s.i++
				if object {
					if err := s.key(); err != nil {
						return err
					}
				}
				break after
			case '}':
				if !object {
					return s.fail("mismatched brackets")
				}
				s.i++
				depth--
			case ']':
				if object {
					return s.fail("mismatched brackets")
				}
				s.i++
				depth--
			default:
				return s.fail("want ',' or a closing bracket")
			}
		}
	}
}

func (s *scanner) key() error {
	if s.peek() != '"' {
		return s.fail("want a key")
	}
	if _, err := s.rawStr(); err != nil {
		return err
	}
	if s.peek() != ':' {
		return s.fail("want ':'")
	}
	s.i++
	return nil
}
