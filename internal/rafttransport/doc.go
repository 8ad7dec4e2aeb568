// Package rafttransport carries raft messages between nodes for dragonboat (its
// config.TransportFactory). Dragonboat's own TCP transport marshals every message
// batch, entry payloads included, into a buffer it allocates per batch, checksums
// it, and on receipt allocates and copies each payload again: in a three-replica
// ingest that was 38-46% of each node's CPU in a 1 s profile. This transport writes
// the payloads from the buffers dragonboat holds them in (writev; through a 64 KiB
// buffer under TLS) and reads each message's payloads into one buffer its entries
// then share (one message's: dragonboat keeps a group's entries until it applies
// them, and one group's must not pin another's), but for payloads of
// directio.InPlaceMin or more: each of those gets a block-aligned buffer of its own
// (the raft log writes it to the disk from there) and is checksummed as it is read.
//
// Wire. A connection carries frames one after another, each starting with two
// magic bytes:
//
//   - 0xAE 0x7D, dragonboat's TCP frame (legacy.go): an 18-byte header (method,
//     size, the header's CRC, the payload's CRC) and a marshalled MessageBatch or
//     Chunk. Releases before cluster version WireVersion speak only this.
//   - 'F' 'L', this transport's frame (frame.go): the batch marshalled without its
//     entries' payloads, their lengths, then the payloads, under one CRC-32C.
//   - 0x00 0x00, dragonboat's poison: a snapshot's sender is done; the receiver
//     answers with the same two bytes and closes, so the sender knows every chunk
//     was read before its connection goes.
//
// Invariants:
//
//   - A node reads both frame kinds at any time, and writes its own only while
//     Factory.NewWire says every node of the cluster reads them (the cluster version
//     has reached WireVersion): a rolling upgrade mixes releases.
//   - A frame reaches dragonboat only whole and checked (magic, lengths within
//     bounds, CRCs); anything else closes its connection, and only it: raft sends
//     the messages again on a new one.
//   - Payloads are never copied on send, and copied once (from the socket) on
//     receipt; nothing sent is modified (dragonboat's in-memory log shares the
//     entries).
package rafttransport
