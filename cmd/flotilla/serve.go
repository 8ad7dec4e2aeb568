package main

import (
	"fmt"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/flotilla-relay/flotilla/internal/faultfs"
	"github.com/flotilla-relay/flotilla/server"
)

// serveFlag is a `serve` flag and the configuration key it sets: flags override the
// YAML file, and every flag has a key.
type serveFlag struct {
	flag cli.Flag
	key  string
	set  func(c *cli.Context, cfg *server.Config) error
}

// str is a string flag; def is the default the help shows ("" for none).
func str(name, key, usage, def string, dst func(*server.Config) *string) serveFlag {
	return serveFlag{&cli.StringFlag{Name: name, Usage: usage, DefaultText: def}, key, func(c *cli.Context, cfg *server.Config) error {
		*dst(cfg) = c.String(name)
		return nil
	}}
}

// dur is a duration flag; def is the default the help shows (once: the flag's own
// zero value is not the default, so urfave's would be wrong).
func dur(name, key, usage, def string, dst func(*server.Config) *time.Duration) serveFlag {
	return serveFlag{&cli.DurationFlag{Name: name, Usage: usage, DefaultText: def}, key, func(c *cli.Context, cfg *server.Config) error {
		*dst(cfg) = c.Duration(name)
		return nil
	}}
}

// integer is an integer flag; def is the default the help shows.
func integer(name, key, usage, def string, dst func(*server.Config) *int) serveFlag {
	return serveFlag{&cli.IntFlag{Name: name, Usage: usage, DefaultText: def}, key, func(c *cli.Context, cfg *server.Config) error {
		*dst(cfg) = c.Int(name)
		return nil
	}}
}

func boolean(name, key, usage string, dst func(*server.Config) *bool) serveFlag {
	return serveFlag{&cli.BoolFlag{Name: name, Usage: usage}, key, func(c *cli.Context, cfg *server.Config) error {
		*dst(cfg) = c.Bool(name)
		return nil
	}}
}

// addrList is a repeatable flag whose values may hold commas (StringSliceFlag
// would split mysql=HOST:PORT,version=X).
type addrList struct{ v []string }

func (a *addrList) Set(s string) error { a.v = append(a.v, s); return nil }
func (a *addrList) String() string     { return strings.Join(a.v, " ") }

// size is a byte-count flag taking MySQL's units (64M, 256MiB, 1G); def is the
// default the help shows (once).
func size(name, key, usage, def string, dst func(*server.Config) *server.Size) serveFlag {
	return serveFlag{&cli.StringFlag{Name: name, Usage: usage, DefaultText: def}, key, func(c *cli.Context, cfg *server.Config) error {
		v, err := server.ParseSize(c.String(name))
		if err != nil {
			return fmt.Errorf("--%s: %w", name, err)
		}
		*dst(cfg) = v
		return nil
	}}
}

