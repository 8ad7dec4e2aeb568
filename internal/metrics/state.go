package metrics

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
)

// GroupSample is a local group replica's state at scrape time.
type GroupSample struct {
	Upstream string
	// Leader: this node's replica leads the group; HasLeader: the group has one.
	Leader, HasLeader bool
	// Syncing: this node runs the syncer; Connected: it is connected to the master.
	Syncing, Connected bool
	// LagSeconds is how far the group's newest transaction trails the master's clock.
	LagSeconds float64
	// PendingBytes were received from the master but not yet committed.
	PendingBytes uint64
	AppliedIndex uint64
	Transactions uint64
	// Bytes of served binlog held; of which CompressedPlain are stored compressed
	// as Compressed.
	Bytes, CompressedPlain, Compressed uint64
	Reconnects, CorruptEvents          uint64
	// Replicas connected to this node reading the group.
	Replicas int
	// LeaderChanges this node observed in the group.
	LeaderChanges uint64
	CurrentFile   uint64
	FirstFile     uint64
}

// StateCollector reads group samples when Prometheus scrapes.
type StateCollector struct {
	node    string
	samples func() []GroupSample
	descs   map[string]*prometheus.Desc
}

// NewStateCollector collects samples for node nodeID.
func NewStateCollector(nodeID uint64, samples func() []GroupSample) *StateCollector {
	c := &StateCollector{node: strconv.FormatUint(nodeID, 10), samples: samples, descs: map[string]*prometheus.Desc{}}
	for name, help := range map[string]string{
		"group_leader":                   "1 if this node's replica leads the group.",
		"group_has_leader":               "1 if the group has a leader (as this node knows).",
		"syncer_connected":               "1 if this node's syncer is connected to the master (leaders only).",
		"lag_seconds":                    "Seconds the group's newest transaction trails the master's clock (syncer's node).",
		"lag_bytes":                      "Bytes received from the master not yet committed by the group (syncer's node).",
		"applied_index":                  "Last raft index applied by this node's replica.",
		"transactions":                   "Transactions held by this node's replica.",
		"segment_bytes":                  "Served binlog bytes held by this node's replica.",
		"segment_compressed_plain_bytes": "Served binlog bytes stored compressed (before compression).",
		"segment_compressed_bytes":       "Bytes those take on disk compressed.",
		"syncer_reconnects_total":        "Syncer reconnects to the master.",
		"corrupt_events_total":           "Events from the master whose checksum failed on arrival (fetched again).",
		"connected_replicas":             "Replicas connected to this node reading the group.",
		"raft_leader_changes_total":      "Leader changes this node observed in the group's raft.",
		"current_file":                   "Number of the served file being written.",
		"first_file":                     "Number of the oldest served file held.",
	} {
		c.descs[name] = prometheus.NewDesc("flotilla_"+name, help, []string{"upstream"}, prometheus.Labels{"node": c.node})
	}
	return c
}

// Describe implements prometheus.Collector.
func (c *StateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.descs {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *StateCollector) Collect(ch chan<- prometheus.Metric) {
	b := func(v bool) float64 {
		if v {
			return 1
		}
		return 0
	}
	for _, s := range c.samples() {
		gauge := func(name string, v float64) {
			ch <- prometheus.MustNewConstMetric(c.descs[name], prometheus.GaugeValue, v, s.Upstream)
		}
		counter := func(name string, v float64) {
			ch <- prometheus.MustNewConstMetric(c.descs[name], prometheus.CounterValue, v, s.Upstream)
		}
		gauge("group_leader", b(s.Leader))
		gauge("group_has_leader", b(s.HasLeader))
		if s.Syncing {
			gauge("syncer_connected", b(s.Connected))
			gauge("lag_seconds", s.LagSeconds)
			gauge("lag_bytes", float64(s.PendingBytes))
		}
		gauge("applied_index", float64(s.AppliedIndex))
		gauge("transactions", float64(s.Transactions))
		gauge("segment_bytes", float64(s.Bytes))
		gauge("segment_compressed_plain_bytes", float64(s.CompressedPlain))
		gauge("segment_compressed_bytes", float64(s.Compressed))
		counter("syncer_reconnects_total", float64(s.Reconnects))
		counter("corrupt_events_total", float64(s.CorruptEvents))
		gauge("connected_replicas", float64(s.Replicas))
		counter("raft_leader_changes_total", float64(s.LeaderChanges))
		gauge("current_file", float64(s.CurrentFile))
		gauge("first_file", float64(s.FirstFile))
	}
}
