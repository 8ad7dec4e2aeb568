package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/lni/dragonboat/v3"
	"github.com/lni/dragonboat/v3/config"
	dblog "github.com/lni/dragonboat/v3/logger"
	gvfs "github.com/lni/goutils/vfs"

	"google.golang.org/grpc"

	"github.com/flotilla-relay/flotilla/adminrpc"
	"github.com/flotilla-relay/flotilla/cluster"
	"github.com/flotilla-relay/flotilla/internal/faultfs"
	"github.com/flotilla-relay/flotilla/internal/metrics"
	"github.com/flotilla-relay/flotilla/internal/raftlog"
	"github.com/flotilla-relay/flotilla/internal/secure"
	"github.com/flotilla-relay/flotilla/mysqlfront"
	"github.com/flotilla-relay/flotilla/placement"
	clusterv1 "github.com/flotilla-relay/flotilla/proto/clusterv1"
	"github.com/flotilla-relay/flotilla/shard"
	"github.com/flotilla-relay/flotilla/statemachine"
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

	// Faults are the storage fault-injection knobs, from the environment
	// (faultfs.KnobsFromEnv), never the file: tests only.
	Faults faultfs.Knobs `yaml:"-"`

	explicit map[string]bool // keys the YAML file set (ParseConfig)
}

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

// Node is a running Flotilla process.
type Node struct {
	// payloadFiles turns the raft log's payload files on (see raftlog.Factory.On):
	// once the cluster version that needs them is recorded in the data directory.
	payloadFiles *atomic.Bool
	// recordedVersion is the cluster version recorded in the data directory (only
	// followVersion changes it once the node runs).
	recordedVersion uint32
	cfg             Config
	log             *slog.Logger
	nh              *dragonboat.NodeHost
	store           *statemachine.Store
	meta            *placement.Service
	shards          *shard.Manager
	front           *mysqlfront.Server
	errc            chan error

	ident   cluster.Identity
	leaders *cluster.Leaders
	relay   *cluster.Relay

	// cancel ends the node's own context; wg counts its long-running workers, which
	// Wait lets finish before storage closes.
	cancel context.CancelFunc
	wg     sync.WaitGroup
	// stopMetrics ends the HTTP endpoints (/metrics, /healthz, /readyz).
	stopMetrics context.CancelFunc

	// shedUntil: the node hands leaderships away until then (see shed); a time
	// read from this process's clock, compared by its monotonic reading, so a
	// step of the wall clock neither ends nor extends a drain.
	shedUntil atomic.Pointer[time.Time]
	// disk watches the data directory's free space (see watchDisk).
	disk diskState

	mu sync.Mutex
	// silentSince: when each node stopped answering purge's question about readers.
	silentSince map[uint64]time.Time
}

// purgeWaitsForSilent is how long a purge waits for a node that does not say which
// files its replicas read; a node silent for longer is presumed to serve nobody.
const purgeWaitsForSilent = 5 * time.Minute

