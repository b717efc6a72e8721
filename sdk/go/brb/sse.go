package brb

import (
	"bytes"
	"errors"
)

// maxLine bounds one event-stream line, and an event's data: the largest switch event is a
// few KiB, and a server that never ends a line must not make the gate buffer without bound.
const maxLine = 64 << 10

var errLineTooLong = errors.New("event-stream line or event longer than 64 KiB")

// sseEvent is one dispatched event of a text/event-stream. data is only valid during the
// emit call that receives it.
type sseEvent struct {
	name string // "message" when the stream named none
	data []byte
}

// sseParser is an incremental parser of the WHATWG event-stream format, with no I/O:
// bytes arrive in any chunking (a frame may be split anywhere, even between '\r' and '\n').
// An event is dispatched only at its blank line, so a stream cut in the middle of an event
// loses that event rather than applying half of it. A line that arrives whole is parsed in
// place; only one split across reads is copied.
type sseParser struct {
	partial []byte // the start of a line split across chunks
	afterCR bool
	event   string
	data    []byte
	hasData bool
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
		line := chunk[:i]
		if len(p.partial) > 0 {
			if len(p.partial)+len(line) > maxLine {
				p.partial = nil
				return errLineTooLong
			}
			line = append(p.partial, line...)
		}
		if err := p.line(line, emit); err != nil {
			return err
		}
		p.partial = p.partial[:0]
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
	if len(chunk) > 0 {
		if len(p.partial)+len(chunk) > maxLine {
			p.partial = nil
			return errLineTooLong
		}
		p.partial = append(p.partial, chunk...)
	} else if cap(p.partial) > 1024 {
		p.partial = nil // a rare long line: do not keep its buffer
	}
	return nil
}

func (p *sseParser) line(line []byte, emit func(sseEvent)) error {
	if len(line) == 0 {
		p.dispatch(emit)
		return nil
	}
	if line[0] == ':' {
		return nil // a comment: the server's keep-alive
	}
	field, value := line, []byte(nil)
	if i := bytes.IndexByte(line, ':'); i >= 0 {
		field, value = line[:i], line[i+1:]
		if len(value) > 0 && value[0] == ' ' {
			value = value[1:]
		}
	}
	switch string(field) {
	case "event":
		p.event = eventName(value)
	case "data":
		if len(p.data)+len(value)+1 > maxLine {
			p.data, p.hasData = nil, false
			return errLineTooLong
		}
		if p.hasData {
			p.data = append(p.data, '\n')
		}
		p.data = append(p.data, value...)
		p.hasData = true
	}
	// "id" is not kept: the gate resumes from the version it applied, which is the id the
	// server gives its switch events. "retry" and unknown fields are ignored: the gate has
	// its own backoff.
	return nil
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
	emit(sseEvent{name: name, data: p.data})
	p.event = ""
	p.hasData = false
	// Not kept: changes are rare, and a thousand idle gates would each hold one.
	p.data = nil
}

// eventName gives the event's name without allocating for the names the server sends.
func eventName(b []byte) string {
	switch string(b) {
	case "switch":
		return "switch"
	case "resync":
		return "resync"
	case "deleted":
		return "deleted"
	}
	return string(b)
}
