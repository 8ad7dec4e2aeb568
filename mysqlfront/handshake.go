package mysqlfront

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"net"
	"unicode/utf8"

	"github.com/go-mysql-org/go-mysql/mysql"
	"github.com/go-mysql-org/go-mysql/packet"

	"github.com/flotilla-relay/flotilla/internal/mysqlauth"
)

// serverCaps are the capabilities the front end announces (CLIENT_SSL is added when
// TLS is configured). No CLIENT_DEPRECATE_EOF: resultsets end with EOF packets, which
// every replica understands.
const serverCaps = mysql.CLIENT_LONG_PASSWORD | mysql.CLIENT_LONG_FLAG | mysql.CLIENT_CONNECT_WITH_DB |
	mysql.CLIENT_PROTOCOL_41 | mysql.CLIENT_TRANSACTIONS | mysql.CLIENT_SECURE_CONNECTION |
	mysql.CLIENT_PLUGIN_AUTH | mysql.CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA | mysql.CLIENT_CONNECT_ATTRS

// sslRequestLen is the size of the SSLRequest packet a client sends, instead of its
// handshake response, to switch to TLS.
const sslRequestLen = 4 + 4 + 1 + 23

// handshakeResponse is what a client answers the initial handshake with.
type handshakeResponse struct {
	caps     uint32
	user     string
	authData []byte
	plugin   string
}

// newNonce returns a 20-byte scramble as MySQL makes them: 7-bit, never NUL (the
// handshake NUL-terminates it) nor '$'.
func newNonce() []byte {
	b := make([]byte, 20)
	_, _ = rand.Read(b)
	for i := range b {
		b[i] &= 0x7f
		if b[i] == 0 || b[i] == '$' {
			b[i]++
		}
	}
	return b
}

// initialHandshake is the server's first packet (protocol 10).
func initialHandshake(face Listener, connID uint32, nonce []byte, caps uint32) []byte {
	data := make([]byte, 4, 128)
	data = append(data, 10)
	data = append(data, face.greeting()...)
	data = append(data, 0)
	data = binary.LittleEndian.AppendUint32(data, connID)
	data = append(data, nonce[:8]...)
	data = append(data, 0)
	data = append(data, byte(caps), byte(caps>>8), face.collation())
	data = append(data, byte(mysql.SERVER_STATUS_AUTOCOMMIT), 0)
	data = append(data, byte(caps>>16), byte(caps>>24), byte(len(nonce)+1))
	data = append(data, make([]byte, 10)...)
	data = append(data, nonce[8:]...)
	data = append(data, 0)
	data = append(data, mysqlNative...)
	return append(data, 0)
}

const mysqlNative = mysql.AUTH_NATIVE_PASSWORD

// errHandshake is the answer to a handshake response that cannot be parsed.
func errHandshake(what string) error {
	return mysql.NewError(mysql.ER_HANDSHAKE_ERROR, "Bad handshake: "+what)
}

// lenencInt decodes a length-encoded integer, checking it fits in b: it returns the
// value, the bytes it took, and false for a truncated or NULL (0xfb) one.
func lenencInt(b []byte) (uint64, int, bool) {
	if len(b) == 0 {
		return 0, 0, false
	}
	var size int
	switch b[0] {
	case 0xfb, 0xff:
		return 0, 0, false
	case 0xfc:
		size = 2
	case 0xfd:
		size = 3
	case 0xfe:
		size = 8
	default:
		return uint64(b[0]), 1, true
	}
	if len(b) < 1+size {
		return 0, 0, false
	}
	var v uint64
	for i := size; i >= 1; i-- {
		v = v<<8 | uint64(b[i])
	}
	return v, 1 + size, true
}

