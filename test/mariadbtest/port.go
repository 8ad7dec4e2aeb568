package mariadbtest

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"time"
)

const (
	// portLease is how long a port handed out by FreePort stays reserved for the
	// test that asked for it: longer than any test package runs (go test's own
	// timeout for the longest is 30 minutes), so a node stopped and restarted on
	// its ports finds them still its own.
	portLease = time.Hour
	// portDir holds one file per reserved port, shared by every test process of
	// the user (go test runs packages in parallel, each its own process); the
	// user's id follows it, so another user's directory never refuses us.
	portDir = "flotilla-test-ports-"
)

// FreePort returns a TCP port on 127.0.0.1 that is free and reserved for the
// caller. Binding it and closing the listener is not enough on its own: the
// caller binds it later, and go test runs packages as parallel processes that
// all draw ports here, so two tests could be handed the same one (CI once saw a
// node fail its start-up with "address already in use"). A reservation is a file
// named after the port in a directory every test process shares, created with
// O_EXCL; it expires after portLease, so nothing needs to release it.
//
// The port is drawn below the kernel's ephemeral range (32768 and up on Linux):
// a port the kernel hands out for port 0 is also what it gives outgoing
// connections, and one of the many a test makes took a node's raft port before
// the node could bind it.
func FreePort() (int, error) {
	dir := filepath.Join(os.TempDir(), portDir+strconv.Itoa(os.Getuid()))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return 0, fmt.Errorf("mariadbtest: port reservations: %w", err)
	}
	for range 500 {
		port := 10000 + rand.IntN(32768-10000)
		if !reservePort(dir, port) {
			continue
		}
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			continue // held by something that does not reserve: the lease stays, harmlessly
		}
		if err := l.Close(); err != nil {
			return 0, fmt.Errorf("mariadbtest: release free port: %w", err)
		}
		return port, nil
	}
	return 0, errors.New("mariadbtest: no free, unreserved port between 10000 and 32767 in 500 tries")
}

// reservePort takes port's lease in dir, or reports that another caller holds it.
// An expired lease is removed and taken anew.
func reservePort(dir string, port int) bool {
	name := filepath.Join(dir, strconv.Itoa(port))
	for range 2 {
		f, err := os.OpenFile(name, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
		if err == nil {
			_ = f.Close()
			return true
		}
		st, serr := os.Stat(name)
		if !errors.Is(err, os.ErrExist) || serr != nil || time.Since(st.ModTime()) < portLease {
			return false
		}
		_ = os.Remove(name)
	}
	return false
}
