// Package raftlog is the node's raft log: dragonboat's own LogDB (a sharded pebble
// LSM) for raft's state and small entries, with the payloads of large entries kept
// outside it, each written once to a file of its group, appended to (a new file, or
// from cluster version 5 a recycled one overwritten from its start: spare.go).
//
// Why: nearly every byte a group ingests is in a large entry (a batch of binlog
// events). In the LSM each such byte was written to the WAL, then again by the
// memtable flush and again by each compaction, while the group's segments already
// hold it: LogDB flushes and compactions were about 30% of ingest CPU and most of its
// disk writes, and the syncer's next proposal waited on a WAL fsync that competed with
// them. Here the LSM holds a 36-byte reference instead.
//
// Invariants:
//   - A reference reaches the LSM only after the payload it names is durable: the
//     payload files of an update are synced (and a new file's directory entry) before
//     the inner LogDB saves the update, which it syncs itself. A power cut therefore
//     never leaves a reference to bytes the disk lost; it may leave bytes no
//     reference names (the tail of the file being written), which are never read and
//     go with their file.
//   - Entries handed to dragonboat are never modified: SaveRaftState saves copies
//     that carry the references, and IterateEntries returns entries with their
//     payloads restored and checked against their CRC32C, so raft (its in-memory log,
//     replication to followers, the state machine) sees exactly what was proposed.
//   - A payload file is removed only once every entry it holds is at or below the
//     index its group's log was cut to (RemoveEntriesTo), or the group's data is
//     removed. A file whose headers are damaged short of its end, other than a
//     process's last (which may have a torn tail), is kept until then. Entries at
//     or below that index are never read again: dragonboat reads the log only above
//     the group's latest snapshot, which it saved before the cut.
//   - A replica's payload directory outlives its inner log only until the next
//     open (a crash inside RemoveNodeData): it goes once the inner LogDB neither
//     lists the replica nor holds a raft state for it.
//   - A file is appended to only by the process that created it, and only until a
//     write to it fails or the log is cut into it: after a restart each group
//     starts a new file, so no record is ever written after a torn tail (the one
//     write after it is a salted file's seal at the next start, over bytes nothing
//     refers to: files.go, sealAt).
//   - Nothing leaves the LSM until Factory.On is set: a node sets it once the
//     cluster version that needs a release able to read the files
//     (PayloadFilesVersion) is durably recorded in its data directory.
//   - Small entries (and all but application entries, encoded or not) stay in the LSM as they were:
//     a group of small transactions costs what it did.
//   - A payload file is written in whole 4 KiB blocks at block offsets: records are
//     staged, and each sync pads the last block with a record of index 0 (which
//     raft never uses, and a scan passes over). So the node writes them with direct
//     I/O (Factory.DirectIO) where the filesystem allows it: the payloads skip the
//     page cache, whose copy was a large share of ingest CPU (a fault-injecting
//     filesystem gets the same blocks through its own writes). With direct I/O, a
//     payload of directio.InPlaceMin or more in block-aligned memory is not staged:
//     a pad record puts it at a block, its whole blocks are written from its own
//     memory, and only its tail is staged (putInPlace). The writes still go to the
//     file in order.
//   - Recycled files (spare.go) are salted: their records read as theirs only, so
//     an earlier life's records after the new ones read as the file's end, and a
//     file that ends before its old bytes is sealed (a record claiming the rest)
//     once it is finished (or cut into), or at the next start for a process's last
//     file. A spare enters only when nothing refers to it, and is taken only once
//     both directories of its move are synced; a take's rename is synced before
//     anything refers to the file. Salted files are written only from
//     RecycleVersion, recorded as PayloadFilesVersion is.
//   - The checksum memo (Factory.CRC) is told only checksums of bytes it has seen
//     checked or taken: a payload's, and that of the command the state machine is
//     handed of an encoded entry, the payload past dragonboat's header byte when
//     that byte is 0 (version 0, uncompressed, no session: dragonboat v3.3's
//     rsm/encoded.go hands it that sub-slice, the same bytes); any other header
//     byte is decoded into new bytes, and nothing is told of them.
//   - A save that changes nothing but commit indexes is not written on its own: the
//     commit index is volatile in raft, and the next write of its group carries it
//     (see commitStates, which also says why a restart with an older one is safe).
package raftlog
