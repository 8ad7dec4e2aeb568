package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/flotilla-relay/flotilla/internal/crcalg"
	"github.com/lni/dragonboat/v3"
	"github.com/lni/dragonboat/v3/config"
	dblog "github.com/lni/dragonboat/v3/logger"
	gvfs "github.com/lni/goutils/vfs"

	"google.golang.org/grpc"

	"github.com/flotilla-relay/flotilla/adminrpc"
	"github.com/flotilla-relay/flotilla/cluster"
	"github.com/flotilla-relay/flotilla/internal/metrics"
	"github.com/flotilla-relay/flotilla/internal/raftlog"
	"github.com/flotilla-relay/flotilla/internal/rafttransport"
	"github.com/flotilla-relay/flotilla/internal/secure"
	"github.com/flotilla-relay/flotilla/mysqlfront"
	"github.com/flotilla-relay/flotilla/placement"
	clusterv1 "github.com/flotilla-relay/flotilla/proto/clusterv1"
	"github.com/flotilla-relay/flotilla/shard"
	"github.com/flotilla-relay/flotilla/statemachine"
)

// RaftTickMillis is the raft tick of every group on the node. dragonboat steps every
// group's node at every tick, leader or follower, busy or idle: with 1,000 idle groups
// that was about two thirds of the node's CPU. 333 ms ticks, with elections after
// shard.ElectionTicks (3 to 5 ticks), keep elections at 1-2 s (as 200 ms ticks after
// 5 to 9 did) for 40% fewer ticks; the leader's
// heartbeat every tick comes three times per election timeout instead of five.
const RaftTickMillis = 333

// Node is a running Flotilla process.
type Node struct {
	// payloadFiles turns the raft log's payload files on (see raftlog.Factory.On):
	// once the cluster version that needs them is recorded in the data directory.
	payloadFiles *atomic.Bool
	// recycle turns salted, recycled payload files on (raftlog.Factory.Recycle),
	// from raftlog.RecycleVersion.
	recycle *atomic.Bool
	// raftWire turns the raft transport's own frames on (rafttransport.Factory), from
	// rafttransport.WireVersion: every node reads them then.
	raftWire *atomic.Bool
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
	payloadFiles, recycle := new(atomic.Bool), new(atomic.Bool)
	if recorded >= raftlog.PayloadFilesVersion {
		// The file may be a rename a crashed process never made durable: the payload
		// files may rely on it only once it is.
		if err := writeClusterVersion(cfg.DataDir, recorded); err != nil {
			return nil, err
		}
		payloadFiles.Store(true)
		recycle.Store(recorded >= raftlog.RecycleVersion)
	}
	raftWire := new(atomic.Bool)
	raftWire.Store(recorded >= rafttransport.WireVersion)
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
	// Segments too skip the page cache where the filesystem allows (see
	// statemachine/segdirect.go); not under injected storage faults.
	segDirectIO := store.SetDirectIO(!cfg.BufferedIO)
	leaders := cluster.NewLeaders()
	// Every raft node of every group ticks each RaftTickMillis, leader or not, busy or
	// idle (see RaftTickMillis).
	directIO, spares, recycled, inPlace := new(atomic.Bool), new(atomic.Int64), new(atomic.Int64), new(atomic.Int64)
	if err := checkRaftFlagFiles(filepath.Join(cfg.DataDir, "raft")); err != nil {
		store.Close()
		closeLis()
		return nil, err
	}
	// The raft log and the transport share their payloads' checksums (crcalg).
	crcMemo := crcalg.NewMemo()
	store.SetChecksums(crcMemo) // records of large events derive theirs from their entries'
	nh, err := dragonboat.NewNodeHost(config.NodeHostConfig{
		DeploymentID:      ident.DeploymentID,
		NodeHostDir:       filepath.Join(cfg.DataDir, "raft"),
		RTTMillisecond:    RaftTickMillis,
		RaftAddress:       cfg.RaftAddr,
		ListenAddress:     cfg.RaftListenAddr,
		RaftEventListener: leaders,
		MutualTLS:         cfg.TLS.Enabled(),
		CAFile:            cfg.TLS.CA,
		CertFile:          cfg.TLS.Cert,
		KeyFile:           cfg.TLS.Key,
		Expert: config.ExpertConfig{TransportFactory: rafttransport.Factory{NewWire: raftWire, Log: log.With("component", "rafttransport"), CRC: crcMemo}, LogDB: config.GetSmallMemLogDBConfig(), FS: raftFS, LogDBFactory: raftlog.Factory{On: payloadFiles, DirectIO: !cfg.BufferedIO, DirectState: directIO, Log: log.With("component", "raftlog"),
			Reserve: int64(cfg.RaftPayloadReserve), Recycle: recycle, Room: spareRoom(cfg), Spares: spares, Recycled: recycled, InPlace: inPlace, CRC: crcMemo}},
	})
	if err == nil && nh == nil {
		err = errRaftStartSilent
	}
	if err != nil {
		store.Close()
		closeLis()
		return nil, fmt.Errorf("start raft node host (raft address %s, data %s): %w", cfg.RaftAddr, cfg.DataDir, err)
	}
	log.Info("raft log started", "payload_direct_io", directIO.Load(), "segment_direct_io", segDirectIO, "buffered_io", cfg.BufferedIO)
	n := &Node{payloadFiles: payloadFiles, recycle: recycle, raftWire: raftWire, recordedVersion: recorded, stopMetrics: stopMetrics, cfg: cfg, log: log, nh: nh, store: store, meta: placement.NewService(nh), ident: ident, leaders: leaders,
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
	n.relay.ReportLocally(clusterSvc.LocalReport)
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
	rel.RaftDirectIO(cfg.NodeID, func() float64 {
		if directIO.Load() {
			return 1
		}
		return 0
	})
	rel.RaftPayloadSpares(cfg.NodeID, func() float64 { return float64(spares.Load()) })
	rel.RaftPayloadRecycled(cfg.NodeID, func() float64 { return float64(recycled.Load()) })
	rel.RaftPayloadsInPlace(cfg.NodeID, func() float64 { return float64(inPlace.Load()) })
	rel.RaftPayloadChecksums(cfg.NodeID, func() float64 { h, _ := crcMemo.Stats(); return float64(h) }, func() float64 { _, m := crcMemo.Stats(); return float64(m) })
	rel.SegmentChecksumsDerived(cfg.NodeID, func() float64 { return float64(store.DerivedChecksumBytes()) })
	rel.BufferedIO(cfg.NodeID, cfg.BufferedIO)
	rel.SegmentDirectIO(cfg.NodeID, func() float64 {
		if store.DirectIO() {
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
