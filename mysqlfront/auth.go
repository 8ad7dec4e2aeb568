package mysqlfront

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"encoding/pem"
	"fmt"
	"net"
	"slices"

	"github.com/go-mysql-org/go-mysql/mysql"

	"github.com/flotilla-relay/flotilla/internal/mysqlauth"
	"github.com/flotilla-relay/flotilla/placement"
)

// caching_sha2_password's AuthMoreData codes.
const (
	sha2FastAuthOK    = 3
	sha2FullAuth      = 4
	sha2RequestPubKey = 2
)

// errLoginRefused is what a refused login answers: MySQL's standard 1045 text, which
// tells a stranger nothing about which users exist. The reason goes to the log.
func errLoginRefused(user, host string, withPassword bool) error {
	using := "YES"
	if !withPassword {
		using = "NO"
	}
	return mysql.NewError(mysql.ER_ACCESS_DENIED_ERROR, fmt.Sprintf("Access denied for user '%s'@'%s' (using password: %s)", user, host, using))
}

// unmatchable is a hash no password has (it is not hex): logins that must fail
// are checked against it.
const unmatchable = "-"

// candidate is one upstream declaring the login's user, with its credential.
type candidate struct {
	up         *placement.Upstream
	plugin     string
	hash       string
	requireTLS bool
}

// login is the authentication exchange of one connection.
type login struct {
	s     *Server
	c     *conn
	host  string
	nonce []byte
	resp  handshakeResponse
}

// authenticate checks the client's proof of its password against the hash of every
// upstream that declares its user and returns the upstreams whose password it knows:
// a user shared by upstreams with different passwords reaches only its own ones.
func (l *login) authenticate() ([]*placement.Upstream, error) {
	user := l.resp.user
	refuse := func(reason string, withPassword bool) error {
		l.s.refusals.warn(l.s.log, "replica login refused: "+reason, "user", clip(user), "remote", l.host)
		return errLoginRefused(user, l.host, withPassword)
	}
	st, err := l.s.router.Metadata()
	if err != nil {
		return nil, mysql.NewError(mysql.ER_UNKNOWN_ERROR, "Flotilla metadata is not available yet; retry shortly")
	}
	var cands []candidate
	tlsRefused := false
	for _, u := range st.ForReplicaUser(user) {
		for _, ru := range u.ReplicaUsers {
			if ru.User != user {
				continue
			}
			if ru.RequireTLS && !l.c.tls {
				tlsRefused = true
				continue
			}
			p, h := ru.Credential()
			if h == "" {
				continue // no password: such an entry never logs in
			}
			cands = append(cands, candidate{up: u, plugin: p, hash: h, requireTLS: ru.RequireTLS})
		}
	}
	// A user that cannot log in (unknown, or TLS required) goes through the same
	// exchange against a hash nothing matches, as MySQL does: the client cannot tell
	// it from a wrong password.
	why := ""
	if len(cands) == 0 {
		why = "no upstream relayed by Flotilla declares this replica user (declare it with `flotilla upstream add --replica-user`)"
		if tlsRefused {
			why = "this replica user requires TLS (connect with MASTER_SSL=1)"
		}
		cands = []candidate{{plugin: l.s.decoyPlugin(st, user), hash: unmatchable}}
	}
	// The client answered the greeting (mysql_native_password) for the plugin it
	// chose. As MySQL does, it is asked to answer again, with a fresh nonce, unless it
	// used the greeting's plugin and a candidate uses that: a MySQL 8 client starting
	// with caching_sha2_password sends no data and waits for this switch.
	plugin, authData := l.resp.plugin, l.resp.authData
	if plugin != mysqlNative || !slices.ContainsFunc(cands, func(c candidate) bool { return c.plugin == plugin }) {
		if !slices.ContainsFunc(cands, func(c candidate) bool { return c.plugin == plugin }) {
			plugin = cands[0].plugin
		}
		if l.resp.caps&mysql.CLIENT_PLUGIN_AUTH == 0 {
			return nil, refuse(fmt.Sprintf("the client cannot switch to %s (no CLIENT_PLUGIN_AUTH)", plugin), true)
		}
		if authData, err = l.authSwitch(plugin); err != nil {
			return nil, err
		}
	}
	if len(authData) == 0 || len(authData) == 1 && authData[0] == 0 {
		if why == "" {
			why = "no password given"
		}
		return nil, refuse(why, false)
	}
	var matched []*placement.Upstream
	keep := func(c candidate) {
		if !slices.Contains(matched, c.up) {
			matched = append(matched, c.up)
		}
	}
	switch plugin {
	case mysqlauth.Native:
		for _, c := range cands {
			if c.plugin == plugin && mysqlauth.CheckScramble(plugin, c.hash, l.nonce, authData) {
				keep(c)
			}
		}
	case mysqlauth.CachingSHA2:
		// Fast path, as MySQL: only for a password that passed full authentication
		// on this node since it started.
		for _, c := range cands {
			if c.plugin == plugin && l.s.sha2Cached(user, c.hash) && mysqlauth.CheckScramble(plugin, c.hash, l.nonce, authData) {
				keep(c)
			}
		}
		if len(matched) > 0 {
			if err := l.c.WritePacket([]byte{0, 0, 0, 0, mysql.MORE_DATE_HEADER, sha2FastAuthOK}); err != nil {
				return nil, err
			}
			break
		}
		password, err := l.fullAuth(why == "")
		if err != nil {
			return nil, err
		}
		for _, c := range cands {
			if c.plugin == plugin && mysqlauth.CheckClear(plugin, c.hash, password) {
				keep(c)
				l.s.sha2Remember(user, c.hash)
			}
		}
	default:
		return nil, refuse(fmt.Sprintf("authentication plugin %q is not supported", plugin), true)
	}
	if why != "" {
		return nil, refuse(why, true)
	}
	if len(matched) == 0 {
		return nil, refuse("wrong password", true)
	}
	return matched, nil
}

