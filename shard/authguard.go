package shard

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"sync/atomic"
	"time"

	"github.com/go-mysql-org/go-mysql/client"
	"github.com/go-mysql-org/go-mysql/mysql"
)

// safePlugins are the authentication plugins Flotilla answers a master with on a
// connection without TLS: none of them sends the password itself. go-mysql would
// follow a greeting or an auth switch to mysql_clear_password (or sha256_password
// with a key the server supplies), handing the replication password to whoever
// answers at the master's address.
var safePlugins = []string{mysql.AUTH_NATIVE_PASSWORD, mysql.AUTH_CACHING_SHA2_PASSWORD, mysql.AUTH_MARIADB_ED25519}

// errUnsafeAuth is why a login to a master was abandoned before the password left.
var errUnsafeAuth = errors.New("refused to authenticate to the master in a way that would send the password in clear")

// maxLoginPacket bounds a server packet read during the login (greeting, auth
// switch, auth data): they are small.
const maxLoginPacket = 64 << 10

// authGuard sits under go-mysql's client on a connection without TLS and reads the
// server's packets until the login ends (OK or error). A greeting or auth switch
// naming a plugin outside safePlugins fails the read that would deliver it, so the
// client never answers it.
type authGuard struct {
	net.Conn
	pending []byte // a checked packet not yet handed to the client
	done    bool
	first   bool // the next packet is the greeting
	report  func(error)
	failed  error
}

func (g *authGuard) Read(p []byte) (int, error) {
	if g.failed != nil {
		return 0, g.failed
	}
	if len(g.pending) == 0 && !g.done {
		pkt, err := g.readPacket()
		if err != nil {
			return 0, err
		}
		if err := g.check(pkt[4:]); err != nil {
			g.report(err)
			g.done, g.failed = true, err
			return 0, err
		}
		g.pending = pkt
	}
	if len(g.pending) > 0 {
		n := copy(p, g.pending)
		g.pending = g.pending[n:]
		return n, nil
	}
	return g.Conn.Read(p)
}

func (g *authGuard) readPacket() ([]byte, error) {
	hdr := make([]byte, 4)
	if _, err := io.ReadFull(g.Conn, hdr); err != nil {
		return nil, err
	}
	n := int(hdr[0]) | int(hdr[1])<<8 | int(hdr[2])<<16
	if n > maxLoginPacket {
		return nil, fmt.Errorf("master sent a %d-byte packet during login (at most %d): not a MySQL server?", n, maxLoginPacket)
	}
	pkt := make([]byte, 4+n)
	copy(pkt, hdr)
	if _, err := io.ReadFull(g.Conn, pkt[4:]); err != nil {
		return nil, err
	}
	return pkt, nil
}

// check inspects one server packet of the login.
func (g *authGuard) check(body []byte) error {
	if g.first {
		g.first = false
		if len(body) > 0 && body[0] == mysql.ERR_HEADER {
			g.done = true
			return nil
		}
		return checkPlugin(greetingPlugin(body))
	}
	if len(body) == 0 {
		return nil
	}
	switch body[0] {
	case mysql.OK_HEADER, mysql.ERR_HEADER:
		g.done = true
	case mysql.EOF_HEADER: // auth switch request: plugin name, NUL, data
		if len(body) > 1 {
			name, _, _ := bytes.Cut(body[1:], []byte{0})
			return checkPlugin(string(name))
		}
		return checkPlugin("mysql_old_password") // a bare 0xFE asks for the pre-4.1 scramble
	}
	return nil
}

func checkPlugin(name string) error {
	for _, p := range safePlugins {
		if name == p || name == "" {
			return nil
		}
	}
	return fmt.Errorf("%w: the master asked for authentication plugin %q without TLS; connect with --source-tls, or give the replication user mysql_native_password or caching_sha2_password", errUnsafeAuth, name)
}

// greetingPlugin returns the plugin a protocol-10 greeting names ("" if none).
func greetingPlugin(b []byte) string {
	if len(b) < 1 || b[0] != 10 {
		return ""
	}
	i := bytes.IndexByte(b[1:], 0)
	if i < 0 {
		return ""
	}
	rest := b[1+i+1:]
	// connection id (4), auth data part 1 (8), filler (1), capability low (2),
	// charset (1), status (2), capability high (2), auth data length (1), reserved (10)
	if len(rest) < 31 {
		return ""
	}
	authLen := int(rest[20])
	rest = rest[31:]
	skip := max(13, authLen-8)
	if len(rest) < skip {
		return ""
	}
	name, _, _ := bytes.Cut(rest[skip:], []byte{0})
	return string(name)
}

// masterDialer dials a master (within timeout); without TLS the connection goes
// through an authGuard. refused reports why the last login through it was
// abandoned, if it was: go-mysql's error for a failed read says less.
func masterDialer(tlsCfg *tls.Config, timeout time.Duration, w *linkWatch) (dial client.Dialer, refused func() error) {
	var last atomic.Pointer[error]
	dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
		d := net.Dialer{Timeout: timeout}
		c, err := d.DialContext(ctx, network, addr)
		if err == nil && w != nil {
			c = w.wrap(c)
		}
		if err != nil || tlsCfg != nil {
			return c, err
		}
		return &authGuard{Conn: c, first: true, report: func(err error) { last.Store(&err) }}, nil
	}
	refused = func() error {
		if p := last.Load(); p != nil {
			return *p
		}
		return nil
	}
	return dial, refused
}
