// Package metrics is Flotilla's Prometheus instrumentation: the counters and
// histograms the relay updates as it works, a collector that reads the rest from the
// node's state at scrape time, and the HTTP endpoints (/metrics, /healthz, /readyz).
//
// Invariants: label values are bounded (upstream names, node ids, MySQL error codes,
// replica user names declared by operators); no label names a connection. A nil
// *Relay is valid and records nothing, so packages work without metrics in tests.
package metrics

import (
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/flotilla-relay/flotilla/internal/buildinfo"
)

// Relay holds the instruments the relay updates.
type Relay struct {
	reg *prometheus.Registry

	ingestEvents   *prometheus.CounterVec
	ingestBytes    *prometheus.CounterVec
	ingestTxns     *prometheus.CounterVec
	proposals      *prometheus.CounterVec
	proposalTime   *prometheus.HistogramVec
	semiAckTime    *prometheus.HistogramVec
	overlapped     *prometheus.CounterVec
	inPlace        *prometheus.CounterVec
	purges         *prometheus.CounterVec
	syncerErrors   *prometheus.CounterVec
	sourceSwitches *prometheus.CounterVec
	dumpStarts     *prometheus.CounterVec
	dumpErrors     *prometheus.CounterVec
	sentBytes      *prometheus.CounterVec
	replicaLogins  *prometheus.CounterVec
	refusedLogins  *prometheus.CounterVec
	preAuthRefused *prometheus.CounterVec
	sessionsActive prometheus.Gauge
}

// New makes the instruments of node nodeID in a registry of their own, with the Go
// runtime and process collectors.
func New(nodeID uint64) *Relay {
	reg := prometheus.NewRegistry()
	f := func(c prometheus.Collector) { reg.MustRegister(c) }
	f(collectors.NewGoCollector())
	f(collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	node := prometheus.Labels{"node": strconv.FormatUint(nodeID, 10)}
	counter := func(name, help string, labels ...string) *prometheus.CounterVec {
		c := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "flotilla", Name: name, Help: help, ConstLabels: node}, labels)
		f(c)
		return c
	}
	r := &Relay{reg: reg,
		ingestEvents:   counter("ingest_events_total", "Binlog events received from the master and committed by the group's raft quorum.", "upstream"),
		ingestBytes:    counter("ingest_bytes_total", "Bytes of binlog events received from the master and committed.", "upstream"),
		ingestTxns:     counter("ingest_transactions_total", "Transactions received from the master and committed.", "upstream"),
		proposals:      counter("proposals_total", "Raft proposals made by the group's syncer, by result (ok or error).", "upstream", "result"),
		overlapped:     counter("proposals_overlapped_total", "Proposals made while an earlier one of the same syncer was still in raft (pipelined ingest, from cluster version 3).", "upstream"),
		inPlace:        counter("proposals_in_place_total", "Proposals written in place before their events, without encoding them into a buffer first (a batch of one large transaction or piece).", "upstream"),
		purges:         counter("purges_total", "Served binlog files purged (by retention or PURGE).", "upstream"),
		syncerErrors:   counter("syncer_errors_total", "Syncer connections to the master that ended in an error; each is followed by a reconnect.", "upstream"),
		sourceSwitches: counter("source_switches_total", "Changes of an upstream's master, by how (repoint, forced or automatic).", "upstream", "how"),
		dumpStarts:     counter("dump_starts_total", "Binlog dumps started for replicas on this node.", "upstream"),
		dumpErrors:     counter("dump_errors_total", "Binlog dumps ended with a MySQL error, by error code.", "code"),
		sentBytes:      counter("sent_bytes_total", "Binlog bytes sent to replicas by this node, by replica user.", "user"),
		replicaLogins:  counter("logins_total", "Successful logins on the MySQL port, by user.", "user"),
		refusedLogins:  counter("refused_connections_total", "Connections refused on the MySQL port, by MySQL error code.", "code"),
		preAuthRefused: counter("preauth_refused_total", "Connections refused on the MySQL port before login by a guard against resource exhaustion, by reason (handshakes_per_host, packet_too_large, rsa_rate).", "reason"),
	}
	r.proposalTime = prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: "flotilla", Name: "proposal_seconds",
		Help: "Time from proposing a batch of transactions to its raft commit.", ConstLabels: node,
		Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14)}, []string{"upstream"})
	f(r.proposalTime)
	r.semiAckTime = prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: "flotilla", Name: "semi_sync_ack_seconds",
		Help: "Time from receiving the last event of a semi-sync master's transaction to acknowledging it, once the group's raft quorum committed it and the leader applied it: Flotilla's share of the master's commit latency. One value per ACK, for the last transaction it acknowledges.", ConstLabels: node,
		Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16)}, []string{"upstream"})
	f(r.semiAckTime)
	r.sessionsActive = prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "flotilla", Name: "mysql_sessions",
		Help: "Open client sessions on the MySQL port.", ConstLabels: node})
	f(r.sessionsActive)
	bi := buildinfo.Get()
	info := prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "flotilla", Name: "build_info",
		Help: "1, labelled with the node's release, commit, Go version and the newest cluster version it understands (a mixed-version cluster shows several).", ConstLabels: node},
		[]string{"version", "commit", "go_version", "max_cluster_version"})
	info.WithLabelValues(bi.Version, bi.Commit, bi.GoVersion, strconv.FormatUint(uint64(bi.ClusterVersion), 10)).Set(1)
	f(info)
	return r
}