func serveFlags() []serveFlag {
	return []serveFlag{
		{&cli.Uint64Flag{Name: "node-id", Usage: "this node's id (positive, unique in the cluster)", DefaultText: "1"}, "node_id", func(c *cli.Context, cfg *server.Config) error {
			cfg.NodeID = c.Uint64("node-id")
			return nil
		}},
		str("data", "data", "data directory", "./flotilla-data", func(c *server.Config) *string { return &c.DataDir }),
		{&cli.GenericFlag{Name: "mysql-addr", Value: &addrList{}, DefaultText: "127.0.0.1:3307",
			Usage: "MySQL port, HOST:PORT, greeting as MariaDB; or mysql=HOST:PORT[,version=8.4.3] to greet as MySQL (repeatable: one port per flavor)"}, "mysql_addr",
			func(c *cli.Context, cfg *server.Config) error {
				cfg.MySQLAddr = server.AddrList(c.Generic("mysql-addr").(*addrList).v)
				return nil
			}},
		str("admin-addr", "admin_addr", "admin gRPC address, reachable by the other nodes and the CLI", "127.0.0.1:7070", func(c *server.Config) *string { return &c.AdminAddr }),
		str("raft-addr", "raft_addr", "raft address, reachable by the other nodes", "127.0.0.1:7071", func(c *server.Config) *string { return &c.RaftAddr }),
		str("admin-listen-addr", "admin_listen_addr", "where to bind the admin API when --admin-addr (what the other nodes dial) is a NAT or proxy address", "--admin-addr", func(c *server.Config) *string { return &c.AdminListenAddr }),
		str("raft-listen-addr", "raft_listen_addr", "where to bind raft when --raft-addr (what the other nodes dial) is a NAT or proxy address", "--raft-addr", func(c *server.Config) *string { return &c.RaftListenAddr }),
		str("metrics-addr", "metrics_addr", "HTTP address for /metrics (Prometheus), /healthz and /readyz", "off", func(c *server.Config) *string { return &c.MetricsAddr }),
		{&cli.StringFlag{Name: "join", Usage: "admin addresses of existing nodes, comma-separated"}, "join", func(c *cli.Context, cfg *server.Config) error {
			cfg.Join = strings.Split(c.String("join"), ",")
			return nil
		}},
		{&cli.StringSliceFlag{Name: "label", Usage: "node label k=v (e.g. zone=a); repeatable"}, "labels", func(c *cli.Context, cfg *server.Config) error {
			for _, l := range c.StringSlice("label") {
				k, v, ok := strings.Cut(l, "=")
				if !ok || k == "" {
					return fmt.Errorf("--label %q is not k=v", l)
				}
				if cfg.Labels == nil {
					cfg.Labels = map[string]string{}
				}
				cfg.Labels[k] = v
			}
			return nil
		}},
		dur("retention-age", "retention_age", "purge served binlog files closed longer ago, and whose last transaction is older", "168h; 0 keeps all", func(c *server.Config) *time.Duration { return &c.RetentionAge }),
		size("retention-bytes", "retention_bytes", "purge the oldest served files while an upstream holds more (bytes, or with K, M, G, T)", "0, no limit", func(c *server.Config) *server.Size { return &c.RetentionBytes }),
		size("segment-size", "segment_size", "size at which segment files roll (bytes, or with K, M, G)", "256M", func(c *server.Config) *server.Size { return &c.SegmentSize }),
		size("record-cache", "record_cache", "memory for large served records that replicas reading the same stretch of a binlog share (1M to 64G)", "128M", func(c *server.Config) *server.Size { return &c.RecordCache }),
		size("memory-pretouch", "memory_pretouch", "heap to fault in at start, so the first burst after a start does not stall on fresh pages (at most an eighth of the memory the node may use); 0 for none", "256M", func(c *server.Config) *server.Size { return &c.MemoryPretouch }),
		size("raft-payload-reserve", "raft_payload_reserve", "most disk the raft log keeps in spare payload files, files its log cuts free, so that later payload files overwrite blocks instead of writing new ones (68M to 64G); 0 for none", "512M", func(c *server.Config) *server.Size { return &c.RaftPayloadReserve }),
		size("served-file-size", "served_file_size", "close a served binlog file at the first transaction past this size, even inside one master file (1M to 3G)", "1G", func(c *server.Config) *server.Size { return &c.ServedFileSize }),
		size("min-free-disk", "min_free_disk", "free space the data directory's filesystem keeps: below it the node stops its group replicas (keeping their data; replicas connected here are served from other nodes) until space returns, instead of failing on a full disk", "512M", func(c *server.Config) *server.Size { return &c.MinFreeDisk }),
		dur("master-silence-probe", "master_silence_probe", "ask a master whose stream brought nothing for this long whether the group misses anything; a link that stalled without a reset ends after two probes, and one whose master sends heartbeats after the longer of this and three heartbeat gaps (1s to 2m)", "15s", func(c *server.Config) *time.Duration { return &c.MasterSilenceProbe }),
		dur("node-down-after", "node_down_after", "re-create the replicas of a node that has not answered for this long", "60s", func(c *server.Config) *time.Duration { return &c.NodeDownAfter }),
		integer("max-connections", "max_connections", "client connections to the MySQL port at most; more get error 1040", "10000", func(c *server.Config) *int { return &c.MaxConnections }),
		integer("max-handshakes-per-host", "max_handshakes_per_host", "connections from one client address that have not logged in yet, at most; more get error 1040", "64", func(c *server.Config) *int { return &c.MaxHandshakesPerHost }),
		integer("max-user-connections", "max_user_connections", "connections per replica user at most; more get error 1203", "0: no limit", func(c *server.Config) *int { return &c.MaxUserConnections }),
		size("max-allowed-packet", "max_allowed_packet", "largest client packet (bytes, or with K, M, G); a larger one is refused with error 1153", "64M", func(c *server.Config) *server.Size { return &c.MaxAllowedPacket }),
		dur("idle-timeout", "idle_timeout", "close sessions that send nothing for this long while not dumping", "8h", func(c *server.Config) *time.Duration { return &c.IdleTimeout }),
		str("allow-ips", "allow_ips", "comma-separated client addresses and CIDR networks accepted; others get error 1130", "all", func(c *server.Config) *string { return &c.AllowIPs }),
		str("mysql-tls-cert", "mysql_tls_cert", "certificate (PEM) that lets replicas connect with TLS (MASTER_SSL=1)", "", func(c *server.Config) *string { return &c.MySQLTLSCert }),
		str("mysql-tls-key", "mysql_tls_key", "key of --mysql-tls-cert", "", func(c *server.Config) *string { return &c.MySQLTLSKey }),
		str("tls-ca", "tls.ca", "CA of the cluster's node certificates: enables mutual TLS for raft and TLS for the admin API (client certificates from this CA are accepted as admin credentials)", "", func(c *server.Config) *string { return &c.TLS.CA }),
		str("tls-cert", "tls.cert", "this node's certificate (PEM), signed by --tls-ca, valid for its raft and admin addresses", "", func(c *server.Config) *string { return &c.TLS.Cert }),
		str("tls-key", "tls.key", "key of --tls-cert", "", func(c *server.Config) *string { return &c.TLS.Key }),
		str("admin-token-file", "admin_token_file", "file holding the admin token (else $FLOTILLA_TOKEN); callers present it, and nodes joining the cluster too", "", func(c *server.Config) *string { return &c.AdminTokenFile }),
		boolean("buffered-io", "buffered_io", "write raft payloads and segments through the page cache instead of with direct I/O (O_DIRECT): for a filesystem that takes O_DIRECT but serves it badly; costs ingest CPU", func(c *server.Config) *bool { return &c.BufferedIO }),
		boolean("insecure-raft", "insecure_raft", "allow a raft address off the loopback without node TLS (anyone reaching it can rewrite the metadata: only on a trusted network)", func(c *server.Config) *bool { return &c.InsecureRaft }),
		boolean("insecure-admin", "insecure_admin", "allow an admin address off the loopback with a token but without TLS (the token crosses the network in clear)", func(c *server.Config) *bool { return &c.InsecureAdmin }),
		str("log-level", "log_level", "debug, info, warn or error", "info", func(c *server.Config) *string { return &c.LogLevel }),
		str("log-format", "log_format", "text or json", "text", func(c *server.Config) *string { return &c.LogFormat }),
		boolean("debug-pprof", "debug_pprof", "serve Go's profiles under /debug/pprof/ on --metrics-addr (anyone reaching that port may run them)", func(c *server.Config) *bool { return &c.DebugPprof }),
	}
}

