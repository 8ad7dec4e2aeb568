package shard

import (
	"context"
	"testing"

	"github.com/flotilla-relay/flotilla/internal/binlog"
)

// BenchmarkPipelineSmallTransactions: the syncer's CPU per small transaction
// (GTID, BEGIN, Annotate, Table_map, a 60-byte row, XID), without raft or a master:
// what bounds the small-transactions figure of `make bench` on a busy machine.
// go test -run '^$' -bench PipelineSmallTransactions ./shard/
func BenchmarkPipelineSmallTransactions(b *testing.B) {
	p := newPipeline(binlog.Position{}, false, "")
	ctx := context.Background()
	for _, ev := range [][]byte{fakeRotate("m.1"), binlog.NewFDE(1, "10.11.6-MariaDB-log", true)} {
		if err := p.handle(ctx, ev); err != nil {
			b.Fatal(err)
		}
	}
	body := rowTxn(gtid(1), 60)[1:]
	gtids := make([][]byte, 1000)
	for i := range gtids {
		gtids[i] = binlog.NewGTIDEvent(gtid(uint64(i+1)), 0, true)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if i%len(gtids) == 0 {
			// A new batch: as if proposed, and the GTIDs start over.
			p.items, p.batchBytes, p.batchTxns = p.items[:0], 0, 0
			p.fl = &mariadbFlavor{state: binlog.Position{}}
		}
		if err := p.handle(ctx, gtids[i%len(gtids)]); err != nil {
			b.Fatal(err)
		}
		for _, ev := range body {
			if err := p.handle(ctx, ev); err != nil {
				b.Fatal(err)
			}
		}
	}
}
