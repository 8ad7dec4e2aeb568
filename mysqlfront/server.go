// Package mysqlfront is the MySQL protocol front end: unmodified MariaDB replicas and
// binlog tools connect to it as to a master. It authenticates the upstream's replica
// users, answers the queries a replica sends before asking for the binlog, and serves
// the binlog dump from the local replica of the upstream's group.
//
// One file per protocol concern: server.go (listener, auth, command loop), set.go
// (SET parsing), queries.go (the SQL a replica sends), dump.go (COM_BINLOG_DUMP).
package mysqlfront

import (
	"context"
	"crypto/rsa"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"runtime/debug"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-mysql-org/go-mysql/mysql"

	"github.com/flotilla-relay/flotilla/internal/binlog"
	"github.com/flotilla-relay/flotilla/internal/metrics"
	"github.com/flotilla-relay/flotilla/placement"
	adminv1 "github.com/flotilla-relay/flotilla/proto/adminv1"
	"github.com/flotilla-relay/flotilla/statemachine"
)

// Server accepts replica connections.
type Server struct {
	// Limits are set before Serve.
	Limits Limits
	// Listeners are all the node's MySQL ports, set before Serve: a login on a port
	// of the wrong flavor is told which one to use.
	Listeners []Listener

	// TLS, when set before Serve, lets replicas switch to TLS (MASTER_SSL=1).
	TLS *tls.Config
	// Metrics records sessions, logins, dumps and bytes sent (nil: none).
	Metrics *metrics.Relay
	// DecoyKey keys the choice of plugin an unknown user is asked to use; the same
	// on every node (derived from the cluster secret) so that nodes answer a name
	// alike. Nil: a key of this process's.
	DecoyKey []byte
	keyOnce  sync.Once

	router Router
	nodeID uint64
	log    *slog.Logger

	sha2Cache sync.Map // "user\x00hash" of caching_sha2_password logins since start
	rsaOnce   sync.Once
	rsa       *rsa.PrivateKey
	rsaErr    error

	nextID atomic.Uint64
	active atomic.Int64

	mu        sync.Mutex
	replicas  map[uint64]*replicaInfo
	userConns map[string]int
	// handshakes counts, per client address, connections not logged in yet.
	handshakes map[string]int
	refusals   *logLimiter
	rsaLogins  *rateWindow
	// rsaDecrypts counts RSA decryptions spent on logins (tests check that
	// strangers cost none).
	rsaDecrypts atomic.Uint64
	conns       map[net.Conn]struct{} // open client connections, closed at shutdown
	sessions    sync.WaitGroup
}

// replicaInfo is a connected replica (after COM_REGISTER_SLAVE or COM_BINLOG_DUMP).
type replicaInfo struct {
	gid         uint64
	addr        string
	user        string
	serverID    uint32
	host        string
	port        uint16
	mode        string
	connectedAt time.Time
	file        atomic.Uint64
	pos         atomic.Uint64
	// semi: the replica dumps as a semi-sync replica; acks counts its ACKs and
	// acked is the last position it acknowledged (file:pos).
	semi  atomic.Bool
	acks  atomic.Uint64
	acked atomic.Pointer[string]
}

// New creates a front end.
func New(router Router, nodeID uint64, log *slog.Logger) *Server {
	return &Server{
		router:     router,
		nodeID:     nodeID,
		log:        log,
		replicas:   map[uint64]*replicaInfo{},
		userConns:  map[string]int{},
		handshakes: map[string]int{},
		refusals:   newLogLimiter(),
		rsaLogins:  &rateWindow{limit: rsaLoginsPerSecond},
		conns:      map[net.Conn]struct{}{},
	}
}

// Serve accepts connections until ctx ends. Each connection runs on its own goroutine:
// a misbehaving replica can only break its own session. When ctx ends, Serve closes
// every client connection and returns once every session has ended, so nothing reads
// storage after it.
func (s *Server) Serve(ctx context.Context, lis net.Listener) error {
	return s.ServeAs(ctx, lis, Listener{Addr: lis.Addr().String()})
}