// ClusterVersion exports the cluster version this node's metadata holds (read at
// scrape time).
func (r *Relay) ClusterVersion(nodeID uint64, read func() float64) {
	r.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "flotilla", Name: "cluster_version",
		Help: "The cluster version: what every member understands and commands may use.", ConstLabels: prometheus.Labels{"node": strconv.FormatUint(nodeID, 10)}}, read))
}

// RaftDirectIO exports whether the raft log's payload files are written with direct
// I/O (read at scrape time): 0 where the filesystem refuses it, and the page cache then
// takes a copy of every ingested byte (see raftlog.Factory.DirectState).
func (r *Relay) RaftDirectIO(nodeID uint64, read func() float64) {
	r.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "flotilla", Name: "raft_payload_direct_io",
		Help: "1 while the raft log's payload files are written with direct I/O (O_DIRECT), 0 if the filesystem refused it or storage faults are injected.", ConstLabels: prometheus.Labels{"node": strconv.FormatUint(nodeID, 10)}}, read))
}

// RaftPayloadSpares exports how many spare payload files the raft log holds ready
// (read at scrape time): 0 for long under a steady ingest means new payload files
// are written for the first time (see raft_payload_reserve).
func (r *Relay) RaftPayloadSpares(nodeID uint64, read func() float64) {
	r.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "flotilla", Name: "raft_payload_spares",
		Help: "Spare raft payload files ready to be overwritten by new ones (raft_payload_reserve).", ConstLabels: prometheus.Labels{"node": strconv.FormatUint(nodeID, 10)}}, read))
}

// RaftPayloadRecycled exports how many new payload files were spares (read at
// scrape time): the rest were written for the first time.
func (r *Relay) RaftPayloadRecycled(nodeID uint64, read func() float64) {
	r.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: "flotilla", Name: "raft_payload_files_recycled_total",
		Help: "New raft payload files that were spares, overwritten instead of written for the first time.", ConstLabels: prometheus.Labels{"node": strconv.FormatUint(nodeID, 10)}}, read))
}

// RaftPayloadsInPlace exports how many raft payloads were written from their own
// memory (read at scrape time): large payloads in block-aligned memory with direct
// I/O on. 0 under a bulk load means every payload took a copy into the staging
// buffer (direct I/O off, or memory the runtime no longer aligns).
func (r *Relay) RaftPayloadsInPlace(nodeID uint64, read func() float64) {
	r.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: "flotilla", Name: "raft_payloads_in_place_total",
		Help: "Large raft payloads written to their payload file from their own memory, without a copy into the staging buffer.", ConstLabels: prometheus.Labels{"node": strconv.FormatUint(nodeID, 10)}}, read))
}

