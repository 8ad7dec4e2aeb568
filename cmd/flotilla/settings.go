package main

import (
	"fmt"
	"time"
	_ "unsafe" // go:linkname

	_ "github.com/lni/dragonboat/v3" // the variables below are its
)

// Dragonboat sizes several per-group structures from its "soft settings", which it
// reads once, at package initialisation, into package variables: the defaults are
// sized for a few large raft groups. A receive queue of 2 x 1,024 messages alone is
// 0.37 MiB per group, most of an idle group's memory, and 16 pending-proposal shards
// each carry a random source. A relay runs thousands of small groups (one per
// upstream), each with a few proposals in flight.
//
// Dragonboat's own way to change them is a dragonboat-soft-settings.json in the
// process's working directory at start-up: a node's working directory is not the
// place for that (and an operator's such file would be overridden here). So serve
// sets the variables the settings initialised, before it creates the NodeHost, by
// their link names in the pinned dragonboat (v3.3.8). The declarations below define
// the same symbols, so a variable renamed in another dragonboat would not fail the
// link: tuneDragonboat therefore changes them only if each holds dragonboat's default,
// and TestTuneDragonboat fails if they do not (a file of soft settings an operator put
// in the working directory also leaves them alone).
//
//go:linkname dragonboatReceiveQueueLen github.com/lni/dragonboat/v3.receiveQueueLen
var dragonboatReceiveQueueLen uint64

//go:linkname dragonboatIncomingProposals github.com/lni/dragonboat/v3.incomingProposalsMaxLen
var dragonboatIncomingProposals uint64

//go:linkname dragonboatIncomingReadIndexes github.com/lni/dragonboat/v3.incomingReadIndexMaxLen
var dragonboatIncomingReadIndexes uint64

//go:linkname dragonboatPendingProposalShards github.com/lni/dragonboat/v3.pendingProposalShards
var dragonboatPendingProposalShards uint64

// dragonboatEntrySlice and dragonboatEntrySliceFree size a group's in-memory log:
// a new slice of the first holds its unapplied entries, made once fewer than the
// second are free. Applied entries stay in the old slice's array, reachable, until
// then: with dragonboat's 512 and 96 a syncer's pipelined 4 MiB proposals kept up
// to 128 MiB of applied entries alive per group. The size must stay above the free
// size (dragonboat panics otherwise).
//
//go:linkname dragonboatEntrySlice github.com/lni/dragonboat/v3/internal/raft.entrySliceSize
var dragonboatEntrySlice uint64

//go:linkname dragonboatEntrySliceFree github.com/lni/dragonboat/v3/internal/raft.minEntrySliceSize
var dragonboatEntrySliceFree uint64

// dragonboatReload is how often each of dragonboat's step, commit and apply workers
// goes over every group it serves, whether or not anything is ready: a safety net
// beside the notifications that drive them. Its default, 200 ms, was the raft tick
// until 0.43 (333 ms since, see server.RaftTickMillis), which already steps every
// group: the net doubled an idle group's step work and added an apply pass, a
// seventh of a thousand idle groups' CPU. A
// group added while its apply worker is busy waits for the next pass to open its
// state machine (dragonboat can consume the group's ready flag before it loads the
// group), so the pass stays short: 1 s.
//
//go:linkname dragonboatReload github.com/lni/dragonboat/v3.nodeReloadInterval
var dragonboatReload time.Duration

// tuneDragonboat sizes dragonboat's per-group queues for many small groups: 64
// messages received between two steps of a group (a full queue drops messages,
// which raft sends again), 16 proposals and 128 reads queued (a full queue refuses
// the next with ErrSystemBusy, which a syncer takes for backpressure: it keeps at
// most 4 proposals in flight, up to 16 with batches that a transaction of 1 MiB or
// more ended (shard's loneInflightBytes); the queue is 2 x 16 entries, 2.5 KiB a group),
// 2 pending-proposal shards, in-memory log slices of 16 entries renewed once 4 are
// used (at most 4 applied entries kept alive past their apply), and its workers' pass
// over every group every 1 s instead of 200 ms. It runs once, in main, before any
// NodeHost exists (whose workers read the interval as they start); it returns what
// it set, for the log.
func tuneDragonboat() string {
	if dragonboatReceiveQueueLen != 1024 || dragonboatIncomingProposals != 2048 || dragonboatIncomingReadIndexes != 4096 ||
		dragonboatPendingProposalShards != 16 || dragonboatEntrySlice != 512 || dragonboatEntrySliceFree != 96 || dragonboatReload != 200*time.Millisecond {
		return fmt.Sprintf("dragonboat's, left as they are (not its defaults: receive queue %d, proposal queue %d, read queue %d, pending-proposal shards %d, entry slices %d, %d free, worker pass %v)",
			dragonboatReceiveQueueLen, dragonboatIncomingProposals, dragonboatIncomingReadIndexes, dragonboatPendingProposalShards, dragonboatEntrySlice, dragonboatEntrySliceFree, dragonboatReload)
	}
	dragonboatReceiveQueueLen = 64
	dragonboatIncomingProposals = 16
	dragonboatIncomingReadIndexes = 128
	dragonboatPendingProposalShards = 2
	dragonboatEntrySliceFree = 12 // first: the size must stay above it
	dragonboatEntrySlice = 16
	dragonboatReload = time.Second
	return fmt.Sprintf("receive queue %d, proposal queue %d, read queue %d, pending-proposal shards %d, entry slices %d, %d free, worker pass %v",
		dragonboatReceiveQueueLen, dragonboatIncomingProposals, dragonboatIncomingReadIndexes, dragonboatPendingProposalShards, dragonboatEntrySlice, dragonboatEntrySliceFree, dragonboatReload)
}

// dragonboatMetadata is the cli.App metadata key under which main leaves what
// tuneDragonboat set, for serve to log.
const dragonboatMetadata = "dragonboat-settings"
