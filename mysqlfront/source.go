package mysqlfront

import (
	"context"
	"time"

	"github.com/flotilla-relay/flotilla/internal/binlog"
	"github.com/flotilla-relay/flotilla/placement"
	"github.com/flotilla-relay/flotilla/statemachine"
)

// Source is where a session reads its upstream's binlog (DESIGN.md "Seams"): this
// node's replica of the group (leader or follower), or a relay from a node that holds
// one. The front end decides nothing about raft; the Router picks the source.
type Source interface {
	// Files describes the served files and the tail, for SHOW BINARY LOGS, SHOW MASTER
	// STATUS and @@gtid_binlog_pos.
	Files(ctx context.Context) (FileList, error)
	// Dump streams what spec asks for into sink until ctx ends (nil), the source
	// stops being eligible (error 1053: the replica reconnects and resumes), or the
	// dump fails (an error carrying its MySQL code).
	Dump(ctx context.Context, spec DumpSpec, sink EventSink) error
}

// FileList is what a source knows of a group's served files.
type FileList struct {
	Files []statemachine.FileStatus
	// State is the GTID state after the last served transaction; GTIDs is the
	// executed GTIDs as the flavor prints them (statemachine.Tail.GTIDs).
	State binlog.Position
	GTIDs string
	// Purged is, for MySQL-flavor groups, the GTIDs before the oldest served file
	// (what MySQL calls gtid_purged).
	Purged string
	// File and Size are the current file and its committed size (File 0: none yet).
	File, Size uint64
}

// DumpSpec is a replica's dump request with the session settings that shape it. It is
// everything a node needs to serve a dump for a replica connected to another node.
type DumpSpec struct {
	GroupID uint64
	// GTIDMode: start from ConnectState (@slave_connect_state); otherwise from File/Pos.
	GTIDMode     bool
	ConnectState string
	File         string
	Pos          uint32
	Flags        uint16
	ServerID     uint32
	// Checksum is @master_binlog_checksum, if the replica set it.
	HasChecksum bool
	Checksum    string
	// Heartbeat is @master_heartbeat_period (0: none).
	Heartbeat time.Duration
	// MySQLGTIDMode: a MySQL replica's COM_BINLOG_DUMP_GTID, starting at the first
	// transaction not in MySQLSet (its executed set, text form).
	MySQLGTIDMode bool
	MySQLSet      string
}

// EventSink receives a dump's events in order: whole, or in parts for an event stored
// across pieces.
type EventSink interface {
	// Event sends one whole event.
	Event(ev []byte) error
	// EventPart sends part of an event cut across stored pieces (one larger than a
	// raft entry): the parts come in order, the first holds the event's header (whose
	// size tells how many bytes follow), and no other call comes between them. A sink
	// may not keep part after it returns.
	EventPart(part []byte) error
	// Position reports the served file and offset after the events sent so far.
	Position(file, pos uint64)
	// EOF ends a non-blocking dump at the tail.
	EOF() error
}

// Router tells the front end about upstreams and where their binlog is read.
type Router interface {
	// Metadata is this node's view of the upstreams.
	Metadata() (*placement.State, error)
	// Source returns where a session on this node reads an upstream's binlog, or an
	// error (with a MySQL code) saying why none can serve right now.
	Source(ctx context.Context, u *placement.Upstream) (Source, error)
}