// RaftPayloadChecksums exports how the node came by the CRC32C of its large raft
// payloads (read at scrape time): from its memo (taken already by its raft log or
// transport, crcalg) or taken afresh. A replica takes each payload's once, a
// leader once for all its followers; "taken" far above that means the memo is too
// small for the node's traffic.
func (r *Relay) RaftPayloadChecksums(nodeID uint64, memo, taken func() float64) {
	for how, read := range map[string]func() float64{"memo": memo, "taken": taken} {
		r.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: "flotilla", Name: "raft_payload_checksums_total",
			Help: "CRC32Cs of large raft payloads the raft log and transport needed, by how they came by them: from the node's memo, or taken afresh.", ConstLabels: prometheus.Labels{"node": strconv.FormatUint(nodeID, 10), "how": how}}, read))
	}
}

// SegmentChecksumsDerived exports how many bytes of segment records had their CRC32C
// derived from their raft entries' (read at scrape time) instead of taken by a pass
// over them: records of large events, when the raft log knew their entries'.
func (r *Relay) SegmentChecksumsDerived(nodeID uint64, read func() float64) {
	r.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: "flotilla", Name: "segment_checksums_derived_bytes_total",
		Help: "Bytes of segment records whose CRC32C was derived from their raft entries' checksums rather than taken by a pass over them (records of large events).", ConstLabels: prometheus.Labels{"node": strconv.FormatUint(nodeID, 10)}}, read))
}

// SegmentDirectIO exports whether segments are written with direct I/O (read at
// scrape time): 0 where the filesystem refused it (see statemachine.Store.DirectIO).
func (r *Relay) SegmentDirectIO(nodeID uint64, read func() float64) {
	r.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "flotilla", Name: "segment_direct_io",
		Help: "1 while segments are written with direct I/O (O_DIRECT), 0 if the filesystem refused it or storage faults are injected.", ConstLabels: prometheus.Labels{"node": strconv.FormatUint(nodeID, 10)}}, read))
}

// BufferedIO exports whether the node was told to write through the page cache
// (buffered_io), so that an alert on the direct-I/O gauges can tell that from a
// filesystem's refusal.
func (r *Relay) BufferedIO(nodeID uint64, on bool) {
	v := 0.0
	if on {
		v = 1
	}
	r.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "flotilla", Name: "buffered_io",
		Help: "1 if the configuration turns direct I/O off (buffered_io), so payloads and segments go through the page cache on purpose.", ConstLabels: prometheus.Labels{"node": strconv.FormatUint(nodeID, 10)}}, func() float64 { return v }))
}

// RecordCache exports the store's shared record cache counters (read at scrape time):
// large records replicas took from it, and those read from a segment for it.
func (r *Relay) RecordCache(nodeID uint64, hits, misses func() float64) {
	node := prometheus.Labels{"node": strconv.FormatUint(nodeID, 10)}
	r.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: "flotilla", Name: "record_cache_hits_total",
		Help: "Large served records a replica's dump took from the node's shared record cache instead of reading and checking them again.", ConstLabels: node}, hits))
	r.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: "flotilla", Name: "record_cache_misses_total",
		Help: "Large served records read from a segment and checked for the shared record cache (several replicas were reading the same file).", ConstLabels: node}, misses))
}

// Registry is where the instruments live; collectors of node state register here.
func (r *Relay) Registry() *prometheus.Registry { return r.reg }

// Ingested counts a committed batch from the master.
func (r *Relay) Ingested(upstream string, events, bytes, txns int) {
	if r == nil {
		return
	}
	r.ingestEvents.WithLabelValues(upstream).Add(float64(events))
	r.ingestBytes.WithLabelValues(upstream).Add(float64(bytes))
	r.ingestTxns.WithLabelValues(upstream).Add(float64(txns))
}