// ServeAs is Serve on a port that presents itself as l (its flavor and version).
func (s *Server) ServeAs(ctx context.Context, lis net.Listener, l Listener) error {
	go func() {
		<-ctx.Done()
		lis.Close()
		s.mu.Lock()
		for c := range s.conns {
			c.Close()
		}
		s.mu.Unlock()
	}()
	defer s.sessions.Wait()
	for {
		c, err := lis.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, net.ErrClosed) {
				return fmt.Errorf("mysql front end: accept: %w", err)
			}
			// Out of file descriptors and the like pass: the node keeps serving the
			// sessions it has and accepts again shortly.
			s.log.Warn("accept failed; retrying", "err", err)
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		if l := s.Limits.AllowIPs; l != nil && !l.Allows(c.RemoteAddr()) {
			s.refusals.warn(s.log, "client refused: address not in --allow-ips", "remote", c.RemoteAddr().String())
			s.Metrics.Refused(mysql.ER_HOST_NOT_PRIVILEGED)
			go refuse(c, 0, mysql.ER_HOST_NOT_PRIVILEGED, fmt.Sprintf("Host '%s' is not allowed to connect to this Flotilla server", hostOf(c.RemoteAddr())))
			continue
		}
		if max := s.Limits.MaxConnections; max > 0 && s.active.Load() >= int64(max) {
			s.refusals.warn(s.log, "client refused: too many connections", "remote", c.RemoteAddr().String(), "max_connections", max)
			s.Metrics.Refused(mysql.ER_CON_COUNT_ERROR)
			go refuse(c, 0, mysql.ER_CON_COUNT_ERROR, "Too many connections")
			continue
		}
		if !s.claimHandshake(handshakeKey(c.RemoteAddr())) {
			s.refusals.warn(s.log, "client refused: too many connections from its address still logging in", "remote", c.RemoteAddr().String(), "max_handshakes_per_host", s.Limits.MaxHandshakesPerHost)
			s.Metrics.PreAuthRefused("handshakes_per_host")
			s.Metrics.Refused(mysql.ER_CON_COUNT_ERROR)
			go refuse(c, 0, mysql.ER_CON_COUNT_ERROR, "Too many connections from this host that have not logged in yet (--max-handshakes-per-host)")
			continue
		}
		s.active.Add(1)
		s.Metrics.Sessions(1)
		s.mu.Lock()
		s.conns[c] = struct{}{}
		s.mu.Unlock()
		if ctx.Err() != nil { // raced with shutdown: the closer may have run already
			c.Close()
		}
		s.sessions.Add(1)
		go func() {
			defer s.sessions.Done()
			defer s.active.Add(-1)
			defer s.Metrics.Sessions(-1)
			defer func() {
				s.mu.Lock()
				delete(s.conns, c)
				s.mu.Unlock()
			}()
			s.handle(ctx, c, l)
		}()
	}
}

// handshakeKey is what connections still logging in are counted by: the client's
// IPv4 address, or its IPv6 /64 (one host usually holds a whole /64).
func handshakeKey(a net.Addr) string {
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return hostOf(a)
	}
	ip := ap.Addr().Unmap()
	if ip.Is4() {
		return ip.String()
	}
	p, err := ip.WithZone("").Prefix(64)
	if err != nil {
		return ip.String()
	}
	return p.String()
}

func hostOf(a net.Addr) string {
	if h, _, err := net.SplitHostPort(a.String()); err == nil {
		return h
	}
	return a.String()
}

// claimHandshake counts a connection that has not logged in against its address's
// limit; false means over it. releaseHandshake ends the count at login or close.
func (s *Server) claimHandshake(host string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if max := s.Limits.MaxHandshakesPerHost; max > 0 && s.handshakes[host] >= max {
		return false
	}
	s.handshakes[host]++
	return true
}

func (s *Server) releaseHandshake(host string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.handshakes[host]--; s.handshakes[host] <= 0 {
		delete(s.handshakes, host)
	}
}

