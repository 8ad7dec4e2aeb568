//go:build !linux

package raftlog

// oDirect is the open flag for direct I/O: none here, so payloads go through the
// page cache.
const oDirect = 0
