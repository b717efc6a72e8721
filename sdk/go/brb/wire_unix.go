//go:build unix

package brb

import (
	"net"
	"syscall"
)

// rawReadiness waits on a TCP socket through the runtime's poller, probing with a
// non-blocking MSG_PEEK: bytes already in the socket (which no new poller event will
// announce) are found at once.
type rawReadiness struct {
	rc    syscall.RawConn
	probe func(fd uintptr) bool // made once: no closure per wait
	peek  [1]byte
}

func newReadiness(conn net.Conn) readiness {
	tc, ok := conn.(*net.TCPConn)
	if !ok {
		return nil
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return nil
	}
	r := &rawReadiness{rc: rc}
	r.probe = r.ready
	return r
}

func (r *rawReadiness) ready(fd uintptr) bool {
	_, _, err := syscall.Recvfrom(int(fd), r.peek[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
	// Data (n > 0), the peer's end (n == 0) or an error: the Read that follows says which.
	return err != syscall.EAGAIN && err != syscall.EWOULDBLOCK
}

func (r *rawReadiness) wait() error { return r.rc.Read(r.probe) }