// authSwitch asks the client to answer a fresh nonce with another plugin.
func (l *login) authSwitch(plugin string) ([]byte, error) {
	l.nonce = newNonce()
	data := append([]byte{0, 0, 0, 0, mysql.EOF_HEADER}, plugin...)
	data = append(data, 0)
	data = append(data, l.nonce...)
	data = append(data, 0)
	if err := l.c.WritePacket(data); err != nil {
		return nil, fmt.Errorf("write auth switch request: %w", err)
	}
	resp, err := l.c.ReadPacket()
	if err != nil {
		return nil, fmt.Errorf("read auth switch response: %w", err)
	}
	return resp, nil
}

// fullAuth is caching_sha2_password's full authentication: the client sends its
// password in clear over TLS, or without TLS encrypted with the node's RSA key
// (which it may first ask for). RSA is spent only on a user that may log in
// (known), and at most rsaLoginsPerSecond times a second: a stranger gets the same
// exchange, then the same refusal, without the node decrypting anything.
func (l *login) fullAuth(known bool) (string, error) {
	if err := l.c.WritePacket([]byte{0, 0, 0, 0, mysql.MORE_DATE_HEADER, sha2FullAuth}); err != nil {
		return "", err
	}
	data, err := l.c.ReadPacket()
	if err != nil {
		return "", fmt.Errorf("read password for full authentication: %w", err)
	}
	if l.c.tls {
		return string(trimNUL(data)), nil
	}
	key, err := l.s.rsaKey()
	if err != nil {
		return "", err
	}
	if len(data) == 1 && data[0] == sha2RequestPubKey {
		der, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
		if err != nil {
			return "", fmt.Errorf("encode RSA public key: %w", err)
		}
		pk := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
		if err := l.c.WritePacket(append([]byte{0, 0, 0, 0, mysql.MORE_DATE_HEADER}, pk...)); err != nil {
			return "", err
		}
		if data, err = l.c.ReadPacket(); err != nil {
			return "", fmt.Errorf("read RSA-encrypted password: %w", err)
		}
	}
	// The budget is charged for every user, so that running out of it answers a
	// stranger as it answers a replica user.
	if ok, _ := l.s.rsaLogins.allow(); !ok {
		l.s.Metrics.PreAuthRefused("rsa_rate")
		l.s.refusals.warn(l.s.log, "replica login refused: too many caching_sha2_password logins without TLS this second (connect with MASTER_SSL=1)",
			"user", clip(l.resp.user), "remote", l.host, "limit_per_second", rsaLoginsPerSecond)
		return "", mysql.NewError(mysql.ER_CON_COUNT_ERROR, "Too many logins needing the RSA key exchange; retry shortly, or connect with TLS")
	}
	if !known {
		return "", nil // refused by the caller, for the reason it knows
	}
	l.s.rsaDecrypts.Add(1)
	plain, err := rsa.DecryptOAEP(sha1.New(), rand.Reader, key, data, nil)
	if err != nil {
		// A client without TLS and without the server's key sends its password in
		// clear; refuse it rather than read it.
		l.s.refusals.warn(l.s.log, "replica login refused: caching_sha2_password without TLS needs the RSA key exchange (MASTER_SSL=1, or GET_MASTER_PUBLIC_KEY=1)",
			"user", clip(l.resp.user), "remote", l.host)
		return "", errLoginRefused(l.resp.user, l.host, true)
	}
	for i := range plain {
		plain[i] ^= l.nonce[i%len(l.nonce)]
	}
	return string(trimNUL(plain)), nil
}

