package brb

import (
	"bytes"
	"errors"
	"strings"
	"unicode/utf8"
)

// maxLine bounds one event-stream line: the largest switch event is a few KiB, and a server
// that never ends a line must not make the gate buffer without bound.
const maxLine = 64 << 10

var errLineTooLong = errors.New("event-stream line longer than 64 KiB")

// sseEvent is one dispatched event of a text/event-stream.
type sseEvent struct {
	name string // "message" when the stream named none
	id   string // the last id: seen on the stream
	data string
}

// sseParser is an incremental parser of the WHATWG event-stream format, with no I/O:
// bytes arrive in any chunking (a frame may be split anywhere, even between '\r' and '\n').
// An event is dispatched only at its blank line, so a stream cut in the middle of an event
// loses that event rather than applying half of it.
type sseParser struct {
	line    []byte
	afterCR bool
	event   string
	data    strings.Builder
	hasData bool
	lastID  string
}

// feed parses a chunk and calls emit for each event it completes.
func (p *sseParser) feed(chunk []byte, emit func(sseEvent)) error {
	if p.afterCR {
		p.afterCR = false
		if len(chunk) > 0 && chunk[0] == '\n' {
			chunk = chunk[1:]
		}
	}
	for {
		i := bytes.IndexAny(chunk, "\r\n")
		if i < 0 {
			break
		}
		if err := p.push(chunk[:i]); err != nil {
			return err
		}
		p.endLine(emit)
		cr := chunk[i] == '\r'
		chunk = chunk[i+1:]
		if cr {
			if len(chunk) == 0 {
				p.afterCR = true
			} else if chunk[0] == '\n' {
				chunk = chunk[1:]
			}
		}
	}
	return p.push(chunk)
}

func (p *sseParser) push(b []byte) error {
	if len(p.line)+len(b) > maxLine {
		p.line = p.line[:0]
		return errLineTooLong
	}
	p.line = append(p.line, b...)
	return nil
}

func (p *sseParser) endLine(emit func(sseEvent)) {
	line := p.line
	p.line = p.line[:0]
	if len(line) == 0 {
		p.dispatch(emit)
		return
	}
	if line[0] == ':' {
		return // a comment: the server's keep-alive
	}
	field, value := line, []byte(nil)
	if i := bytes.IndexByte(line, ':'); i >= 0 {
		field, value = line[:i], line[i+1:]
		if len(value) > 0 && value[0] == ' ' {
			value = value[1:]
		}
	}
	v := string(value)
	if !utf8.ValidString(v) {
		v = strings.ToValidUTF8(v, "\uFFFD")
	}
	switch string(field) {
	case "event":
		p.event = v
	case "data":
		if p.hasData {
			p.data.WriteByte('\n')
		}
		p.data.WriteString(v)
		p.hasData = true
	case "id":
		if !strings.ContainsRune(v, 0) { // an id with NUL is ignored, as the spec says
			p.lastID = v
		}
	}
	// "retry" and unknown fields are ignored: the gate has its own backoff.
}

func (p *sseParser) dispatch(emit func(sseEvent)) {
	if !p.hasData {
		p.event = ""
		return
	}
	name := p.event
	if name == "" {
		name = "message"
	}
	ev := sseEvent{name: name, id: p.lastID, data: p.data.String()}
	p.event = ""
	p.data.Reset()
	p.hasData = false
	emit(ev)
}
