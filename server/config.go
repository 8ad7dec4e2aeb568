package server

import (
	"bytes"
	"cmp"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"reflect"
	"sort"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/flotilla-relay/flotilla/cluster"
	"github.com/flotilla-relay/flotilla/internal/faultfs"
	"github.com/flotilla-relay/flotilla/internal/secure"
	"github.com/flotilla-relay/flotilla/mysqlfront"
)

// Config is a node's configuration (flags or YAML).
type Config struct {
	NodeID  uint64 `yaml:"node_id"`
	DataDir string `yaml:"data"`
	// MySQLAddr lists the MySQL ports, each HOST:PORT or FLAVOR=HOST:PORT[,version=X]
	// (mysqlfront.ParseListener); the cluster records them all, space-separated.
	MySQLAddr AddrList `yaml:"mysql_addr"`
	AdminAddr string   `yaml:"admin_addr"`
	RaftAddr  string   `yaml:"raft_addr"`
	// AdminListenAddr and RaftListenAddr are where the node binds when the
	// addresses the other nodes reach it by (AdminAddr, RaftAddr, recorded in the
	// cluster) are not its own: NAT, a port forward, a proxy. Empty binds the
	// advertised address.
	AdminListenAddr string            `yaml:"admin_listen_addr"`
	RaftListenAddr  string            `yaml:"raft_listen_addr"`
	Join            []string          `yaml:"join"`
	Labels          map[string]string `yaml:"labels"`
	AdminToken      string            `yaml:"admin_token"`
	// AdminTokenFile holds the admin token (a file keeps it out of `ps` and of the
	// configuration file).
	AdminTokenFile string `yaml:"admin_token_file"`
	// InsecureRaft and InsecureAdmin accept a raft address, or an admin address
	// with a token, off the loopback without node TLS: only on a network every
	// host of which is trusted.
	InsecureRaft  bool `yaml:"insecure_raft"`
	InsecureAdmin bool `yaml:"insecure_admin"`
	// RetentionAge and RetentionBytes bound each group's binlog (0 = unbounded).
	RetentionAge   time.Duration `yaml:"retention_age"`
	RetentionBytes Size          `yaml:"retention_bytes"`
	// SegmentSize is where segment files roll (0: the default, 256 MiB).
	SegmentSize Size `yaml:"segment_size"`
	// ServedFileSize closes a served file at the first transaction boundary past it
	// (0: the default, 1 GiB), as max_binlog_size does on a master.
	ServedFileSize Size `yaml:"served_file_size"`
	// RecordCache bounds the memory of large served records the node keeps for
	// replicas reading the same stretch of a binlog at once (0: the default,
	// statemachine.DefaultRecordCache, 128 MiB).
	RecordCache Size `yaml:"record_cache"`
	// MemoryPretouch is heap the node faults in at start (see pretouch): 0 for
	// none; the serve command's default is DefaultMemoryPretouch.
	MemoryPretouch Size `yaml:"memory_pretouch"`
	// RaftPayloadReserve is the most disk the raft log's spare payload files hold
	// (see internal/raftlog/spare.go): files its log cuts free, kept so that later
	// payload files overwrite blocks instead of writing them for the first time. 0
	// for none; the serve command's default is DefaultRaftPayloadReserve.
	RaftPayloadReserve Size `yaml:"raft_payload_reserve"`
	// MinFreeDisk is the free space the data directory's filesystem keeps (0: the
	// default, 512 MiB). Below it the node stops its group replicas, keeping their
	// data, until space returns: a full disk would make raft's log or a segment
	// write fail, and dragonboat stops the process then.
	MinFreeDisk Size `yaml:"min_free_disk"`
	// NodeDownAfter is how long a node may not answer before the placement
	// controller re-creates its replicas elsewhere.
	NodeDownAfter time.Duration `yaml:"node_down_after"`
	// MasterSilenceProbe is how long a master's stream may bring nothing (no event,
	// no heartbeat) before the group's leader asks the master, on a second
	// connection, whether it holds transactions the group lacks: a dead link
	// without a reset is found after two such probes.
	MasterSilenceProbe time.Duration `yaml:"master_silence_probe"`
	// Client limits of the MySQL front end (see mysqlfront.Limits).
	MaxConnections     int  `yaml:"max_connections"`
	MaxUserConnections int  `yaml:"max_user_connections"`
	MaxAllowedPacket   Size `yaml:"max_allowed_packet"`
	// MaxHandshakesPerHost bounds one client address's connections that have not
	// logged in yet.
	MaxHandshakesPerHost int           `yaml:"max_handshakes_per_host"`
	IdleTimeout          time.Duration `yaml:"idle_timeout"`
	// AllowIPs, when set, lists the client addresses and CIDR networks accepted.
	AllowIPs string `yaml:"allow_ips"`
	// MySQLTLSCert and MySQLTLSKey let replicas connect with TLS (MASTER_SSL=1).
	MySQLTLSCert string `yaml:"mysql_tls_cert"`
	MySQLTLSKey  string `yaml:"mysql_tls_key"`
	// TLS secures node-to-node traffic: raft (mutual TLS), the admin API and the
	// cluster service (server certificate; client certificates from the same CA are
	// accepted in place of the admin token).
	TLS secure.Files `yaml:"tls"`
	// MetricsAddr, when set, serves /metrics, /healthz and /readyz over HTTP.
	MetricsAddr string `yaml:"metrics_addr"`
	// LogFormat (text or json) and LogLevel (debug, info, warn, error) shape the log.
	LogFormat string `yaml:"log_format"`
	LogLevel  string `yaml:"log_level"`
	// DebugPprof serves Go's profiles under /debug/pprof/ on MetricsAddr.
	DebugPprof bool `yaml:"debug_pprof"`
	// BufferedIO writes raft payload files and segments through the page cache
	// instead of with direct I/O: for a filesystem that takes O_DIRECT but serves it
	// badly (the same bytes either way; it costs ingest CPU).
	BufferedIO bool `yaml:"buffered_io"`

	// Faults are the storage fault-injection knobs, from the environment
	// (faultfs.KnobsFromEnv), never the file: tests only.
	Faults faultfs.Knobs `yaml:"-"`

	explicit map[string]bool // keys the YAML file set (ParseConfig)
}

