package mysqlfront

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/go-mysql-org/go-mysql/mysql"
)

// Limits bound what clients may take from a node, so that no client (or crowd of
// them) starves the others. Zero values mean no limit.
type Limits struct {
	// MaxConnections bounds open client connections; more are refused at accept
	// with error 1040.
	MaxConnections int
	// MaxUserConnections bounds one user's connections (error 1203).
	MaxUserConnections int
	// MaxHandshakesPerHost bounds one client address's connections that have not
	// logged in yet (error 1040): a stranger cannot hold the node's connections.
	MaxHandshakesPerHost int
	// MaxAllowedPacket bounds a client packet (a statement, a dump request): a
	// larger length header is refused (error 1153) before anything is allocated
	// for it.
	MaxAllowedPacket int64
	// HandshakeTimeout bounds the handshake and login.
	HandshakeTimeout time.Duration
	// WriteTimeout bounds one write to a client (an answer, a piece of a dump):
	// a client that stops reading loses its session (0: two minutes).
	WriteTimeout time.Duration
	// IdleTimeout closes a session that sends nothing for this long while it is
	// not dumping (as MySQL's wait_timeout).
	IdleTimeout time.Duration
	// AllowIPs, when set, is the only client addresses accepted; others are
	// refused at accept with error 1130.
	AllowIPs *AllowList
}

// minHeartbeat is the shortest heartbeat period served: a replica asking for less
// (down to 1 ns) would make the node spin writing heartbeats.
const minHeartbeat = time.Millisecond

// servedHeartbeat is the period a dump's heartbeats are sent at: whoever asked (a
// replica on this node, or another node relaying one over the cluster service), no
// less than minHeartbeat; 0 means none.
func servedHeartbeat(asked time.Duration) time.Duration {
	if asked <= 0 {
		return 0
	}
	return max(asked, minHeartbeat)
}

// AllowList is a set of addresses and networks, as kingshard's allow_ips.
type AllowList struct{ prefixes []netip.Prefix }

// ParseAllowList reads a comma-separated list of IP addresses and CIDR networks.
func ParseAllowList(s string) (*AllowList, error) {
	l := &AllowList{}
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		if strings.Contains(f, "/") {
			p, err := netip.ParsePrefix(f)
			if err != nil {
				return nil, fmt.Errorf("allow list: %q is not an address or CIDR network: %w", f, err)
			}
			l.prefixes = append(l.prefixes, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(f)
		if err != nil {
			return nil, fmt.Errorf("allow list: %q is not an address or CIDR network: %w", f, err)
		}
		l.prefixes = append(l.prefixes, netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()))
	}
	if len(l.prefixes) == 0 {
		return nil, errors.New("allow list is empty: name at least one address or network")
	}
	return l, nil
}

// Allows reports whether a client's address is on the list.
func (l *AllowList) Allows(addr net.Addr) bool {
	ap, err := netip.ParseAddrPort(addr.String())
	if err != nil {
		return false
	}
	ip := ap.Addr().Unmap().WithZone("")
	for _, p := range l.prefixes {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// refuse answers a connection with a MySQL error packet instead of the handshake,
// as a server over its limits does, and closes it.
func refuse(c net.Conn, seq byte, code uint16, msg string) {
	defer c.Close()
	body := []byte{0xff, byte(code), byte(code >> 8), '#'}
	state := mysql.DEFAULT_MYSQL_STATE
	if s, ok := mysql.MySQLState[code]; ok {
		state = s
	}
	body = append(body, state...)
	body = append(body, msg...)
	pkt := make([]byte, 4, 4+len(body))
	binary.LittleEndian.PutUint32(pkt, uint32(len(body)))
	pkt[3] = seq
	_ = c.SetWriteDeadline(time.Now().Add(2 * time.Second))
	_, _ = c.Write(append(pkt, body...))
}