// Start brings a node up and returns once it serves. Stop it by cancelling ctx and
// calling Wait.
func Start(ctx context.Context, cfg Config, log *slog.Logger) (*Node, error) {
	cfg.Defaults()
	if cfg.MemoryPretouch > 0 {
		n := boundPretouch(cfg.MemoryPretouch, availableMemory())
		r := pretouch(n)
		log.Info("heap faulted in ahead of the first burst (memory_pretouch)", "node", cfg.NodeID, "bytes", uint64(n), "took", r.took.Round(time.Millisecond),
			"huge_page_bytes", r.huge, "transparent_hugepage", r.hugeMode, "defrag", r.hugeDefrag, "note", pretouchNote(cfg.MemoryPretouch, n))
		if r.adviseErr != nil {
			log.Warn("the pretouched heap was not all advised as huge pages: what stays in 4 KiB pages costs a trap per page when reused after the runtime gave it back", "node", cfg.NodeID, "err", r.adviseErr)
		}
	}
	for _, name := range []string{"raft", "rsm", "transport", "dragonboat", "logdb", "raftpb", "config", "settings", "grpc"} {
		dblog.GetLogger(name).SetLevel(dblog.WARNING)
	}
	tr, err := cfg.transport()
	if err != nil {
		return nil, err
	}
	adminAuth := secure.Admin{Token: cfg.AdminToken, Certificates: tr.admin != nil}
	if err := cfg.checkExposure(adminAuth); err != nil {
		return nil, err
	}
	if offLoopback(cfg.raftListen(), cfg.RaftAddr) && !cfg.TLS.Enabled() {
		log.Warn("INSECURE: raft listens off the loopback without node TLS (--insecure-raft): anyone who reaches "+cfg.RaftAddr+" can rewrite the cluster's metadata", "raft", cfg.RaftAddr)
	}
	if offLoopback(cfg.adminListen(), cfg.AdminAddr) && cfg.AdminToken != "" && !cfg.TLS.Enabled() {
		log.Warn("INSECURE: the admin token crosses the network in clear: the admin API has no TLS (--insecure-admin; set --tls-ca/--tls-cert/--tls-key)", "admin", cfg.adminListen())
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("data directory %s: %w", cfg.DataDir, err)
	}
	recorded, err := checkDataVersion(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	payloadFiles := new(atomic.Bool)
	if recorded >= raftlog.PayloadFilesVersion {
		// The file may be a rename a crashed process never made durable: the payload
		// files may rely on it only once it is.
		if err := writeClusterVersion(cfg.DataDir, recorded); err != nil {
			return nil, err
		}
		payloadFiles.Store(true)
	}
	limits := mysqlfront.Limits{MaxConnections: cfg.MaxConnections, MaxUserConnections: cfg.MaxUserConnections,
		MaxHandshakesPerHost: cfg.MaxHandshakesPerHost, MaxAllowedPacket: int64(cfg.MaxAllowedPacket), IdleTimeout: cfg.IdleTimeout, HandshakeTimeout: 10 * time.Second}
	if cfg.AllowIPs != "" {
		l, err := mysqlfront.ParseAllowList(cfg.AllowIPs)
		if err != nil {
			return nil, fmt.Errorf("--allow-ips: %w", err)
		}
		limits.AllowIPs = l
	}
	// Bind the client-facing ports before storage, raft or the cluster identity is
	// opened: a port in use is the most common start-up mistake.
	faces, err := cfg.listeners()
	if err != nil {
		return nil, err
	}
	mysqlLis, err := listenMySQL(faces)
	if err != nil {
		return nil, err
	}
	closeMySQL := func() {
		for _, l := range mysqlLis {
			l.Close()
		}
	}
	adminLis, err := net.Listen("tcp", cfg.adminListen())
	if err != nil {
		closeMySQL()
		return nil, fmt.Errorf("admin port %s: %w (use --admin-addr or --admin-listen-addr)", cfg.adminListen(), err)
	}
	log = log.With("node", cfg.NodeID)
	rel := metrics.New(cfg.NodeID)
	var live atomic.Pointer[Node]
	mctx, stopMetrics := context.WithCancel(context.Background())
	if cfg.MetricsAddr != "" {
		metricsLis, err := net.Listen("tcp", cfg.MetricsAddr)
		if err != nil {
			stopMetrics()
			closeMySQL()
			adminLis.Close()
			return nil, fmt.Errorf("metrics port %s: %w (use --metrics-addr)", cfg.MetricsAddr, err)
		}
		// Served from the start: /readyz says "not ready" while the node joins.
		go func() {
			err := rel.Serve(mctx, metricsLis, cfg.DebugPprof, func(ctx context.Context) error {
				if n := live.Load(); n != nil {
					return n.ready(ctx)
				}
				return errors.New("starting: joining the cluster and opening storage")
			}, log.With("component", "metrics"))
			if err != nil {
				log.Error("metrics endpoint stopped", "err", err)
			}
		}()
	}
	closeLis := func() { closeMySQL(); adminLis.Close(); stopMetrics() }

	ident, err := clusterIdentity(ctx, cfg, tr.peer, log)
	if err != nil {
		closeLis()
		return nil, err
	}
	storeFS, raftFS := vfs.FS(vfs.Default), config.IFS(nil)
	if cfg.Faults.Enabled() {
		if storeFS, raftFS, err = cfg.Faults.Open(storeFS, gvfs.Default); err != nil {
			closeLis()
			return nil, err
		}
		log.Warn("storage fault injection is on: a test setting, never for production", "knobs", cfg.Faults.String())
	}
	store, err := statemachine.OpenFS(storeFS, filepath.Join(cfg.DataDir, "storage"), log)
	if err != nil {
		closeLis()
		return nil, err
	}
	if cfg.SegmentSize > 0 {
		store.SetSegmentSize(uint64(cfg.SegmentSize))
	}
	if cfg.RecordCache > 0 {
		store.SetRecordCache(int64(cfg.RecordCache))
	}
	leaders := cluster.NewLeaders()
	// Every raft node of every group ticks each RTTMillisecond, leader or not, busy or
	// idle: dragonboat's ticks were most of an idle group's CPU. 200 ms (with elections
	// after 5 to 10 ticks, see shard.GroupConfig) puts elections at 1-2 s, etcd's
	// default, for half the idle CPU of 100 ms ticks.
	nh, err := dragonboat.NewNodeHost(config.NodeHostConfig{
		DeploymentID:      ident.DeploymentID,
		NodeHostDir:       filepath.Join(cfg.DataDir, "raft"),
		RTTMillisecond:    200,
		RaftAddress:       cfg.RaftAddr,
		ListenAddress:     cfg.RaftListenAddr,
		RaftEventListener: leaders,
		MutualTLS:         cfg.TLS.Enabled(),
		CAFile:            cfg.TLS.CA,
		CertFile:          cfg.TLS.Cert,
		KeyFile:           cfg.TLS.Key,
		Expert:            config.ExpertConfig{LogDB: config.GetSmallMemLogDBConfig(), FS: raftFS, LogDBFactory: raftlog.Factory{On: payloadFiles, DirectIO: true}},
	})
	if err != nil {
		store.Close()
		closeLis()
		return nil, fmt.Errorf("start raft node host (raft address %s, data %s): %w", cfg.RaftAddr, cfg.DataDir, err)
	}
	n := &Node{payloadFiles: payloadFiles, recordedVersion: recorded, stopMetrics: stopMetrics, cfg: cfg, log: log, nh: nh, store: store, meta: placement.NewService(nh), ident: ident, leaders: leaders,
		errc: make(chan error, len(mysqlLis)+2)} // every sender's error fits: none blocks at shutdown
	if err := n.startMeta(ctx); err != nil {
		n.close()
		closeLis()
		return nil, err
	}
	n.shards = shard.NewManager(nh, store, n.meta, leaders, cfg.NodeID, statemachine.Retention{MaxAge: cfg.RetentionAge, MaxBytes: uint64(cfg.RetentionBytes)}, log)
	n.shards.SetSwitcher(n.meta)
	if cfg.ServedFileSize > 0 {
		n.shards.SetServedFileSize(uint64(cfg.ServedFileSize))
	}
	n.shards.SetSilenceProbe(cfg.MasterSilenceProbe)
	ctx, n.cancel = context.WithCancel(ctx)
	n.shards.SetDeparted(n.departed)
	n.shards.SetReaders(n.clusterReaders)
	n.shards.SetCaughtUp(n.caughtUp)
	sealer, err := secure.NewSealer(ident.Secret)
	if err != nil {
		n.close()
		closeLis()
		return nil, err
	}
	n.shards.SetSealer(sealer)
	n.shards.SetMetrics(rel)
	// Reconcile skips at once when the metadata version is unchanged: a short interval
	// starts a new upstream's group within 200 ms of its add, at negligible cost.
	n.spawn(func() { n.shards.Run(ctx, 200*time.Millisecond) })

	keys := cluster.NewKeyring(ident.Keys(), ident.ActiveNodeKey, func(k []cluster.NodeKey, active uint64) error {
		return cluster.SaveNodeKeys(cfg.DataDir, k, active)
	})
	n.spawn(func() { n.followNodeKeys(ctx, keys, sealer) })
	n.relay = cluster.NewRelay(cfg.NodeID, ident.ClusterID, keys, tr.peer, n.meta.Local, log.With("component", "relay"))
	n.front = mysqlfront.New(routerAdapter{n}, cfg.NodeID, log.With("component", "mysqlfront"))
	n.front.Limits = limits
	n.front.TLS = tr.front
	n.front.Metrics = rel
	n.front.DecoyKey = ident.Key("mysql decoy plugin")
	n.front.Listeners = faces
	if !slices.ContainsFunc(faces, func(l mysqlfront.Listener) bool { return l.Flavor != "mysql" }) {
		log.Warn("every MySQL port greets as MySQL: MariaDB upstreams are served there too, and MariaDB replicas may misread the greeting; add a MariaDB-flavored port (--mysql-addr HOST:PORT) for them")
	}
	for i, lis := range mysqlLis {
		face := faces[i]
		n.spawn(func() { n.errc <- n.front.ServeAs(ctx, lis, face) })
	}
	metaLeader := func() uint64 {
		id, _, _ := nh.GetLeaderID(placement.MetaGroupID)
		return id
	}
	admin := &adminrpc.Server{
		NodeID: cfg.NodeID, Meta: n.meta, Shards: n.shards, Replicas: n.front, Inspect: shard.InspectSource,
		Auth: adminAuth, Sealer: &sealer, TLS: tr.admin, PeerTLS: tr.peer, Log: log.With("component", "admin"), MetaLeader: metaLeader,
		Local: n.meta.Local, Peers: n.relay, RemoveMetaMember: n.removeMetaMember, ClusterID: ident.ClusterID, MetaVoters: n.metaVoters,
		OwnAuthPrefixes: []string{cluster.MethodPrefix},
		Rotate: func(ctx context.Context) (uint64, []uint64, error) {
			return n.relay.Rotate(ctx, n.meta, sealer, n.metaMembers)
		},
		Shed: n.shed, Transfer: n.relay.TransferLeader,
	}
	clusterSvc := &cluster.Service{NodeID: cfg.NodeID, Ident: ident, Keys: keys, Admin: adminAuth, Members: nh, Meta: n.meta,
		Local: n.localSource, Groups: admin.LocalGroups, Log: log.With("component", "cluster"),
		Transfer: n.transferLeader, Shedding: n.shedding, Storage: n.disk.problem}
	admin.Services = []func(*grpc.Server){func(gs *grpc.Server) { clusterv1.RegisterClusterServer(gs, clusterSvc) }}
	ctrl := &cluster.Controller{NodeID: cfg.NodeID, IsMetaLeader: func() bool { return metaLeader() == cfg.NodeID },
		Meta: n.meta, Members: nh, Relay: n.relay, DownAfter: cfg.NodeDownAfter, Log: log.With("component", "placement")}
	n.spawn(func() { ctrl.Run(ctx, 2*time.Second) })
	n.spawn(func() { n.followVersion(ctx, 2*time.Second) })
	n.spawn(func() { n.watchDisk(ctx, time.Second) })
	n.spawn(func() { n.errc <- admin.Serve(ctx, adminLis) })
	rel.Disk(cfg.NodeID, func() float64 { return float64(n.disk.free.Load()) }, func() float64 {
		if n.disk.problem() != "" {
			return 1
		}
		return 0
	})
	rel.ClusterVersion(cfg.NodeID, func() float64 {
		if st, err := n.meta.Local(); err == nil {
			return float64(st.Version())
		}
		return 0
	})
	rel.RecordCache(cfg.NodeID, func() float64 { h, _ := store.RecordCacheStats(); return float64(h) },
		func() float64 { _, m := store.RecordCacheStats(); return float64(m) })
	rel.Registry().MustRegister(metrics.NewStateCollector(cfg.NodeID, func() []metrics.GroupSample { return n.samples(admin.LocalGroups) }))
	live.Store(n)
	log.Info("flotilla node serving", "cluster", ident.ClusterID, "node", cfg.NodeID, "mysql", cfg.MySQLAddr.String(), "admin", cfg.AdminAddr, "raft", cfg.RaftAddr, "data", cfg.DataDir)
	return n, nil
}

// startMeta starts (or bootstraps) the metadata group and registers this node.
func (n *Node) startMeta(ctx context.Context) error {
	members := map[uint64]string{}
	join := false
	if !n.nh.HasNodeInfo(placement.MetaGroupID, n.cfg.NodeID) {
		if n.ident.Joined {
			join = true // the members admitted this node through Join
		} else {
			members[n.cfg.NodeID] = n.cfg.RaftAddr
		}
	}
	cfg := config.Config{NodeID: n.cfg.NodeID, ClusterID: placement.MetaGroupID, ElectionRTT: 5, HeartbeatRTT: 1,
		CheckQuorum: true, SnapshotEntries: 1000, CompactionOverhead: 100, IsObserver: n.ident.MetaObserver}
	if err := n.nh.StartCluster(members, join, placement.CreateStateMachine, cfg); err != nil {
		return fmt.Errorf("start metadata group: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	self := n.self()
	for {
		st, err := n.meta.Read(ctx)
		if err == nil {
			if v := st.Version(); v > self.MaxClusterVersion {
				return fmt.Errorf("the cluster is at version %d, and this binary (flotilla %s) understands versions up to %d: install the release the cluster runs, or a newer one", v, self.Version, self.MaxClusterVersion)
			}
			if cur, ok := st.Nodes[self.ID]; ok && sameNode(*cur, self) {
				return n.noteClusterVersion(st.Version())
			}
			if err = n.meta.RegisterNode(ctx, self); err == nil {
				return n.noteClusterVersion(st.Version())
			}
			if errors.Is(err, placement.ErrRefused) {
				return fmt.Errorf("register node %d: %w", self.ID, err)
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("metadata group did not become available: %w", err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func sameNode(a, b placement.Node) bool {
	if a.RaftAddr != b.RaftAddr || a.MySQLAddr != b.MySQLAddr || a.AdminAddr != b.AdminAddr || len(a.Labels) != len(b.Labels) ||
		a.Version != b.Version || a.Commit != b.Commit || a.MaxClusterVersion != b.MaxClusterVersion {
		return false
	}
	for k, v := range a.Labels {
		if b.Labels[k] != v {
			return false
		}
	}
	return true
}

// transferLeader asks raft to hand group gid's leadership to node target's replica.
func (n *Node) transferLeader(gid, target uint64) error {
	st, err := n.meta.Local()
	if err != nil {
		return err
	}
	return n.nh.RequestLeaderTransfer(gid, st.ReplicaID(gid, target))
}

// clusterReaders returns the oldest file of group gid that a replica connected to any
// node reads (0: none). A purge waits while a node that may have readers is silent,
// up to purgeWaitsForSilent.
func (n *Node) clusterReaders(ctx context.Context, gid uint64) (uint64, error) {
	st, err := n.meta.Local()
	if err != nil {
		return 0, err
	}
	reps := n.relay.Reports(ctx, st.Nodes, 2*time.Second)
	var oldest uint64
	var silent []string
	now := time.Now()
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.silentSince == nil {
		n.silentSince = map[uint64]time.Time{}
	}
	for id := range st.Nodes {
		rep, ok := reps[id]
		if !ok {
			since, seen := n.silentSince[id]
			if !seen {
				since = now
				n.silentSince[id] = now
			}
			if now.Sub(since) < purgeWaitsForSilent {
				silent = append(silent, fmt.Sprint(id))
			}
			continue
		}
		delete(n.silentSince, id)
		if g := cluster.GroupOf(rep, gid); g != nil && g.OldestReadingFile != 0 && (oldest == 0 || g.OldestReadingFile < oldest) {
			oldest = g.OldestReadingFile
		}
	}
	if len(silent) > 0 {
		slices.Sort(silent)
		return 0, fmt.Errorf("nodes %s did not say which files their replicas read: the purge waits for them (at most %v for a node that stays silent)",
			strings.Join(silent, ", "), purgeWaitsForSilent)
	}
	return oldest, nil
}

// reportOf asks one node for its report.
func (n *Node) reportOf(ctx context.Context, id uint64) (*clusterv1.NodeReport, bool) {
	st, err := n.meta.Local()
	if err != nil {
		return nil, false
	}
	nd, ok := st.Nodes[id]
	if !ok {
		return nil, false
	}
	rep, ok := n.relay.Reports(ctx, map[uint64]*placement.Node{id: nd}, 2*time.Second)[id]
	return rep, ok
}

// caughtUp reports whether node's replica of gid has (nearly) everything this node's
// replica has, by the node's own report: it heard from this node as leader, holds a
// file if this replica does, and trails by at most cluster.CatchUpSlack transactions.
func (n *Node) caughtUp(ctx context.Context, gid, node uint64) bool {
	g, ok := n.store.Group(gid)
	if !ok {
		return false
	}
	rep, ok := n.reportOf(ctx, node)
	if !ok {
		return false
	}
	gs := cluster.GroupOf(rep, gid)
	t, _ := g.Tail()
	return gs != nil && gs.LeaderNode == n.cfg.NodeID && gs.Transactions+cluster.CatchUpSlack >= t.Ordinal && (t.File == 0 || gs.CurrentFile != "")
}

// changedMeta returns the local metadata if its version moved since *seen (0: read
// it anyway), recording the new version: loops that follow the metadata skip
// copying it (with a thousand upstreams, most of an idle node's work) while
// nothing changed.
func (n *Node) changedMeta(seen *uint64) (*placement.State, bool) {
	v, err := n.meta.LocalVersion()
	if err == nil && v != 0 && v == *seen {
		return nil, false
	}
	st, err := n.meta.Local()
	if err != nil {
		return nil, false
	}
	*seen = v
	return st, true
}

// departed reports whether the leader of group gid no longer counts this node among
// the group's raft members.
func (n *Node) departed(ctx context.Context, gid uint64) bool {
	leader, _ := n.leaders.Leader(gid)
	if leader == 0 || leader == n.cfg.NodeID {
		return false
	}
	rep, ok := n.reportOf(ctx, leader)
	if !ok {
		return false
	}
	gs := cluster.GroupOf(rep, gid)
	return gs != nil && gs.LeaderNode == leader && len(gs.RaftMembers) > 0 && !slices.Contains(gs.RaftMembers, n.cfg.NodeID)
}

// metaVoters lists the metadata group's voting members (nil if unknown right now).
func (n *Node) metaVoters(ctx context.Context) []uint64 {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	m, err := n.nh.SyncGetClusterMembership(ctx, placement.MetaGroupID)
	if err != nil {
		return nil
	}
	out := make([]uint64, 0, len(m.Nodes))
	for id := range m.Nodes {
		out = append(out, id)
	}
	slices.Sort(out)
	return out
}

// metaMembers lists every member of the metadata raft group, voting or not.
func (n *Node) metaMembers(ctx context.Context) ([]uint64, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	m, err := n.nh.SyncGetClusterMembership(ctx, placement.MetaGroupID)
	if err != nil {
		return nil, err
	}
	var out []uint64
	for id := range m.Nodes {
		out = append(out, id)
	}
	for id := range m.Observers {
		out = append(out, id)
	}
	slices.Sort(out)
	return out, nil
}

// removeMetaMember takes a removed node out of the metadata raft group.
func (n *Node) removeMetaMember(ctx context.Context, id uint64) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	m, err := n.nh.SyncGetClusterMembership(ctx, placement.MetaGroupID)
	if err != nil {
		return fmt.Errorf("read metadata membership: %w", err)
	}
	_, voter := m.Nodes[id]
	_, observer := m.Observers[id]
	if !voter && !observer {
		return nil
	}
	return n.nh.SyncRequestDeleteNode(ctx, placement.MetaGroupID, id, m.ConfigChangeID)
}

// Wait blocks until ctx ends or a server fails, then shuts the node down.
func (n *Node) Wait(ctx context.Context) error {
	var err error
	select {
	case <-ctx.Done():
	case err = <-n.errc:
	}
	// Stop in order: sessions, syncers and the controller end first (they read and
	// propose), then raft, then storage.
	n.cancel()
	done := make(chan struct{})
	go func() { n.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		n.log.Warn("shutdown: workers still running after 30s; closing anyway")
	}
	n.close()
	return err
}

// spawn runs a worker the node waits for at shutdown.
func (n *Node) spawn(f func()) {
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		f()
	}()
}

func (n *Node) close() {
	n.stopMetrics()
	if n.relay != nil {
		n.relay.Close()
	}
	n.nh.Stop()
	if err := n.store.Close(); err != nil {
		n.log.Warn("close storage", "err", err)
	}
}

// routerAdapter answers the front end's routing questions from the node's state.
type routerAdapter struct{ n *Node }

func (r routerAdapter) Metadata() (*placement.State, error) { return r.n.meta.Local() }

// Source serves a session from this node's replica when it may (it leads the group,
// or the upstream serves from any replica), and otherwise relays from the node that
// does.
func (r routerAdapter) Source(_ context.Context, u *placement.Upstream) (mysqlfront.Source, error) {
	anyReplica := u.ServeFrom == placement.ServeFromAny
	src, leader := r.n.localSource(u.GroupID, anyReplica)
	if src != nil {
		return src, nil
	}
	if _, local := r.n.shards.Shard(u.GroupID); local {
		switch leader {
		case 0:
			if !anyReplica {
				return nil, fmt.Errorf("the upstream's group %d has no leader right now (election in progress); the replica will retry", u.GroupID)
			}
		case r.n.cfg.NodeID:
			return nil, fmt.Errorf("group %d is starting on this node; the replica will retry", u.GroupID)
		}
	} else if st, err := r.n.meta.Local(); err == nil && slices.Equal(st.Assignments[u.GroupID], []uint64{r.n.cfg.NodeID}) {
		// Only this node holds the group and has not started it yet (right after a
		// restart): there is no one to relay from, so the session waits for it.
		return nil, fmt.Errorf("group %d is starting on this node; the replica will retry", u.GroupID)
	}
	return r.n.relay.Source(u, leader, anyReplica), nil
}

// localSource returns this node's replica of a group as a source, if it may serve:
// it leads the group, or anyReplica. Otherwise it returns the leader it knows of.
func (n *Node) localSource(gid uint64, anyReplica bool) (mysqlfront.Source, uint64) {
	sh, ok := n.shards.Shard(gid)
	if !ok {
		return nil, 0
	}
	leader, _ := sh.Leader()
	if !anyReplica && !sh.IsLeader() {
		return nil, leader
	}
	g, ok := sh.Group()
	if !ok {
		return nil, leader
	}
	u := sh.Upstream()
	eligible := func() error {
		if cur, ok := n.shards.Shard(gid); !ok || cur != sh {
			return mysqlfront.ErrRetry("this node no longer holds a replica of upstream %s; the replica reconnects and resumes from its position", u.Name)
		}
		if !anyReplica && !sh.IsLeader() {
			return mysqlfront.ErrRetry("this Flotilla node no longer leads upstream %s; the replica reconnects and resumes from its position on the new leader", u.Name)
		}
		return nil
	}
	return mysqlfront.NewLocalSource(g, &u, mysqlfront.LocalPolicy{Eligible: eligible}, n.log.With("component", "mysqlfront")), leader
}

// followNodeKeys keeps the node keys in step with the metadata group's rotations:
// a new generation is held (to verify with) as soon as this node's metadata replica
// has it, signs once the rotation activates it, and older ones are retired then.
func (n *Node) followNodeKeys(ctx context.Context, keys *cluster.Keyring, sealer secure.Sealer) {
	var lastErr string
	var seen uint64
	var st *placement.State // the last metadata read: Sync runs at every look (keys retire with time)
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(500 * time.Millisecond):
		}
		if fresh, ok := n.changedMeta(&seen); ok {
			st = fresh
		}
		if st == nil || len(st.NodeKeys) == 0 {
			continue
		}
		meta, err := cluster.OpenNodeKeys(sealer, st.NodeKeys)
		changed := false
		if err == nil {
			changed, err = keys.Sync(meta, st.ActiveNodeKey)
		}
		if err != nil {
			if err.Error() != lastErr {
				n.log.Error("cannot follow the cluster's node keys; node-to-node calls may be refused", "err", err)
			}
			lastErr = err.Error()
			continue
		}
		lastErr = ""
		if changed {
			gens := keys.Gens()
			n.log.Info("node keys follow the metadata", "held", gens, "active", st.ActiveNodeKey)
		}
	}
}
