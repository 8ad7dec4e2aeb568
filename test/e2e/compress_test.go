package e2e

import (
	"context"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/flotilla-relay/flotilla/test/mariadbtest"
)

// TestIdleGroupCompressesClosedFiles: transactions of 1.5 MiB, each past the served
// file size (1 MiB), close a file at every one; once the master goes quiet, every
// closed file but the newest is compressed. With a bulk load's closes deferred
// (statemachine's closeDue, off by default since 0.49) no Update would make them
// durable once the master is quiet: the shard's snapshot for an idle group with
// compression waiting does, and without it this test failed at 30 s.
func TestIdleGroupCompressesClosedFiles(t *testing.T) {
	mariadbtest.RequireTools(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	dir := t.TempDir()
	master := startMaster(ctx, t, filepath.Join(dir, "master"))
	fl := startRelayNode(ctx, t, filepath.Join(dir, "flotilla"), master, "--served-file-size", "1M")
	if err := mariadbtest.CreateBlobTable(ctx, master); err != nil {
		t.Fatal(err)
	}
	// Three rows close three files: fewer than maxUnsyncedCloses, which would fsync.
	const rows, rowBytes = 3, 1536 << 10
	for i := 1; i <= rows; i++ {
		if err := mariadbtest.InsertBlobRows(ctx, master, i, i, rowBytes); err != nil {
			t.Fatal(err)
		}
	}
	waitGroupHolds(ctx, t, fl, master)
	// Files 1 to 3 hold a row each (each closes past the size, file 4 is open): the
	// compressed are those with a newer closed file, 1 and 2.
	const want = 2 * rowBytes
	var got uint64
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		u := getUpstream(ctx, t, fl, "main")
		got, _ = strconv.ParseUint(u.Group.CompressedPlainBytes, 10, 64)
		if got >= want {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("30 s after the master went quiet %d bytes of closed files are compressed, want %d (files 1 and 2; current file %s): closed files wait for an fsync nothing makes\n%s",
				got, want, u.Group.CurrentFile, fl.LogTail(20))
		}
	}
	t.Logf("%d bytes of closed files compressed once the group went idle", got)
}
