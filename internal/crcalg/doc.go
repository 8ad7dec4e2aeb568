// Package crcalg is the CRC-32 algebra and the CRC-32C memo the node shares between
// its raft log and its raft transport.
//
// Why: CRC-32 is linear over GF(2), so the checksum of a concatenation follows from
// the checksums of its parts and their lengths (Combine), and the checksum of a
// message that changed in a few bytes follows from its old checksum and the change
// (ShiftZeros). A checksum once known need not be taken again: with three replicas,
// every byte a group ingested was checksummed (CRC-32C) seven times across the
// cluster besides the segments' own: by the leader's raft log, by the leader's
// transport once per follower, and by each follower's transport and raft log. The
// same bytes, the same polynomial. With the memo, the leader takes it once and each
// follower once (its transport's check), which its raft log then reuses. The raft
// log also tells it the checksum of what the state machine is handed (the payload
// past dragonboat's header byte), from which the state machine derives its records'
// (Part: the checksum of a part of a slice from the whole's).
//
// Invariants:
//   - Combine, ShiftZeros, ShiftBack and Part are exact: Combine(crc(a), crc(b),
//     len(b)) is crc(a||b) for every a and b, ShiftBack undoes ShiftZeros, Part is
//     the checksum of the part (the tests check them against hash/crc32).
//   - The memo answers only for the very object it was told of: it is keyed by weak
//     pointers (object and offset, which the runtime never gives to another object
//     even at the same address once the first is collected) and the length. It never
//     holds the bytes, so it pins no memory.
//   - The memo's answers are right only while the bytes it was told of do not change:
//     its users give it raft entries' payloads, which nothing modifies once they are
//     handed to raft (see raftlog's invariants), and only Go memory: the runtime
//     stops the process, unrecoverably ("getWeakHandle on invalid pointer"), when
//     asked for a weak pointer into memory it did not allocate. Every payload the
//     raft log and the transport see is a Go allocation (dragonboat's proposal copy,
//     the transport's buffer per message, a decoded batch, a payload read back).
package crcalg