// ParseConfig reads a YAML configuration. Every key must be one Config knows, and
// every value must fit its key: an error names the key (and its line), so a typo is
// refused at start instead of silently ignored.
func ParseConfig(b []byte) (Config, error) {
	var cfg Config
	var doc yaml.Node
	if err := yaml.NewDecoder(bytes.NewReader(b)).Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return cfg, nil // an empty file
		}
		return cfg, fmt.Errorf("not valid YAML: %w", err)
	}
	if len(doc.Content) == 0 {
		return cfg, nil
	}
	cfg.explicit = map[string]bool{}
	if err := decodeStrict(doc.Content[0], reflect.ValueOf(&cfg).Elem(), "", cfg.explicit); err != nil {
		return cfg, err
	}
	return cfg, nil
}

// Explicit reports whether the configuration file set key (a value of 0 the file
// gives, such as retention_age: 0, is not replaced by a default).
func (c Config) Explicit(key string) bool { return c.explicit[key] }

// ConfigKeys lists every key of the YAML configuration, nested ones as "tls.ca".
func ConfigKeys() []string {
	var keys []string
	var walk func(t reflect.Type, prefix string)
	walk = func(t reflect.Type, prefix string) {
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			name := yamlName(f)
			if name == "" {
				continue
			}
			if f.Type.Kind() == reflect.Struct && f.Type != reflect.TypeOf(time.Duration(0)) {
				walk(f.Type, prefix+name+".")
				continue
			}
			keys = append(keys, prefix+name)
		}
	}
	walk(reflect.TypeOf(Config{}), "")
	sort.Strings(keys)
	return keys
}

func yamlName(f reflect.StructField) string {
	tag, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
	if tag == "-" || !f.IsExported() {
		return ""
	}
	return tag
}