// rsaLoginsPerSecond bounds the RSA decryptions logins may cost a node (each takes
// about a millisecond of CPU).
const rsaLoginsPerSecond = 200

// decoyPlugin is the plugin an unknown user is asked to use: one of those the
// declared replica users use, chosen by a keyed hash of the name, so that the
// exchange never tells a stranger whether a user exists (the key is the cluster's,
// so every node answers a name alike).
func (s *Server) decoyPlugin(st *placement.State, user string) string {
	seen := map[string]bool{}
	for _, u := range st.Upstreams {
		for _, ru := range u.ReplicaUsers {
			p, _ := ru.Credential()
			seen[p] = true
		}
	}
	plugins := make([]string, 0, len(seen))
	for p := range seen {
		plugins = append(plugins, p)
	}
	if len(plugins) == 0 {
		return mysqlauth.Native
	}
	slices.Sort(plugins)
	m := hmac.New(sha256.New, s.nameKey())
	m.Write([]byte(user))
	return plugins[binary.BigEndian.Uint32(m.Sum(nil))%uint32(len(plugins))]
}

// nameKey is DecoyKey, or a key of this process's when none was set.
func (s *Server) nameKey() []byte {
	s.keyOnce.Do(func() {
		if s.DecoyKey == nil {
			s.DecoyKey = make([]byte, 32)
			_, _ = rand.Read(s.DecoyKey)
		}
	})
	return s.DecoyKey
}

func trimNUL(b []byte) []byte {
	if n := len(b); n > 0 && b[n-1] == 0 {
		return b[:n-1]
	}
	return b
}

// sha2Cached reports whether user logged in with the password hashed as hash since
// the node started (caching_sha2_password's fast path).
func (s *Server) sha2Cached(user, hash string) bool {
	_, ok := s.sha2Cache.Load(user + "\x00" + hash)
	return ok
}

func (s *Server) sha2Remember(user, hash string) { s.sha2Cache.Store(user+"\x00"+hash, true) }

// rsaKey is the node's key for caching_sha2_password's exchange without TLS, made
// on first use and never written anywhere.
func (s *Server) rsaKey() (*rsa.PrivateKey, error) {
	s.rsaOnce.Do(func() {
		s.rsa, s.rsaErr = rsa.GenerateKey(rand.Reader, 2048)
	})
	if s.rsaErr != nil {
		return nil, fmt.Errorf("generate RSA key for caching_sha2_password: %w", s.rsaErr)
	}
	return s.rsa, nil
}

// loggedIn is a connection that has passed the handshake (and, without an error,
// the login).
type loggedIn struct {
	conn *conn
	user string
}

// maxPacketAfterLogin is the packet limit once logged in without
// --max-allowed-packet: MySQL's own ceiling.
const maxPacketAfterLogin = 1 << 30

// login runs the connection phase: handshake, authentication, the per-user limit,
// then OK. On error, li.conn (when not nil) is the connection to send a MySQL error
// on, and its reader tells whether a packet was refused as too large. endHandshake runs
// before the OK is sent: a client told it logged in is no longer counted as logging
// in (it may open its next connection at once).
func (s *Server) login(nc net.Conn, host string, face Listener, endHandshake func()) (li loggedIn, ups []*placement.Upstream, err error) {
	nonce := newNonce()
	c, resp, err := s.handshake(nc, uint32(s.nextID.Add(1)), nonce, face)
	li = loggedIn{conn: c, user: resp.user}
	if err != nil {
		return li, nil, err
	}
	l := &login{s: s, c: c, host: host, nonce: nonce, resp: resp}
	if ups, err = l.authenticate(); err != nil {
		return li, nil, err
	}
	if ups, err = s.servedHere(face, ups); err != nil {
		s.refusals.warn(s.log, "replica login refused: its upstream's flavor has another port", "user", resp.user, "remote", host, "err", err)
		return li, nil, err
	}
	// The per-user limit counts the session before the client is told it logged in,
	// so an over-limit login fails as MySQL's does (error 1203).
	if !s.claimUser(resp.user) {
		s.refusals.warn(s.log, "replica login refused: too many connections for its user", "remote", host, "user", resp.user)
		return li, nil, mysql.NewError(mysql.ER_TOO_MANY_USER_CONNECTIONS,
			fmt.Sprintf("User %s already has more than 'max_user_connections' active connections", resp.user))
	}
	endHandshake()
	if err := c.writeOK(nil); err != nil {
		s.releaseUser(resp.user)
		return li, nil, err
	}
	c.ResetSequence()
	c.rd.max, c.rd.preAuth = s.Limits.MaxAllowedPacket, false
	if c.rd.max <= 0 {
		c.rd.max = maxPacketAfterLogin
	}
	return li, ups, nil
}