// loadServeConfig merges the YAML file and the flags; flags win.
func loadServeConfig(c *cli.Context) (server.Config, error) {
	var cfg server.Config
	if f := c.String("config"); f != "" {
		b, err := os.ReadFile(f)
		if err != nil {
			return cfg, fmt.Errorf("--config: %w", err)
		}
		if cfg, err = server.ParseConfig(b); err != nil {
			return cfg, fmt.Errorf("--config %s: %w", f, err)
		}
	}
	for _, sf := range serveFlags() {
		if c.IsSet(sf.flag.Names()[0]) {
			if err := sf.set(c, &cfg); err != nil {
				return cfg, err
			}
		}
	}
	if cfg.RetentionAge == 0 && !c.IsSet("retention-age") && !cfg.Explicit("retention_age") {
		cfg.RetentionAge = 7 * 24 * time.Hour
	}
	if cfg.MemoryPretouch == 0 && !c.IsSet("memory-pretouch") && !cfg.Explicit("memory_pretouch") {
		cfg.MemoryPretouch = server.DefaultMemoryPretouch
	}
	if cfg.RaftPayloadReserve == 0 && !c.IsSet("raft-payload-reserve") && !cfg.Explicit("raft_payload_reserve") {
		cfg.RaftPayloadReserve = server.DefaultRaftPayloadReserve
	}
	if cfg.AdminToken == "" && cfg.AdminTokenFile != "" {
		b, err := os.ReadFile(cfg.AdminTokenFile)
		if err != nil {
			return cfg, fmt.Errorf("--admin-token-file: %w", err)
		}
		if cfg.AdminToken = strings.TrimSpace(string(b)); cfg.AdminToken == "" {
			return cfg, fmt.Errorf("--admin-token-file %s is empty", cfg.AdminTokenFile)
		}
	}
	if cfg.AdminToken == "" {
		cfg.AdminToken = os.Getenv("FLOTILLA_TOKEN")
	}
	cfg.Faults = faultfs.KnobsFromEnv()
	cfg.Defaults()
	return cfg, cfg.Validate()
}