// parseHandshakeResponse decodes HandshakeResponse41; anything short or malformed
// is ER_HANDSHAKE_ERROR, never a panic.
func parseHandshakeResponse(data []byte) (handshakeResponse, error) {
	var r handshakeResponse
	if len(data) < sslRequestLen {
		return r, errHandshake("handshake response too short")
	}
	r.caps = binary.LittleEndian.Uint32(data)
	if r.caps&mysql.CLIENT_PROTOCOL_41 == 0 {
		return r, errHandshake("the client does not speak protocol 4.1 (CLIENT_PROTOCOL_41); use a MySQL 5.x or later or MariaDB client")
	}
	rest := data[sslRequestLen:]
	cstr := func() (string, bool) {
		i := bytes.IndexByte(rest, 0)
		if i < 0 {
			return "", false
		}
		s := string(rest[:i])
		rest = rest[i+1:]
		return s, true
	}
	var ok bool
	if r.user, ok = cstr(); !ok {
		return r, errHandshake("user name not terminated")
	}
	if utf8.RuneCountInString(r.user) > mysqlauth.MaxUserName {
		return r, errHandshake(fmt.Sprintf("user name longer than %d characters", mysqlauth.MaxUserName))
	}
	switch {
	case r.caps&mysql.CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA != 0:
		n, m, ok := lenencInt(rest)
		if !ok || uint64(len(rest)-m) < n {
			return r, errHandshake("auth data length past the packet's end")
		}
		r.authData, rest = rest[m:m+int(n)], rest[m+int(n):]
	case r.caps&mysql.CLIENT_SECURE_CONNECTION != 0:
		if len(rest) < 1 || len(rest) < 1+int(rest[0]) {
			return r, errHandshake("auth data length past the packet's end")
		}
		r.authData, rest = rest[1:1+int(rest[0])], rest[1+int(rest[0]):]
	default:
		s, ok := cstr()
		if !ok {
			return r, errHandshake("auth data not terminated")
		}
		r.authData = []byte(s)
	}
	if r.caps&mysql.CLIENT_CONNECT_WITH_DB != 0 && len(rest) > 0 {
		if _, ok := cstr(); !ok {
			return r, errHandshake("database name not terminated")
		}
	}
	r.plugin = mysqlNative
	if r.caps&mysql.CLIENT_PLUGIN_AUTH != 0 && len(rest) > 0 {
		p, ok := cstr()
		if !ok {
			return r, errHandshake("auth plugin name not terminated")
		}
		if p != "" {
			r.plugin = p
		}
	}
	// Connection attributes (CLIENT_CONNECT_ATTRS) follow; Flotilla has no use for them.
	return r, nil
}

// handshake runs the connection phase up to the handshake response: initial
// handshake, optional switch to TLS, response. It returns the packet connection to
// go on with (over TLS if the client asked), whose reader is capped at
// preAuthMaxPacket until login raises it to --max-allowed-packet.
func (s *Server) handshake(nc net.Conn, connID uint32, nonce []byte, face Listener) (*conn, handshakeResponse, error) {
	caps := uint32(serverCaps)
	if s.TLS != nil {
		caps |= mysql.CLIENT_SSL
	}
	// Unbuffered until the client has said whether it switches to TLS: a buffered
	// reader would swallow the start of its TLS ClientHello. go-mysql's packet.Conn
	// only writes here (its zero value allocates no buffers).
	rd := &packetReader{r: nc, max: preAuthMaxPacket, preAuth: true}
	c := &conn{Conn: &packet.Conn{Conn: nc}, client: nc, rd: rd}
	if err := c.WritePacket(initialHandshake(face, connID, nonce, caps)); err != nil {
		return c, handshakeResponse{}, fmt.Errorf("write initial handshake: %w", err)
	}
	data, err := c.ReadPacket()
	if err != nil {
		return c, handshakeResponse{}, fmt.Errorf("read handshake response: %w", err)
	}
	if len(data) == sslRequestLen && binary.LittleEndian.Uint32(data)&mysql.CLIENT_SSL != 0 {
		if s.TLS == nil {
			return c, handshakeResponse{}, errHandshake("the client asked for TLS, which this server does not offer (start it with --mysql-tls-cert and --mysql-tls-key)")
		}
		tc := tls.Server(nc, s.TLS)
		if err := tc.Handshake(); err != nil {
			return c, handshakeResponse{}, fmt.Errorf("TLS handshake: %w", err)
		}
		seq := c.Sequence
		c = &conn{Conn: &packet.Conn{Conn: tc, Sequence: seq}, client: tc, rd: rd, tls: true}
		rd.r = bufio.NewReaderSize(tc, clientReadBuffer)
		if data, err = c.ReadPacket(); err != nil {
			return c, handshakeResponse{}, fmt.Errorf("read handshake response over TLS: %w", err)
		}
	} else {
		// No TLS: go on buffered; the reader has consumed exactly one packet and so
		// stands at a packet boundary.
		rd.r = bufio.NewReaderSize(nc, clientReadBuffer)
	}
	r, err := parseHandshakeResponse(data)
	c.capability = r.caps & (caps | mysql.CLIENT_SSL)
	return c, r, err
}

// clientReadBuffer is the read buffer of a client connection: commands are small,
// and larger reads bypass it.
const clientReadBuffer = 4 << 10
