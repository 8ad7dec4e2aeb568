package statemachine

import (
	"github.com/cockroachdb/pebble/v2/vfs"
	"golang.org/x/sys/unix"
)

// startWriteback asks the kernel to start writing f's dirty pages now, without
// waiting: the device then works while Update prepares the next records, and the
// fsync in Sync has only the tail left to wait for. It is a hint; errors are left
// to the fsync, which reports them. Files without a descriptor (in-memory) skip it.
func startWriteback(f vfs.File) {
	if fd := f.Fd(); fd != vfs.InvalidFd {
		_ = unix.SyncFileRange(int(fd), 0, 0, unix.SYNC_FILE_RANGE_WRITE)
	}
}