// Proposed records one proposal and how long its commit took.
func (r *Relay) Proposed(upstream string, took time.Duration, err error) {
	if r == nil {
		return
	}
	result := "ok"
	if err != nil {
		result = "error"
	}
	r.proposals.WithLabelValues(upstream, result).Inc()
	if err == nil {
		r.proposalTime.WithLabelValues(upstream).Observe(took.Seconds())
	}
}

// SemiSyncAcked records the time a semi-sync ACK took from the receipt of the last
// transaction it acknowledges, for an ACK sent after a proposal's commit.
func (r *Relay) SemiSyncAcked(upstream string, took time.Duration) {
	if r == nil {
		return
	}
	r.semiAckTime.WithLabelValues(upstream).Observe(took.Seconds())
}

// Overlapped counts a proposal made while another of its syncer was in raft.
func (r *Relay) Overlapped(upstream string) {
	if r == nil {
		return
	}
	r.overlapped.WithLabelValues(upstream).Inc()
}

// InPlace counts a proposal written in place before its events (see the shard's
// pipeline.encode): the bench reports how many of the ingest's proposals were.
func (r *Relay) InPlace(upstream string) {
	if r == nil {
		return
	}
	r.inPlace.WithLabelValues(upstream).Inc()
}

// Purged counts purged files.
func (r *Relay) Purged(upstream string, files int) {
	if r != nil {
		r.purges.WithLabelValues(upstream).Add(float64(files))
	}
}

// SyncerError counts a syncer connection that ended in an error.
func (r *Relay) SyncerError(upstream string) {
	if r != nil {
		r.syncerErrors.WithLabelValues(upstream).Inc()
	}
}

// SourceSwitched counts a change of an upstream's master; how is repoint, forced or
// automatic.
func (r *Relay) SourceSwitched(upstream, how string) {
	if r != nil {
		r.sourceSwitches.WithLabelValues(upstream, how).Inc()
	}
}

// DumpStarted counts a dump.
func (r *Relay) DumpStarted(upstream string) {
	if r != nil {
		r.dumpStarts.WithLabelValues(upstream).Inc()
	}
}

// DumpFailed counts a dump ended with MySQL error code.
func (r *Relay) DumpFailed(code uint16) {
	if r != nil {
		r.dumpErrors.WithLabelValues(strconv.Itoa(int(code))).Inc()
	}
}

// SentTo returns the counter of binlog bytes sent to a replica user, resolved once
// per dump: the dump adds to it per event.
func (r *Relay) SentTo(user string) func(n int) {
	if r == nil {
		return func(int) {}
	}
	c := r.sentBytes.WithLabelValues(user)
	return func(n int) { c.Add(float64(n)) }
}

// LoggedIn counts a login.
func (r *Relay) LoggedIn(user string) {
	if r != nil {
		r.replicaLogins.WithLabelValues(user).Inc()
	}
}

// Refused counts a connection refused with MySQL error code.
func (r *Relay) Refused(code uint16) {
	if r != nil {
		r.refusedLogins.WithLabelValues(strconv.Itoa(int(code))).Inc()
	}
}

// PreAuthRefused counts a connection refused before login to protect the node's
// memory or CPU, by reason.
func (r *Relay) PreAuthRefused(reason string) {
	if r != nil {
		r.preAuthRefused.WithLabelValues(reason).Inc()
	}
}

// Sessions moves the open-sessions gauge by delta.
func (r *Relay) Sessions(delta int) {
	if r != nil {
		r.sessionsActive.Add(float64(delta))
	}
}

// Disk exports the data directory's free space and whether the node stopped its
// group replicas for lack of it (read at scrape time).
func (r *Relay) Disk(nodeID uint64, free, low func() float64) {
	node := prometheus.Labels{"node": strconv.FormatUint(nodeID, 10)}
	r.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "flotilla", Name: "disk_free_bytes",
		Help: "Free space of the data directory's filesystem (for the node's user).", ConstLabels: node}, free))
	r.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "flotilla", Name: "storage_suspended",
		Help: "1 while the node's group replicas are stopped because the data directory has less free space than min_free_disk.", ConstLabels: node}, low))
}