// decodeStrict decodes mapping n into dst field by field, recording each key set.
func decodeStrict(n *yaml.Node, dst reflect.Value, prefix string, set map[string]bool) error {
	if n.Kind != yaml.MappingNode {
		if prefix == "" {
			return fmt.Errorf("line %d: the configuration must be a mapping of keys to values", n.Line)
		}
		return fmt.Errorf("key %s (line %d): expected a mapping", strings.TrimSuffix(prefix, "."), n.Line)
	}
	fields := map[string]reflect.Value{}
	t := dst.Type()
	for i := 0; i < t.NumField(); i++ {
		if name := yamlName(t.Field(i)); name != "" {
			fields[name] = dst.Field(i)
		}
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		key := prefix + k.Value
		if set[key] {
			return fmt.Errorf("key %s (line %d) is given twice", key, k.Line)
		}
		set[key] = true
		f, ok := fields[k.Value]
		if !ok {
			return fmt.Errorf("unknown key %q (line %d); the keys are: %s", key, k.Line, strings.Join(ConfigKeys(), ", "))
		}
		if f.Kind() == reflect.Struct && f.Type() != reflect.TypeOf(time.Duration(0)) {
			if err := decodeStrict(v, f, key+".", set); err != nil {
				return err
			}
			continue
		}
		if f.Type() == reflect.TypeOf(time.Duration(0)) && v.Kind == yaml.ScalarNode && v.Tag == "!!int" {
			if v.Value != "0" {
				return fmt.Errorf("key %s (line %d): %s has no unit: write it as a duration such as 30s, 15m or 168h", key, v.Line, v.Value)
			}
			f.SetInt(0)
			continue
		}
		if err := v.Decode(f.Addr().Interface()); err != nil {
			var te *yaml.TypeError
			msg := err.Error()
			if errors.As(err, &te) && len(te.Errors) > 0 {
				msg = strings.Join(te.Errors, "; ")
			}
			return fmt.Errorf("key %s (line %d): %s", key, v.Line, msg)
		}
	}
	return nil
}

// Validate checks a configuration (after Defaults) as far as it can without
// starting: addresses, certificates, lists, log settings and the admin API's
// exposure. Each error names the setting.
func (c Config) Validate() error {
	if c.NodeID == 0 {
		return errors.New("node_id (--node-id) must be positive")
	}
	if _, err := c.listeners(); err != nil {
		return fmt.Errorf("mysql_addr: %w", err)
	}
	for key, addr := range map[string]string{"admin_addr": c.AdminAddr, "raft_addr": c.RaftAddr, "metrics_addr": c.MetricsAddr,
		"admin_listen_addr": c.AdminListenAddr, "raft_listen_addr": c.RaftListenAddr} {
		if addr == "" && (key == "metrics_addr" || strings.HasSuffix(key, "_listen_addr")) {
			continue
		}
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return fmt.Errorf("%s %q is not HOST:PORT", key, addr)
		}
	}
	for _, j := range c.Join {
		if _, _, err := net.SplitHostPort(j); err != nil {
			return fmt.Errorf("join: %q is not HOST:PORT of a member's admin API", j)
		}
	}
	for key, v := range map[string]int64{"max_connections": int64(c.MaxConnections), "max_user_connections": int64(c.MaxUserConnections), "max_handshakes_per_host": int64(c.MaxHandshakesPerHost),
		"max_allowed_packet": int64(min(c.MaxAllowedPacket, 1<<62)), "retention_age": int64(c.RetentionAge), "node_down_after": int64(c.NodeDownAfter), "idle_timeout": int64(c.IdleTimeout)} {
		if v < 0 {
			return fmt.Errorf("%s must not be negative", key)
		}
	}
	if p := c.MasterSilenceProbe; p != 0 && (p < time.Second || p > 2*time.Minute) {
		return fmt.Errorf("master_silence_probe %v is outside 1s to 2m: shorter probes load the master, longer ones leave a dead link unnoticed for two of them (and pass the 5 minutes after which an undecidable silence ends the stream)", p)
	}
	if c.ServedFileSize > 3<<30 || c.ServedFileSize > 0 && c.ServedFileSize < 1<<20 {
		return fmt.Errorf("served_file_size %v is outside 1 MiB to 3 GiB: served binlog positions are 32-bit, a file must close well before 4 GiB, and tiny files only multiply them", c.ServedFileSize)
	}
	if r := c.RaftPayloadReserve; r > 64<<30 || r > 0 && r < MinRaftPayloadReserve {
		return fmt.Errorf("raft_payload_reserve %v is outside 68 MiB to 64 GiB (0 for none): it holds whole spare payload files of 68 MiB (512 MiB by default)", c.RaftPayloadReserve)
	}
	if c.MemoryPretouch > 64<<30 {
		return fmt.Errorf("memory_pretouch %v is over 64 GiB: it is the heap a node uses under load (256 MiB by default), 0 for none", c.MemoryPretouch)
	}
	if c.RecordCache > 64<<30 || c.RecordCache > 0 && c.RecordCache < 1<<20 {
		return fmt.Errorf("record_cache %v is outside 1 MiB to 64 GiB (0 for the default, 128 MiB): it holds served records of 256 KiB to 8 MiB", c.RecordCache)
	}
	if c.AllowIPs != "" {
		if _, err := mysqlfront.ParseAllowList(c.AllowIPs); err != nil {
			return fmt.Errorf("allow_ips: %w", err)
		}
	}
	if _, err := c.transport(); err != nil {
		return err
	}
	if _, err := NewLogger(io.Discard, c.LogFormat, c.LogLevel); err != nil {
		return fmt.Errorf("log_format/log_level: %w", err)
	}
	return c.checkExposure(secure.Admin{Token: c.AdminToken, Certificates: c.TLS.Enabled()})
}

