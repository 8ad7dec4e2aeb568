package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"

	dblog "github.com/lni/dragonboat/v3/logger"

	"github.com/flotilla-relay/flotilla/internal/metrics"
	adminv1 "github.com/flotilla-relay/flotilla/proto/adminv1"
)

// NewLogger builds the process logger: format text or json, level debug, info, warn
// or error.
func NewLogger(w io.Writer, format, level string) (*slog.Logger, error) {
	var l slog.Level
	if level == "" {
		level = "info"
	}
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("log level %q: use debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: l}
	switch format {
	case "", "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("log format %q: use text or json", format)
}

// RouteDragonboatLogs sends dragonboat's own logging to log, tagged with its package;
// its chatter below warning shows only at debug. Dragonboat keeps one
// factory per process: call this once, before the first node starts.
func RouteDragonboatLogs(log *slog.Logger) {
	dblog.SetLoggerFactory(func(pkg string) dblog.ILogger {
		return &dbLogger{log: log.With("component", "dragonboat", "pkg", pkg), level: dblog.WARNING}
	})
}

type dbLogger struct {
	log   *slog.Logger
	level dblog.LogLevel
}

func (d *dbLogger) SetLevel(l dblog.LogLevel) { d.level = l }
func (d *dbLogger) emit(l dblog.LogLevel, sl slog.Level, format string, args []any) {
	if l > d.level {
		// Below dragonboat's level for the package: only a node logging at debug
		// sees it, and at debug.
		sl = slog.LevelDebug
	}
	d.log.Log(context.Background(), sl, strings.TrimSpace(fmt.Sprintf(format, args...)))
}
func (d *dbLogger) Debugf(f string, a ...any)   { d.emit(dblog.DEBUG, slog.LevelDebug, f, a) }
func (d *dbLogger) Infof(f string, a ...any)    { d.emit(dblog.INFO, slog.LevelInfo, f, a) }
func (d *dbLogger) Warningf(f string, a ...any) { d.emit(dblog.WARNING, slog.LevelWarn, f, a) }
func (d *dbLogger) Errorf(f string, a ...any)   { d.emit(dblog.ERROR, slog.LevelError, f, a) }
func (d *dbLogger) Panicf(f string, a ...any) {
	msg := fmt.Sprintf(f, a...)
	d.log.Error(msg)
	panic(msg)
}

// ready is /readyz: the node has joined its cluster, reads the metadata group, and
// runs every group replica the metadata assigns to it.
func (n *Node) ready(ctx context.Context) error {
	st, err := n.meta.Read(ctx)
	if err != nil {
		return fmt.Errorf("metadata group not reachable: %w", err)
	}
	if _, ok := st.Nodes[n.cfg.NodeID]; !ok {
		return fmt.Errorf("node %d is not registered in the cluster yet", n.cfg.NodeID)
	}
	if why := n.disk.problem(); why != "" {
		return errors.New(why)
	}
	for _, name := range st.UpstreamNames() {
		u := st.Upstreams[name]
		if slices.Contains(st.Assignments[u.GroupID], n.cfg.NodeID) {
			if _, ok := n.shards.Shard(u.GroupID); !ok {
				return fmt.Errorf("group %d (upstream %s) is assigned here and not started yet", u.GroupID, name)
			}
		}
	}
	return nil
}

// samples is what the metrics collector reads at scrape time.
func (n *Node) samples(groups func() []*adminv1.GroupStatus) []metrics.GroupSample {
	st, err := n.meta.Local()
	if err != nil {
		return nil
	}
	names := make(map[uint64]string, len(st.Upstreams))
	for _, u := range st.Upstreams {
		names[u.GroupID] = u.Name
	}
	var out []metrics.GroupSample
	for _, gs := range groups() {
		name, ok := names[gs.GroupId]
		if !ok {
			continue // removed since: one series per upstream name, never an empty one
		}
		s := metrics.GroupSample{Upstream: name, Leader: gs.LeaderNode == n.cfg.NodeID, HasLeader: gs.LeaderNode != 0,
			Syncing: gs.Syncing, Connected: gs.Connected, LagSeconds: gs.LagSeconds, Transactions: gs.Transactions,
			Bytes: gs.Bytes, CompressedPlain: gs.CompressedPlainBytes, Compressed: gs.CompressedBytes,
			Reconnects: gs.Reconnects, CorruptEvents: gs.CorruptEvents, LeaderChanges: n.leaders.Changes(gs.GroupId)}
		for _, r := range gs.Replicas {
			if r.Node == n.cfg.NodeID {
				s.Replicas++
			}
		}
		if sh, ok := n.shards.Shard(gs.GroupId); ok {
			s.PendingBytes = sh.Status().PendingBytes
		}
		if g, ok := n.store.Group(gs.GroupId); ok {
			t, _ := g.Tail()
			s.AppliedIndex, s.CurrentFile, s.FirstFile = t.Applied, t.File, t.FirstFile
		}
		out = append(out, s)
	}
	return out
}
