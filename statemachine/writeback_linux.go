package statemachine

import (
	"os"

	"golang.org/x/sys/unix"
)

// startWriteback asks the kernel to start writing f's dirty pages now, without
// waiting: the device then works while Update prepares the next records, and the
// fsync in Sync has only the tail left to wait for. It is a hint; errors are left
// to the fsync, which reports them.
func startWriteback(f *os.File) {
	_ = unix.SyncFileRange(int(f.Fd()), 0, 0, unix.SYNC_FILE_RANGE_WRITE)
}
