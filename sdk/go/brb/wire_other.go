//go:build !unix

package brb

import "net"

// Without the unix poller probe, a stream reads into a buffer of its own.
func newReadiness(net.Conn) readiness { return nil }