func serveCommand() *cli.Command {
	flags := []cli.Flag{
		&cli.StringFlag{Name: "config", Usage: "YAML configuration file (keys as the flags, with _ for -; tls: {ca, cert, key}); flags override it"},
		&cli.BoolFlag{Name: "check-config", Usage: "validate the configuration and flags, print the result and exit"},
	}
	for _, sf := range serveFlags() {
		flags = append(flags, sf.flag)
	}
	return &cli.Command{
		Name:  "serve",
		Usage: "run a Flotilla node (with no flags: a one-node cluster in ./flotilla-data)",
		Flags: flags,
		Action: func(c *cli.Context) error {
			cfg, err := loadServeConfig(c)
			if err != nil {
				return err
			}
			var eager string // why memory is given back eagerly, if it is
			if !c.Bool("check-config") {
				eager = returnMemoryLazily()
			}
			if c.Bool("check-config") {
				fmt.Printf("configuration valid: node %d, data %s, mysql %s, admin %s, raft %s\n", cfg.NodeID, cfg.DataDir, cfg.MySQLAddr.String(), cfg.AdminAddr, cfg.RaftAddr)
				return nil
			}
			log, err := server.NewLogger(os.Stderr, cfg.LogFormat, cfg.LogLevel)
			if err != nil {
				return err
			}
			server.RouteDragonboatLogs(log.With("node", cfg.NodeID))
			if eager != "" {
				log.Warn("the runtime gives memory back with MADV_DONTNEED: a burst after a quiet spell faults its pages in again", "node", cfg.NodeID, "reason", eager)
			}
			if s, ok := c.App.Metadata[dragonboatMetadata].(string); ok {
				log.Info("dragonboat tuned for many small groups", "node", cfg.NodeID, "settings", s)
			}
			// Everything the node writes (data, raft logs, keys) is for its own user.
			syscall.Umask(0o077)
			n, err := server.Start(c.Context, cfg, log)
			if err != nil {
				return err
			}
			return n.Wait(c.Context)
		},
	}
}
