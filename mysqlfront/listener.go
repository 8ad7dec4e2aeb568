package mysqlfront

import (
	"fmt"
	"net"
	"regexp"
	"strings"

	"github.com/go-mysql-org/go-mysql/mysql"

	"github.com/flotilla-relay/flotilla/placement"
)

// Listener is one MySQL port of a node and the server it presents itself as. Clients
// pick their protocol from the greeting, which precedes the login that tells which
// upstream they want (Vitess's go/mysql and mysql-binlog-connector-java speak
// MariaDB's dialect to a "-MariaDB" greeting; a MySQL 8.4 replica sends tagged GTIDs
// only to a source of 8.3 or later), so a node that relays both flavors gives each
// its own port, as MaxScale sets version_string per listener.
//
// Invariant: Flavor is "mariadb" or "mysql" once parsed; a login on a port whose
// flavor differs from the upstream's is refused whenever the node has a port of the
// upstream's flavor, naming it (Server.servedHere).
type Listener struct {
	// Addr is HOST:PORT to listen on.
	Addr string
	// Flavor is the server the greeting announces: "mariadb" (the default) or "mysql".
	Flavor string
	// Version is the version announced; empty means the flavor's default. After
	// login, an explicit version is also what @@version and VERSION() answer;
	// without one they answer the upstream's own version (a replica on a default
	// port thus sees its master's, as before ports had flavors).
	Version string
}

// Default versions announced by a listener given without one: the long-term
// releases whose replicas Flotilla is tested with.
const (
	DefaultMariaDBVersion = "10.11.6"
	DefaultMySQLVersion   = "8.4.3"
)

// versionRE is what a version must look like: MySQL clients read major.minor.patch
// from its start.
var versionRE = regexp.MustCompile(`^[0-9]{1,2}\.[0-9]{1,2}\.[0-9]{1,3}[A-Za-z0-9._+-]{0,40}$`)

// ParseListener reads a --mysql-addr value: HOST:PORT, or FLAVOR=HOST:PORT with an
// optional ",version=X" (mysql=0.0.0.0:3308,version=8.4.3).
func ParseListener(spec string) (Listener, error) {
	var l Listener
	parts := strings.Split(strings.TrimSpace(spec), ",")
	addr := parts[0]
	if f, a, ok := strings.Cut(addr, "="); ok {
		l.Flavor, addr = strings.ToLower(strings.TrimSpace(f)), strings.TrimSpace(a)
	}
	switch l.Flavor {
	case "":
		l.Flavor = "mariadb"
	case "mariadb", "mysql":
	default:
		return l, fmt.Errorf("--mysql-addr %q: flavor %q is neither mariadb nor mysql (write mysql=HOST:PORT or mariadb=HOST:PORT)", spec, l.Flavor)
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return l, fmt.Errorf("--mysql-addr %q: %q is not HOST:PORT", spec, addr)
	}
	l.Addr = addr
	for _, p := range parts[1:] {
		k, v, _ := strings.Cut(p, "=")
		switch strings.ToLower(strings.TrimSpace(k)) {
		case "version":
			l.Version = strings.TrimSpace(v)
		default:
			return l, fmt.Errorf("--mysql-addr %q: unknown option %q (only version=X)", spec, k)
		}
	}
	if l.Version != "" {
		if !versionRE.MatchString(l.Version) {
			return l, fmt.Errorf("--mysql-addr %q: version %q is not MAJOR.MINOR.PATCH with an optional suffix (8.4.3, 10.11.6)", spec, l.Version)
		}
		if l.Flavor == "mysql" && strings.Contains(strings.ToLower(l.Version), "mariadb") {
			return l, fmt.Errorf("--mysql-addr %q: a mysql port must not announce a MariaDB version (clients would speak MariaDB to it)", spec)
		}
	}
	return l, nil
}