// checkExposure applies the exposure checks to the bound addresses and to the
// advertised ones: a loopback bind behind a port forward is reachable from the
// network all the same.
func (c Config) checkExposure(admin secure.Admin) error {
	for _, a := range []string{c.raftListen(), c.RaftAddr} {
		if err := secure.CheckRaftExposure(a, c.TLS.Enabled(), c.InsecureRaft); err != nil {
			return err
		}
	}
	for _, a := range []string{c.adminListen(), c.AdminAddr} {
		if err := secure.CheckAdminExposure(a, admin, c.InsecureAdmin); err != nil {
			return err
		}
	}
	return nil
}

// offLoopback reports whether the bound or the advertised address of a port is
// off the loopback.
func offLoopback(bound, advertised string) bool {
	lb, _ := secure.Loopback(bound)
	la, _ := secure.Loopback(advertised)
	return !lb || !la
}

// adminListen and raftListen are the addresses the node binds.
func (c Config) adminListen() string { return cmp.Or(c.AdminListenAddr, c.AdminAddr) }
func (c Config) raftListen() string  { return cmp.Or(c.RaftListenAddr, c.RaftAddr) }

// transport is the TLS a node's listeners and calls use (nil: plaintext).
type transport struct {
	front, admin, peer *tls.Config
}

func (c Config) transport() (transport, error) {
	var t transport
	if (c.MySQLTLSCert == "") != (c.MySQLTLSKey == "") {
		return t, fmt.Errorf("--mysql-tls-cert and --mysql-tls-key go together (got cert=%q key=%q)", c.MySQLTLSCert, c.MySQLTLSKey)
	}
	if c.MySQLTLSCert != "" {
		cert, err := tls.LoadX509KeyPair(c.MySQLTLSCert, c.MySQLTLSKey)
		if err != nil {
			return t, fmt.Errorf("--mysql-tls-cert/--mysql-tls-key: %w", err)
		}
		t.front = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	if err := c.TLS.Check("--tls-ca/--tls-cert/--tls-key"); err != nil {
		return t, err
	}
	if c.TLS.Enabled() {
		var err error
		if t.admin, err = c.TLS.ServerConfig(); err != nil {
			return t, fmt.Errorf("--tls-*: %w", err)
		}
		if t.peer, err = c.TLS.ClientConfig(); err != nil {
			return t, fmt.Errorf("--tls-*: %w", err)
		}
	}
	return t, nil
}

// Defaults fills unset fields with the one-node defaults of the design.
func (c *Config) Defaults() {
	if c.NodeID == 0 {
		c.NodeID = 1
	}
	if c.DataDir == "" {
		c.DataDir = "./flotilla-data"
	}
	if len(c.MySQLAddr) == 0 {
		c.MySQLAddr = AddrList{"127.0.0.1:3307"}
	}
	if c.AdminAddr == "" {
		c.AdminAddr = "127.0.0.1:7070"
	}
	if c.RaftAddr == "" {
		c.RaftAddr = "127.0.0.1:7071"
	}
	if c.NodeDownAfter == 0 {
		c.NodeDownAfter = cluster.DefaultNodeDownAfter
	}
	if c.MinFreeDisk == 0 {
		c.MinFreeDisk = DefaultMinFreeDisk
	}
	if c.MaxConnections == 0 {
		c.MaxConnections = 10000
	}
	if c.MaxHandshakesPerHost == 0 {
		c.MaxHandshakesPerHost = 64
	}
	if c.MaxAllowedPacket == 0 {
		c.MaxAllowedPacket = 64 << 20
	}
	if c.IdleTimeout == 0 {
		c.IdleTimeout = 8 * time.Hour
	}
}
