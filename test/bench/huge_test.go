package bench

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/flotilla-relay/flotilla/test/flotillatest"
	"github.com/flotilla-relay/flotilla/test/mariadbtest"
)

// BenchmarkHugeTransaction is the full-size case, too slow for `make test`
// (whose TestHugeEventsAndTransactions runs the same path at a quarter of the size):
// a master with max_allowed_packet=1G writes a 200 MiB row and a 2 GiB transaction of
// 1 MiB rows; Flotilla ingests them (vs a durable raw copy of the same binlog) and
// serves them to a MariaDB replica. It reports Flotilla's peak memory against the
// transaction's size.
func BenchmarkHugeTransaction(b *testing.B) {
	mariadbtest.RequireTools(b)
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Minute)
	defer cancel()
	dir := b.TempDir()
	big := []string{mariadbtest.MaxPacketArg}
	m, err := mariadbtest.Start(ctx, filepath.Join(dir, "master"), mariadbtest.Options{ServerID: 1, LogBin: true, ExtraArgs: big})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { m.Stop() })
	if err := m.CreateReplUser(ctx, benchUser, benchPass); err != nil {
		b.Fatal(err)
	}
	logs, err := m.Query(ctx, "SHOW BINARY LOGS")
	if err != nil {
		b.Fatal(err)
	}
	firstFile := logs[len(logs)-1][0]
	const rowBytes, txnRows, txnRowLen = 200 << 20, 2048, 1 << 20
	if err := mariadbtest.CreateBlobTable(ctx, m); err != nil {
		b.Fatal(err)
	}
	if err := mariadbtest.InsertBlobRow(ctx, m, 1, rowBytes); err != nil {
		b.Fatal(err)
	}
	if err := mariadbtest.InsertBlobRows(ctx, m, 2, txnRows+1, txnRowLen); err != nil {
		b.Fatal(err)
	}
	_, _, gtid := masterTail(ctx, b, m)
	rep := &relayReport{}
	raw := rawCopy(ctx, b, m, firstFile, filepath.Join(dir, "raw"))

	n := flotillatest.NewNode(b, filepath.Join(dir, "flotilla"), 1)
	// Serve's defaults, but for the heap faulted in at start (memory_pretouch): the
	// peak memory reported below is what the transaction costs.
	n.ServeDefaults, n.Args = true, []string{"--memory-pretouch", "0"}
	n.Start(ctx)
	in := ingest(ctx, b, n, "main", m.Addr(), gtid, nil)
	ingestPeak, err := mariadbtest.Memory(n.PID(), "VmHWM")
	if err != nil {
		b.Fatal(err)
	}
	rep.add("ingest of a 200 MiB row and a 2 GiB transaction", in.mbs(), raw.mbs(), "MB/s", 0, true)

	if err := mariadbtest.ResetPeakMemory(n.PID()); err != nil {
		b.Fatal(err)
	}
	r, err := mariadbtest.Start(ctx, filepath.Join(dir, "replica"), mariadbtest.Options{ServerID: 11, ExtraArgs: big})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { r.Stop() })
	start := time.Now()
	q := fmt.Sprintf("CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT=%s, MASTER_USER='rmain', MASTER_PASSWORD='%s', MASTER_USE_GTID=slave_pos", n.MySQLPort(), benchPass)
	for _, s := range []string{q, "START SLAVE"} {
		if err := r.Exec(ctx, s); err != nil {
			b.Fatal(err)
		}
	}
	for deadline := time.Now().Add(20 * time.Minute); ; time.Sleep(200 * time.Millisecond) {
		if got, _ := r.QueryValue(ctx, "SELECT @@gtid_slave_pos"); got == gtid {
			break
		}
		if time.Now().After(deadline) {
			b.Fatal("the replica did not catch up")
		}
	}
	serve := time.Since(start)
	servePeak, err := mariadbtest.Memory(n.PID(), "VmHWM")
	if err != nil {
		b.Fatal(err)
	}
	want, err := mariadbtest.TableChecksums(ctx, m, mariadbtest.BlobDB)
	if err != nil {
		b.Fatal(err)
	}
	got, err := mariadbtest.TableChecksums(ctx, r, mariadbtest.BlobDB)
	if err != nil {
		b.Fatal(err)
	}
	if fmt.Sprint(want) != fmt.Sprint(got) {
		b.Fatalf("replica tables %v, master %v", got, want)
	}
	txn := float64(txnRows * txnRowLen)
	rep.add("peak RSS ingesting, vs the transaction", float64(ingestPeak)/(1<<20), txn/(1<<20), "MiB", 0, false)
	rep.add("peak RSS serving a replica, vs the transaction", float64(servePeak)/(1<<20), txn/(1<<20), "MiB", 0, false)
	rep.note(fmt.Sprintf("a MariaDB replica through Flotilla applied both in %.1f s; CHECKSUM TABLE equal", serve.Seconds()))
	rep.write(b, "huge")
}
