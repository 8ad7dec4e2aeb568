// Package statemachine is a group replica's storage: dragonboat's on-disk state
// machine for one upstream, which appends the transactions raft commits to segment
// files (the binlog served to replicas) indexed in pebble, and the cursors that read
// them back. One Store holds every group of a node: one pebble instance for all the
// indexes, a directory of segments per group.
//
// Invariants (each is kept, and argued, where the comment names it):
//
//   - Every replica applies the same commands to the same result. A command is
//     checked whole before it changes anything (the fence, apply.go): a proposal of a
//     stale syncer epoch, a sequenced one out of its epoch's sequence, or one that
//     does not follow the group's last transaction is rejected, identically
//     everywhere, and leaves no trace. So a transaction is held once, in order,
//     whatever raft or a deposed leader's syncer proposes. (The same result: the
//     served bytes, results and index, except a closed file's closed_at, the local
//     clock's, which only retention reads; group.go.)
//   - Readers see complete transactions only: SegSize and FileSize never end inside
//     a transaction; the pieces of one still arriving are beyond them (meta,
//     group.go).
//     Bytes below the published tail never change, except by purge (whole files) and
//     snapshot recovery (a new generation; recordcache.go).
//   - An Update is durable once its segments are fsynced: every index change can be
//     derived again from the served records and the recIndex record that ends each
//     commit (commit, group.go; redo, redo.go). Changes that rewrite or delete
//     segments (a new epoch dropping open pieces, purge) are followed at once by an
//     index commit with fsyncs, so redo never crosses them (a drop first writes and
//     syncs a recIndex record at its cut); purged segments are unlinked only after
//     that commit.
//   - Open keeps only what it has checked: records past the last place known
//     synced are checked against their CRCs (a bulk load closes files without an
//     fsync until maxUnsyncedCloses are, so they lie in a few files: closeDue,
//     group.go; recentParts, recover.go), what follows the last complete Update
//     is cut (dragonboat replays it from the raft log), and what it keeps is fsynced
//     before Open returns (recover.go).
//   - The segments alone rebuild the index: every Update the index reflects has its
//     recIndex record in them, the carrier of its file entries. A drop cuts after
//     the records before the dropped transaction, and Open writes back a last
//     record a power cut took, or one with every file's entry where the meta's
//     FileRecords is unset: an older release's store, a snapshot just installed
//     (restoreRedo, recover.go); a rebuild stops where a closed file's entry
//     disagrees with what it read (redo.go).
//   - A file or directory entry is durable only once its directory is synced
//     (files.go). The power-loss test runs the store on a filesystem that loses a
//     random share of what was not synced: a missing fsync shows as lost or torn
//     data in some of its rounds.
//   - A record's checksum is that of its bytes as written, taken by a pass or, for
//     large events, derived from its raft entry's (segcrc.go): the node's memo
//     answers only for the entry's own bytes, which nothing modifies (crcalg), and
//     the derivation is exact (its tests compare it with the pass).
//   - Snapshots carry the open pieces of a transaction with the meta that says so: a
//     replica restored from one accepts the next pieces as its peers do (snapshot.go).
//   - Compression replaces a closed part only once the plain part is durable and its
//     compressed copy is synced and named in a synced directory; cursors read plain
//     and compressed parts alike (compress.go), from the frame that holds the
//     offset they ask for where the file has a seek table (zstdseek.go).
package statemachine