// claimUser counts a session against its user's limit; false means over it.
func (s *Server) claimUser(user string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if max := s.Limits.MaxUserConnections; max > 0 && s.userConns[user] >= max {
		return false
	}
	s.userConns[user]++
	return true
}

func (s *Server) releaseUser(user string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.userConns[user]--; s.userConns[user] <= 0 {
		delete(s.userConns, user)
	}
}

// session is one client connection after the handshake.
type session struct {
	s      *Server
	c      *conn
	face   Listener // the port the client came in by
	id     uint64
	user   string
	remote string
	ups    []*placement.Upstream
	vars   map[string]*string // user variables; nil value = NULL
	// mysqlSet is the GTID set of a MySQL replica's dump request, which routes a
	// user several upstreams share.
	mysqlSet binlog.MySQLSet
	reg      *replicaInfo
	log      *slog.Logger
}

func (s *Server) handle(ctx context.Context, nc net.Conn, face Listener) {
	defer nc.Close()
	remote := nc.RemoteAddr().String() // with the port: tells two replicas of one host apart
	// Whatever a client sends, a bug it triggers ends its own connection only: the
	// node keeps serving every other replica and upstream.
	defer func() {
		if r := recover(); r != nil {
			s.log.Error("panic while serving a client; closing its connection only",
				"remote", remote, "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
		}
	}()
	host := hostOf(nc.RemoteAddr())
	hs := s.Limits.HandshakeTimeout
	if hs <= 0 {
		hs = 15 * time.Second
	}
	_ = nc.SetDeadline(time.Now().Add(hs))
	// Counted against the address until login ends, whichever way (even a panic).
	release := sync.OnceFunc(func() { s.releaseHandshake(handshakeKey(nc.RemoteAddr())) })
	defer release()
	c, ups, err := s.login(nc, host, face, release)
	release()
	if err != nil {
		s.log.Debug("handshake failed", "remote", remote, "err", err)
		var me *mysql.MyError
		if c.conn != nil && c.conn.rd.over {
			s.packetTooLarge(c.conn)
		} else if errors.As(err, &me) && c.conn != nil {
			s.Metrics.Refused(me.Code)
			_ = c.conn.writeError(me)
		}
		return
	}
	user := c.user
	s.Metrics.LoggedIn(user)
	defer s.releaseUser(user)
	_ = nc.SetDeadline(time.Time{})
	ss := &session{s: s, c: c.conn, face: face, id: s.nextID.Add(1), user: user, remote: remote, ups: ups, vars: map[string]*string{},
		log: s.log.With("remote", remote, "user", user)}
	defer ss.unregister()
	c2 := c.conn
	for ctx.Err() == nil {
		waitFrom := time.Now()
		if s.Limits.IdleTimeout > 0 {
			_ = nc.SetReadDeadline(waitFrom.Add(s.Limits.IdleTimeout))
		}
		data, err := c2.ReadPacket()
		if err != nil {
			// go-mysql flattens the read error; the clock tells an idle timeout.
			if s.Limits.IdleTimeout > 0 && time.Since(waitFrom) >= s.Limits.IdleTimeout {
				ss.log.Info("closing an idle session", "idle_timeout", s.Limits.IdleTimeout)
			}
			s.packetTooLarge(c2)
			return
		}
		_ = nc.SetReadDeadline(time.Time{})
		if len(data) == 0 {
			return
		}
		cont := ss.dispatch(ctx, data[0], data[1:])
		c2.ResetSequence()
		if !cont {
			return
		}
	}
}

// packetTooLarge tells a client whose packet exceeded its limit why its connection
// ends: before login, a bad handshake (nothing more is read from a stranger); after,
// error 1153 as MySQL answers a packet over --max-allowed-packet.
func (s *Server) packetTooLarge(c *conn) {
	rd := c.rd
	if !rd.over {
		return
	}
	remote := c.client.RemoteAddr().String()
	if rd.preAuth {
		s.refusals.warn(s.log, "client refused: packet before login above its limit", "remote", remote, "announced", rd.overBody, "limit", rd.max)
		s.Metrics.PreAuthRefused("packet_too_large")
		s.Metrics.Refused(mysql.ER_HANDSHAKE_ERROR)
		refuse(c.client, rd.overSeq+1, mysql.ER_HANDSHAKE_ERROR, fmt.Sprintf("Bad handshake: a packet of %d bytes before login (at most %d)", rd.overBody, rd.max))
		return
	}
	s.log.Warn("client packet above --max-allowed-packet refused", "remote", remote, "max_allowed_packet", rd.max)
	// Read the rest of the packet into nothing (bounded in time): a client still
	// sending it would otherwise meet a reset instead of the error.
	_ = c.client.SetReadDeadline(time.Now().Add(2 * time.Second))
	_, _ = io.CopyN(io.Discard, rd.r, rd.overBody) // through the buffer, which may hold part of it
	s.Metrics.Refused(mysql.ER_NET_PACKET_TOO_LARGE)
	refuse(c.client, rd.overSeq+1, mysql.ER_NET_PACKET_TOO_LARGE, fmt.Sprintf("Got a packet bigger than 'max_allowed_packet' bytes (%d)", rd.max))
}

// Command bytes not named by go-mysql's server.
const (
	comQuit           = 0x01
	comInitDB         = 0x02
	comQuery          = 0x03
	comPing           = 0x0e
	comBinlogDump     = 0x12
	comRegisterSlave  = 0x15
	comBinlogDumpGTID = 0x1e
)

// dispatch runs one command and reports whether the connection stays open.
func (ss *session) dispatch(ctx context.Context, cmd byte, data []byte) bool {
	var v any
	switch cmd {
	case comQuit:
		return false
	case comPing, comInitDB:
		v = nil
	case comQuery:
		r, err := ss.query(string(data))
		if err != nil {
			v = err
		} else {
			v = r
		}
	case comRegisterSlave:
		v = ss.registerSlave(data)
	case comBinlogDump, comBinlogDumpGTID:
		dump := ss.dump
		if cmd == comBinlogDumpGTID {
			dump = ss.dumpGTID
		}
		err := dump(ctx, data)
		if err == nil {
			return false
		}
		ss.log.Info("binlog dump ended", "err", err)
		var me *mysql.MyError
		if errors.As(err, &me) {
			ss.s.Metrics.DumpFailed(me.Code)
		}
		_ = ss.c.writeValue(err)
		return false
	default:
		v = mysql.NewError(mysql.ER_UNKNOWN_COM_ERROR, fmt.Sprintf("Flotilla does not support command 0x%02x", cmd))
	}
	// A client that stops reading must not hold its session (and what the answer
	// holds) forever.
	_ = ss.c.client.SetWriteDeadline(time.Now().Add(ss.s.writeTimeout()))
	defer func() { _ = ss.c.client.SetWriteDeadline(time.Time{}) }()
	return ss.c.writeValue(v) == nil
}

// registerSlave records COM_REGISTER_SLAVE: server_id u32, host, user, password
// (each one length byte + bytes), port u16, rank u32, master id u32.
func (ss *session) registerSlave(data []byte) error {
	if len(data) < 4 {
		return mysql.NewError(mysql.ER_MALFORMED_PACKET, "malformed COM_REGISTER_SLAVE")
	}
	r := ss.ensureRegistered()
	r.serverID = leU32(data)
	rest := data[4:]
	str := func() string {
		if len(rest) < 1 || len(rest) < 1+int(rest[0]) {
			rest = nil
			return ""
		}
		v := string(rest[1 : 1+int(rest[0])])
		rest = rest[1+int(rest[0]):]
		return v
	}
	r.host = str()
	_ = str() // user
	_ = str() // password
	if len(rest) >= 2 {
		r.port = uint16(rest[0]) | uint16(rest[1])<<8
	}
	return nil
}

func leU32(b []byte) uint32 {
	return uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16 | uint32(b[3])<<24
}

func (ss *session) ensureRegistered() *replicaInfo {
	if ss.reg == nil {
		ss.reg = &replicaInfo{addr: ss.remote, user: ss.user, connectedAt: time.Now()}
		ss.s.mu.Lock()
		ss.s.replicas[ss.id] = ss.reg
		ss.s.mu.Unlock()
	}
	return ss.reg
}

func (ss *session) unregister() {
	ss.s.mu.Lock()
	delete(ss.s.replicas, ss.id)
	ss.s.mu.Unlock()
}

// ConnectedReplicas lists replicas dumping a group from this node, for the admin API.
func (s *Server) ConnectedReplicas(gid uint64) []*adminv1.ConnectedReplica {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []*adminv1.ConnectedReplica
	for _, r := range s.replicas {
		if r.gid != gid || r.mode == "" {
			continue
		}
		out = append(out, &adminv1.ConnectedReplica{
			Addr: r.addr, User: r.user, ServerId: r.serverID, Mode: r.mode, Node: s.nodeID,
			Position:    fmt.Sprintf("%s:%d", statemachine.FileName(r.file.Load()), r.pos.Load()),
			ConnectedAt: r.connectedAt.UTC().Format(time.RFC3339),
			SemiSync:    r.semi.Load(), SemiSyncAcks: r.acks.Load(),
		})
		if a := r.acked.Load(); a != nil {
			out[len(out)-1].AckedPosition = *a
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Addr < out[j].Addr })
	return out
}

// slaveHosts returns SHOW SLAVE HOSTS rows for a group.
func (s *Server) slaveHosts(gid uint64, masterID uint32) [][]any {
	s.mu.Lock()
	defer s.mu.Unlock()
	var rows [][]any
	for _, r := range s.replicas {
		if r.gid == gid && r.serverID != 0 {
			rows = append(rows, []any{r.serverID, r.host, r.port, masterID})
		}
	}
	sort.Slice(rows, func(i, j int) bool { return rows[i][0].(uint32) < rows[j][0].(uint32) })
	return rows
}

// upstream picks the session's upstream: the only one its user belongs to, or, for a
// user several upstreams share, the one whose domain the replica's GTID position names.
func (ss *session) upstream() (*placement.Upstream, error) {
	switch len(ss.ups) {
	case 0:
		return nil, mysql.NewError(mysql.ER_MASTER_FATAL_ERROR_READING_BINLOG, fmt.Sprintf("user '%s' is no longer a replica user of any upstream", ss.user))
	case 1:
		return ss.ups[0], nil
	}
	// A shared user: a MySQL replica's GTID set names the master by server_uuid;
	// a MariaDB replica's position by server id and domain. Pick the one upstream
	// it fits.
	if ss.mysqlSet != nil {
		var match []*placement.Upstream
		for _, u := range ss.ups {
			for src := range ss.mysqlSet {
				if u.Flavor == "mysql" && strings.EqualFold(src.SID.String(), u.ServerUUID) {
					match = append(match, u)
					break
				}
			}
		}
		if len(match) == 1 {
			return match[0], nil
		}
	}
	if v := ss.vars["slave_connect_state"]; v != nil {
		if pos, err := binlog.ParsePosition(*v); err == nil && len(pos) > 0 {
			// By the current masters first; then by those before a switch (a
			// replica that was away during a failover).
			for _, history := range []bool{false, true} {
				var match []*placement.Upstream
				for _, u := range ss.ups {
					for _, g := range pos {
						if g.Server == u.ServerID || history && u.HadServerID(g.Server) || g.Domain == u.DomainID && g.Domain != 0 {
							match = append(match, u)
							break
						}
					}
				}
				if len(match) == 1 {
					return match[0], nil
				}
			}
		}
	}
	var names []string
	for _, u := range ss.ups {
		names = append(names, u.Name)
	}
	return nil, mysql.NewError(mysql.ER_MASTER_FATAL_ERROR_READING_BINLOG,
		fmt.Sprintf("replica user '%s' is shared by upstreams %s and the replica's GTID position does not tell them apart; give each upstream its own replica user",
			ss.user, strings.Join(names, ", ")))
}
