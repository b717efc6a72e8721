package brb

import (
	"errors"
	"io"
	"net"
	"sync"
)

var errChunk = errors.New("malformed chunked encoding")

// chunkDecoder removes HTTP/1.1 chunked framing from a byte stream, in place, whatever the
// read boundaries (a size line, or the CRLF after a chunk's data, may be split anywhere).
type chunkDecoder struct {
	state  int
	size   int64 // the size line's value so far
	digits int
	ext    int   // bytes of chunk extension skipped
	left   int64 // data bytes left in the current chunk
}

const (
	chunkSizeLine = iota
	chunkExt      // after the size: an extension or the CR, up to the LF
	chunkData
	chunkDataCR
	chunkDataLF
	chunkEnd // the last chunk came: the body is over
)

// decode turns b into body bytes in place and says how many there are at the front of b;
// end when the last chunk (size 0) came. Trailers after it are never read: the stream is
// closed then.
func (d *chunkDecoder) decode(b []byte) (n int, end bool, err error) {
	w := 0
	for i := 0; i < len(b); {
		switch d.state {
		case chunkSizeLine:
			c := b[i]
			switch {
			case c >= '0' && c <= '9', c >= 'a' && c <= 'f', c >= 'A' && c <= 'F':
				if d.digits == 15 {
					return w, false, errChunk
				}
				d.size = d.size<<4 | int64(hexVal(c))
				d.digits++
			case c == ';' || c == ' ' || c == '\t' || c == '\r':
				d.state = chunkExt
			case c == '\n':
				d.state = chunkExt
				continue // handled there
			default:
				return w, false, errChunk
			}
			i++
		case chunkExt:
			if b[i] != '\n' {
				d.ext++
				if d.ext > 256 {
					return w, false, errChunk
				}
				i++
				continue
			}
			i++
			if d.digits == 0 {
				return w, false, errChunk
			}
			if d.size == 0 {
				d.state = chunkEnd
				return w, true, nil
			}
			d.left, d.size, d.digits, d.ext = d.size, 0, 0, 0
			d.state = chunkData
		case chunkData:
			k := len(b) - i
			if int64(k) > d.left {
				k = int(d.left)
			}
			copy(b[w:], b[i:i+k])
			w += k
			i += k
			d.left -= int64(k)
			if d.left == 0 {
				d.state = chunkDataCR
			}
		case chunkDataCR:
			if b[i] != '\r' {
				return w, false, errChunk
			}
			d.state = chunkDataLF
			i++
		case chunkDataLF:
			if b[i] != '\n' {
				return w, false, errChunk
			}
			d.state = chunkSizeLine
			i++
		case chunkEnd:
			return w, true, nil
		}
	}
	return w, d.state == chunkEnd, nil
}

func hexVal(c byte) byte {
	switch {
	case c >= 'a':
		return c - 'a' + 10
	case c >= 'A':
		return c - 'A' + 10
	}
	return c - '0'
}

// readBufs lends read buffers to idle plain-TCP streams: a gate waits for its socket to
// become readable holding no buffer, and borrows one only to read what arrived.
var readBufs = sync.Pool{New: func() any { b := make([]byte, 4096); return &b }}

// wireBody is a stream's body read straight from its connection, chunked or delimited by
// the connection's end.
type wireBody struct {
	conn    net.Conn
	wait    readiness // plain TCP on unix: waits for readability without a buffer
	own     []byte    // otherwise (TLS): a buffer of the gate's own
	lent    *[]byte   // the pooled buffer the last next() returned bytes from
	pending []byte    // body bytes read together with the answer's head
	chunked bool
	dec     chunkDecoder
	ended   bool
}

func newWireBody(conn net.Conn, pending []byte, chunked bool) *wireBody {
	w := &wireBody{conn: conn, pending: pending, chunked: chunked}
	w.wait = newReadiness(conn)
	if w.wait == nil {
		w.own = make([]byte, 512)
	}
	return w
}

// next gives the body's next bytes (valid until the next call).
func (w *wireBody) next() ([]byte, error) {
	if w.lent != nil {
		readBufs.Put(w.lent)
		w.lent = nil
	}
	if w.ended {
		return nil, io.EOF
	}
	if p := w.pending; p != nil {
		w.pending = nil
		if b, err := w.body(p); err != nil || len(b) > 0 || w.ended {
			return b, err
		}
	}
	for {
		var buf []byte
		if w.wait != nil {
			if err := w.wait.wait(); err != nil {
				return nil, err
			}
			w.lent = readBufs.Get().(*[]byte)
			buf = *w.lent
		} else {
			buf = w.own
		}
		n, err := w.conn.Read(buf)
		if n > 0 {
			b, derr := w.body(buf[:n])
			if derr != nil || len(b) > 0 || w.ended {
				return b, derr
			}
		}
		if w.lent != nil {
			readBufs.Put(w.lent)
			w.lent = nil
		}
		if err != nil {
			return nil, err
		}
	}
}

// body decodes raw bytes into body bytes (in place).
func (w *wireBody) body(b []byte) ([]byte, error) {
	if !w.chunked {
		return b, nil
	}
	n, end, err := w.dec.decode(b)
	w.ended = end
	return b[:n], err
}

func (w *wireBody) Close() error { return w.conn.Close() }

// readiness waits until a connection has something to read (data, its end, an error).
type readiness interface {
	wait() error
}
