package mariadbtest

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// FreePort returns a TCP port on 127.0.0.1 that is free and reserved for the
// calling process until it exits. Binding it and closing the listener is not enough
// on its own: the caller binds it later, and go test runs packages as parallel
// processes that all draw ports here, so two draws could return the same port (CI
// once saw a node fail its start-up with "address already in use": a node draws
// three). A reservation is an exclusive flock on a file named after the port, in a
// directory every test process of the user shares; the kernel drops it when the
// process ends, however it ends, so nothing needs releasing and a node restarted on
// its ports, however late, still owns them.
//
// The port is drawn below the kernel's ephemeral range (32768 and up by Linux's
// default, read from the kernel): a port the kernel hands out for port 0 is also
// what it gives outgoing connections, and one of the many a test makes took a node's
// raft port before the node could bind it.
func FreePort() (int, error) {
	dir, err := portDir()
	if err != nil {
		return 0, err
	}
	lo, hi := drawRange()
	for range 500 {
		port := lo + rand.IntN(hi-lo)
		ok, err := reservePort(dir, port)
		if err != nil {
			return 0, err
		}
		if !ok {
			continue
		}
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			continue // held by something that does not reserve: our reservation stays, unused
		}
		if err := l.Close(); err != nil {
			return 0, fmt.Errorf("mariadbtest: release free port: %w", err)
		}
		return port, nil
	}
	return 0, fmt.Errorf("mariadbtest: no free, unreserved port between %d and %d in 500 tries", lo, hi-1)
}

// drawRange is where FreePort draws: [10000, 32768), ended lower where the kernel's
// ephemeral range starts lower (a host that widened it), as long as a thousand ports
// remain; below that, outgoing connections may take a drawn port, as they always
// could before.
func drawRange() (lo, hi int) {
	lo, hi = 10000, 32768
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return lo, hi
	}
	if f := strings.Fields(string(b)); len(f) == 2 {
		if start, err := strconv.Atoi(f[0]); err == nil && start >= lo+1000 && start < hi {
			hi = start
		}
	}
	return lo, hi
}

// portDir is the user's reservation directory, created if needed; another user's,
// or one others may write to, is refused (they could hold every port).
func portDir() (string, error) {
	dir := filepath.Join(os.TempDir(), "flotilla-test-ports-"+strconv.Itoa(os.Getuid()))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("mariadbtest: port reservations: %w", err)
	}
	st, err := os.Lstat(dir)
	if err != nil {
		return "", fmt.Errorf("mariadbtest: port reservations: %w", err)
	}
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !st.IsDir() || !ok || int(sys.Uid) != os.Getuid() || st.Mode().Perm()&0o022 != 0 {
		return "", fmt.Errorf("mariadbtest: port reservations: %s is not a directory of this user's alone (%v): remove it", dir, st.Mode())
	}
	return dir, nil
}

// reservePort takes port's reservation in dir for the rest of the process's life,
// or reports that a process (this one included: a lock is per open file) holds it.
// The descriptor is left open on purpose, outside the os package so no finalizer
// closes it, and close-on-exec so the servers a test starts do not inherit it.
func reservePort(dir string, port int) (bool, error) {
	name := filepath.Join(dir, strconv.Itoa(port))
	fd, err := syscall.Open(name, syscall.O_CREAT|syscall.O_RDWR|syscall.O_CLOEXEC, 0o600)
	if err != nil {
		return false, fmt.Errorf("mariadbtest: reserve port %d: %w", port, err)
	}
	if err := syscall.Flock(fd, syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		syscall.Close(fd)
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return false, nil
		}
		return false, fmt.Errorf("mariadbtest: reserve port %d: lock %s: %w", port, name, err)
	}
	return true, nil
}