// String is the listener as --mysql-addr takes it.
func (l Listener) String() string {
	s := l.Addr
	if l.flavor() == "mysql" {
		s = "mysql=" + s
	}
	if l.Version != "" {
		s += ",version=" + l.Version
	}
	return s
}

func (l Listener) flavor() string {
	if l.Flavor == "mysql" {
		return "mysql"
	}
	return "mariadb"
}

// version is what @@version answers for u on this port.
func (l Listener) version(u *placement.Upstream) string {
	switch {
	case l.Version != "" && l.flavor() == "mariadb" && !strings.Contains(strings.ToLower(l.Version), "mariadb"):
		return l.Version + "-MariaDB"
	case l.Version != "":
		return l.Version
	case u != nil && u.Version != "":
		return u.Version
	case l.flavor() == "mysql":
		return DefaultMySQLVersion
	}
	return DefaultMariaDBVersion + "-MariaDB-flotilla"
}

// greeting is the server version of the initial handshake. MariaDB prefixes its
// own with "5.5.5-" (old clients required a 5.x major); MariaDB clients and
// replicas strip it and see "MariaDB".
func (l Listener) greeting() string {
	if l.flavor() == "mysql" {
		v := l.Version
		if v == "" {
			v = DefaultMySQLVersion
		}
		return v + "-flotilla"
	}
	v := l.Version
	if v == "" {
		v = DefaultMariaDBVersion
	}
	if !strings.Contains(v, "MariaDB") {
		v += "-MariaDB"
	}
	return "5.5.5-" + v + "-flotilla"
}

// comment is @@version_comment: the flavor's own, then what answers.
func (l Listener) comment() string {
	if l.flavor() == "mysql" {
		return "MySQL Community Server - GPL compatible; Flotilla binlog relay"
	}
	return "mariadb.org binary distribution compatible; Flotilla binlog relay"
}

// collation is the greeting's character set: MySQL 8's default, or the one
// MariaDB announces.
func (l Listener) collation() uint8 {
	if l.flavor() == "mysql" {
		return 255 // utf8mb4_0900_ai_ci
	}
	return mysql.DEFAULT_COLLATION_ID
}

func upstreamFlavor(u *placement.Upstream) string {
	if u.Flavor == "mysql" {
		return "mysql"
	}
	return "mariadb"
}

// listenerFor returns the node's port of flavor f, if it has one.
func (s *Server) listenerFor(f string) (Listener, bool) {
	for _, l := range s.Listeners {
		if l.flavor() == f {
			return l, true
		}
	}
	return Listener{}, false
}

// servedHere keeps the upstreams a login on port l may reach: those of its flavor,
// and those of a flavor the node has no port for (a single default port serves
// both, as before ports had flavors). A login left with none is refused with the
// port to use instead.
func (s *Server) servedHere(l Listener, ups []*placement.Upstream) ([]*placement.Upstream, error) {
	var kept []*placement.Upstream
	var other *placement.Upstream
	for _, u := range ups {
		f := upstreamFlavor(u)
		if _, has := s.listenerFor(f); f == l.flavor() || !has {
			kept = append(kept, u)
		} else if other == nil {
			other = u
		}
	}
	if len(kept) > 0 || other == nil {
		return kept, nil
	}
	right, _ := s.listenerFor(upstreamFlavor(other))
	names := map[string]string{"mysql": "MySQL", "mariadb": "MariaDB"}
	return nil, mysql.NewError(mysql.ER_UNKNOWN_ERROR, fmt.Sprintf(
		"upstream %s is a %s master: connect to this node's %s port %s (this port, %s, greets clients as %s, and they would speak the wrong dialect)",
		other.Name, names[upstreamFlavor(other)], names[upstreamFlavor(other)], portName(right.Addr), portName(l.Addr), names[l.flavor()]))
}

// portName is how a client should be told a port: the address, or only the port
// when the node listens on every address (0.0.0.0 is nowhere to connect to).
func portName(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
		return port
	}
	return addr
}
