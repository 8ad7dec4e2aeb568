package shard

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"log/slog"
	"testing"
	"time"
	"unsafe"

	"github.com/flotilla-relay/flotilla/internal/binlog"
	"github.com/flotilla-relay/flotilla/statemachine"
	"github.com/lni/dragonboat/v3"
	"github.com/lni/dragonboat/v3/client"
)

func newPipeline(state binlog.Position, hasFile bool, upstreamFile string) *pipeline {
	s := &Shard{log: slog.New(slog.NewTextHandler(io.Discard, nil)), m: &Manager{}}
	return &pipeline{s: s, fl: &mariadbFlavor{basePos: binlog.Position{}, state: state}, hasFile: hasFile, upstreamFile: upstreamFile,
		maxBatch: 1 << 40, maxPiece: maxPieceBytes, maxFile: servedFileLimit} // no raft here: only a batch a large item ended flushes (tests that make one give it a recorder)
}

func gtid(seq uint64) binlog.GTID { return binlog.GTID{Domain: 0, Server: 1, Seq: seq} }

// feed hands events to the pipeline as the master would send them.
func feed(t *testing.T, p *pipeline, evs ...[]byte) {
	t.Helper()
	for _, e := range evs {
		if err := p.handle(context.Background(), e); err != nil {
			t.Fatal(err)
		}
	}
}

func fakeRotate(file string) []byte {
	return binlog.NewRotate(1, 0, 0, binlog.FlagArtificial, file, 4, false)
}

func rowTxn(g binlog.GTID, rowBytes int) [][]byte {
	return [][]byte{
		binlog.NewGTIDEvent(g, 0, true),
		binlog.NewQuery(1, "db", "BEGIN", true),
		binlog.NewOpaque(binlog.AnnotateRowsEvent, 1, 20, true),
		binlog.NewOpaque(binlog.TableMapEvent, 1, 30, true),
		binlog.NewOpaque(23, 1, rowBytes, true),
		binlog.NewXID(1, g.Seq, true),
	}
}

func TestPipelineProposesWholeTransactions(t *testing.T) {
	p := newPipeline(binlog.Position{}, false, "")
	fde := binlog.NewFDE(1, "10.11.6-MariaDB-log", true)
	feed(t, p, fakeRotate("mariadb-bin.000001"), fde, binlog.NewGTIDList(1, 0, 0, binlog.Position{}, true))
	feed(t, p, rowTxn(gtid(1), 100)...)
	// A DDL group: GTID (standalone) + its statement, no XID.
	feed(t, p, binlog.NewGTIDEvent(gtid(2), binlog.GTIDStandalone, true), binlog.NewQuery(1, "db", "CREATE TABLE t (a int)", true))
	// Half a transaction: must not be proposed.
	feed(t, p, rowTxn(gtid(3), 10)[:3]...)
	if len(p.items) != 3 || p.items[0].NewFile == nil || p.items[0].NewFile.UpstreamFile != "mariadb-bin.000001" {
		t.Fatalf("want NewFile + 2 transactions, got %d items", len(p.items))
	}
	for i, want := range []uint64{1, 2} {
		tx := p.items[i+1].Txn
		if tx == nil || tx.GTID != gtid(want) || !tx.First || !tx.Last {
			t.Fatalf("item %d = %+v", i+1, tx)
		}
	}
	if st := p.fl.(*mariadbFlavor).state; p.batchTxns != 2 || st.String() != "0-1-2" {
		t.Fatalf("batch counts %d txns, state %v", p.batchTxns, st)
	}
	if p.cur == nil || p.cur.gtid != gtid(3) {
		t.Fatal("the open transaction must stay pending")
	}
}

func TestPipelineReconnectIntoSameFileAddsNoFile(t *testing.T) {
	p := newPipeline(binlog.Position{0: gtid(5)}, true, "mariadb-bin.000004")
	p.fileServerID = 1 // the current file came from this master
	fde := binlog.NewFDE(1, "10.11.6-MariaDB-log", true)
	// A checksummed fake rotate must not leak its CRC into the file name.
	rot := binlog.NewRotate(1, 0, 0, binlog.FlagArtificial, "mariadb-bin.000004", 4, true)
	feed(t, p, rot, fde)
	// The master resends a group Flotilla already holds: skipped, not proposed.
	feed(t, p, rowTxn(gtid(5), 10)...)
	feed(t, p, rowTxn(gtid(6), 10)...)
	if len(p.items) != 1 || p.items[0].Txn == nil || p.items[0].Txn.GTID != gtid(6) {
		t.Fatalf("want only transaction 6, got %d items", len(p.items))
	}
	// A real rotation does start a new file.
	feed(t, p, binlog.NewRotate(1, 0, 1000, 0, "mariadb-bin.000005", 4, true), fde)
	if last := p.items[len(p.items)-1]; last.NewFile == nil || last.NewFile.UpstreamFile != "mariadb-bin.000005" {
		t.Fatal("rotation to a new master file must start a new served file")
	}
	// A switch to another master (another server_id) whose file has the same name
	// starts a new served file too, opened with the new master's FDE.
	n := len(p.items)
	other := binlog.NewFDE(2, "10.11.6-MariaDB-log", true)
	feed(t, p, binlog.NewRotate(2, 0, 0, binlog.FlagArtificial, "mariadb-bin.000005", 4, true), other)
	if len(p.items) != n+1 || p.items[n].NewFile == nil || p.items[n].NewFile.ServerID != 2 {
		t.Fatal("a switch to another master must start a new served file")
	}
}

func TestPipelineSplitsLargeTransactions(t *testing.T) {
	p := newPipeline(binlog.Position{}, false, "")
	feed(t, p, fakeRotate("m.1"), binlog.NewFDE(1, "10.11.6-MariaDB-log", true))
	evs := rowTxn(gtid(1), 10)
	big := [][]byte{evs[0], evs[1], evs[3]}
	for i := 0; i < 6; i++ {
		big = append(big, binlog.NewOpaque(23, 1, 1<<20, true))
	}
	big = append(big, evs[5])
	feed(t, p, big...)
	var pieces []*statemachine.Txn
	total := 0
	for _, it := range p.items {
		if it.Txn != nil {
			pieces = append(pieces, it.Txn)
			total += len(it.Txn.Events)
		}
	}
	if len(pieces) != 2 || !pieces[0].First || pieces[0].Last || pieces[1].First || !pieces[1].Last {
		t.Fatalf("want a first and a last piece, got %d pieces", len(pieces))
	}
	want := 0
	for _, e := range big {
		want += len(e)
	}
	if total != want || p.batchTxns != 1 {
		t.Fatalf("pieces hold %d bytes of %d, %d txns", total, want, p.batchTxns)
	}
	// The pieces' buffers come from a pool: none may be handed out again while an
	// item holds it.
	var got []byte
	for _, pc := range pieces {
		got = append(got, pc.Events...)
	}
	if !bytes.Equal(got, bytes.Join(big, nil)) {
		t.Fatal("the pieces do not hold the transaction's bytes")
	}
}

// largeTxn is a transaction of 3 MiB in 64 KiB rows: under a piece, in one pooled
// buffer.
func largeTxn(g binlog.GTID) [][]byte {
	evs := rowTxn(g, 10)
	txn := [][]byte{evs[0], evs[1], evs[3]}
	for range 48 {
		txn = append(txn, binlog.NewOpaque(23, 1, 64<<10, true))
	}
	return append(txn, evs[5])
}

// TestPipelineLargeTransactionsTakePooledBuffers: a transaction that grows past
// pooledMin moves to one pooled buffer of a piece's size instead of doubling on (each
// doubling a fresh allocation), and keeps every byte.
func TestPipelineLargeTransactionsTakePooledBuffers(t *testing.T) {
	p := newPipeline(binlog.Position{}, false, "")
	feed(t, p, fakeRotate("m.1"), binlog.NewFDE(1, "10.11.6-MariaDB-log", true))
	txn := largeTxn(gtid(1))
	feed(t, p, txn...)
	if len(p.items) != 2 || p.items[1].Txn == nil {
		t.Fatalf("want NewFile and one transaction, got %d items", len(p.items))
	}
	ev := p.items[1].Txn.Events
	if !bytes.Equal(ev, bytes.Join(txn, nil)) {
		t.Fatal("the transaction's buffer does not hold its events")
	}
	if len(p.lent) != 1 || &p.lent[0][prefixRoom : prefixRoom+1][0] != &ev[0] {
		t.Fatalf("the buffer must be lent until the proposal (lent: %d)", len(p.lent))
	}
	if buf := p.lent[0]; cap(buf) < p.maxPiece+64<<10 || cap(buf)%poolStep != 0 {
		t.Fatalf("a 3 MiB transaction's buffer has capacity %d: want a pooled piece's (at least %d, in steps of %d)", cap(buf), p.maxPiece+64<<10, poolStep)
	}
}

// TestPipelineSmallTransactionsShareChunks: small transactions are carved one after
// the other from shared chunks, each keeping exactly its bytes, including around one
// that outgrows the chunk's room and moves out, and one held already (skipped).
func TestPipelineSmallTransactionsShareChunks(t *testing.T) {
	p := newPipeline(binlog.Position{0: gtid(3)}, false, "")
	feed(t, p, fakeRotate("m.1"), binlog.NewFDE(1, "10.11.6-MariaDB-log", true))
	var want [][]byte
	for i := range 300 {
		size := 60 + i%7*40
		if i == 100 {
			size = 200 << 10 // larger than a chunk: moves out of it
		}
		seq := uint64(i + 1) // 1 to 3 are held already: skipped
		txn := rowTxn(gtid(seq), size)
		feed(t, p, txn...)
		if seq > 3 {
			want = append(want, bytes.Join(txn, nil))
		}
	}
	var got [][]byte
	adjacent := 0
	for i, it := range p.items {
		if it.Txn == nil {
			continue
		}
		ev := it.Txn.Events
		if cap(ev) != len(ev) {
			t.Fatalf("transaction %v: capacity %d past its %d bytes: an append would overwrite the next one", it.Txn.GTID, cap(ev), len(ev))
		}
		if prev := p.items[i-1]; prev.Txn != nil && unsafe.Add(unsafe.Pointer(unsafe.SliceData(prev.Txn.Events)), len(prev.Txn.Events)) == unsafe.Pointer(&ev[0]) {
			adjacent++
		}
		got = append(got, ev)
	}
	if len(got) != len(want) {
		t.Fatalf("%d transactions proposed, want %d", len(got), len(want))
	}
	for i := range want {
		if !bytes.Equal(got[i], want[i]) {
			t.Fatalf("transaction %d does not hold its events", i)
		}
	}
	if adjacent < len(want)/2 {
		t.Fatalf("only %d of %d transactions follow the previous one in a chunk", adjacent, len(want))
	}
	// The master idles (a heartbeat between transactions): the chunk goes, and the
	// next one starts small.
	feed(t, p, binlog.NewOpaque(binlog.HeartbeatEvent, 1, 20, true))
	if p.chunk != nil {
		t.Fatal("an idle master's heartbeat left the pipeline its chunk")
	}
	feed(t, p, rowTxn(gtid(1000), 60)...)
	if cap(p.chunk) != minTxnChunk {
		t.Fatalf("the first chunk after an idle spell holds %d bytes, want %d", cap(p.chunk), minTxnChunk)
	}
}

// TestPipelinePiecesInChunksKeepTheirBytes: with pieces smaller than a chunk (as in
// tests that lower maxPiece), a piece proposed from the chunk is sealed there: the
// next transaction's bytes never overwrite it.
func TestPipelinePiecesInChunksKeepTheirBytes(t *testing.T) {
	p := newPipeline(binlog.Position{}, false, "")
	p.maxPiece = 1024
	feed(t, p, fakeRotate("m.1"), binlog.NewFDE(1, "10.11.6-MariaDB-log", true))
	var want []byte
	for i := range 20 {
		evs := rowTxn(gtid(uint64(i+1)), 10)
		txn := [][]byte{evs[0], evs[1], evs[3]}
		for range 3 {
			txn = append(txn, binlog.NewOpaque(23, 1, 600, true))
		}
		txn = append(txn, binlog.NewOpaque(23, 1, 3000, true), evs[5]) // and an event cut in parts
		feed(t, p, txn...)
		want = append(want, bytes.Join(txn, nil)...)
	}
	var got []byte
	for _, it := range p.items {
		if it.Txn != nil {
			got = append(got, it.Txn.Events...)
		}
	}
	if !bytes.Equal(got, want) {
		t.Fatal("pieces carved from a chunk lost bytes to the transactions after them")
	}
}

// FuzzPipeline: the master's stream is bytes from the network; whatever arrives, the
// pipeline returns an error or proposes items, and never panics.
func FuzzPipeline(f *testing.F) {
	f.Add(binlog.NewFDE(1, "10.11.6", true), binlog.NewGTIDEvent(gtid(1), 1, true), binlog.NewQuery(1, "d", "CREATE TABLE x(a int)", true))
	f.Add(fakeRotate("m.1"), binlog.NewXID(1, 1, true), []byte{})
	f.Add(binlog.NewOpaque(binlog.MySQLGTIDEvent, 1, 25, true), binlog.NewOpaque(binlog.MySQLTransactionPayloadEvent, 1, 9, true), binlog.NewOpaque(binlog.MySQLGTIDTaggedEvent, 1, 40, true))
	f.Fuzz(func(t *testing.T, a, b, c []byte) {
		for _, mysqlFlavored := range []bool{false, true} {
			p := newPipeline(binlog.Position{}, false, "")
			if mysqlFlavored {
				p.fl = &mysqlFlavor{baseSet: binlog.MySQLSet{}, executed: binlog.MySQLSet{}}
			}
			for _, e := range [][]byte{fakeRotate("m.1"), binlog.NewFDE(1, "10.11.6", true), a, b, c} {
				_ = p.handle(context.Background(), e)
			}
		}
	})
}

// TestPipelineCutsLargeEvents: an event larger than a piece is proposed in parts of at
// most a piece each, the transaction's pieces flagged first and last, and joined they
// are the master's bytes.
func TestPipelineCutsLargeEvents(t *testing.T) {
	p := newPipeline(binlog.Position{}, false, "")
	p.maxPiece = 64 << 10
	feed(t, p, fakeRotate("mariadb-bin.000001"), binlog.NewFDE(1, "10.11.6-MariaDB-log", true))
	txn := rowTxn(gtid(1), 300<<10)
	feed(t, p, txn...)
	var want, got []byte
	for _, ev := range txn {
		want = append(want, ev...)
	}
	pieces := p.items[1:]
	if len(pieces) < 5 {
		t.Fatalf("%d pieces for a 300 KiB event cut at 64 KiB", len(pieces))
	}
	for i, it := range pieces {
		tx := it.Txn
		if tx == nil || tx.First != (i == 0) || tx.Last != (i == len(pieces)-1) || tx.GTID != gtid(1) {
			t.Fatalf("piece %d: %+v", i, tx)
		}
		if len(tx.Events) > p.maxPiece+1024 {
			t.Fatalf("piece %d holds %d bytes", i, len(tx.Events))
		}
		got = append(got, tx.Events...)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("the pieces joined differ from the master's events")
	}
}

// TestPipelineRollsLargeServedFiles: past its size limit, a served file is closed at
// the next transaction boundary (never inside a transaction), the new one opened with
// the master's Format_description (created cleared) under the same master file.
func TestPipelineRollsLargeServedFiles(t *testing.T) {
	p := newPipeline(binlog.Position{}, false, "")
	p.maxFile = 2000
	fde := binlog.NewFDE(1, "10.11.6-MariaDB-log", true)
	binary.LittleEndian.PutUint32(fde[binlog.HeaderLen+52:], 1700000000) // created: the master just started
	binlog.SetLogPos(fde, 0, 0, true)
	feed(t, p, fakeRotate("mariadb-bin.000001"), fde)
	for seq := uint64(1); seq <= 6; seq++ {
		feed(t, p, rowTxn(gtid(seq), 1000)...)
	}
	var files, txnsSince int
	for i, it := range p.items {
		switch {
		case it.NewFile != nil:
			files++
			if it.NewFile.UpstreamFile != "mariadb-bin.000001" {
				t.Fatalf("item %d: new file under %q", i, it.NewFile.UpstreamFile)
			}
			if files > 1 {
				if txnsSince == 0 {
					t.Fatalf("item %d: a file rolled with no transaction in it", i)
				}
				if err := binlog.VerifyChecksum(it.NewFile.FDE); err != nil {
					t.Fatalf("rolled file's FDE: %v", err)
				}
				if c := binary.LittleEndian.Uint32(it.NewFile.FDE[binlog.HeaderLen+52:]); c != 0 {
					t.Fatalf("rolled file's FDE says the master started at %d: replicas would drop their temporary tables", c)
				}
			}
			txnsSince = 0
		case it.Txn != nil:
			if !it.Txn.First || !it.Txn.Last {
				t.Fatalf("item %d: a piece, not a whole transaction", i)
			}
			txnsSince++
		}
	}
	if files < 3 {
		t.Fatalf("%d files for 6 transactions of about 1.2 KB with a 2000-byte limit", files)
	}
}

// TestPipelineLargeTransactionEndsItsBatch: a transaction of loneItemBytes or more
// marks its batch to be proposed at once (the drain loop proposes it), so that its
// events are most of their raft entry; smaller ones leave the batch open for more.
func TestPipelineLargeTransactionEndsItsBatch(t *testing.T) {
	p := newPipeline(binlog.Position{0: gtid(3)}, false, "")
	feed(t, p, fakeRotate("m.1"), binlog.NewFDE(1, "10.11.6-MariaDB-log", true))
	for i := range 20 {
		feed(t, p, rowTxn(gtid(uint64(10+i)), 50<<10)...)
	}
	if p.lone {
		t.Fatal("transactions of 50 KiB ended their batch")
	}
	feed(t, p, rowTxn(gtid(40), loneItemBytes)...)
	if !p.lone {
		t.Fatal("a transaction of more than loneItemBytes left its batch open")
	}
}

// TestRoomInRaftForLoneBatches: a batch that a transaction or piece of 1 MiB or more
// ended may join more than maxInflight proposals in flight while they hold fewer
// than loneInflightBytes; other batches stay at maxInflight (they grow while they
// wait), and maxInflightBytes holds both.
func TestRoomInRaftForLoneBatches(t *testing.T) {
	p := newPipeline(binlog.Position{0: gtid(3)}, false, "")
	p.sequenced = true
	for _, c := range []struct {
		inflight, each int
		lone, room     bool
	}{
		{0, 0, false, true},
		{maxInflight - 1, 1 << 20, false, true},
		{maxInflight, 1 << 20, false, false},
		{maxInflight, 1 << 20, true, true},
		{loneInflightBytes>>20 - 1, 1 << 20, true, true},
		{loneInflightBytes >> 20, 1 << 20, true, false},
		{maxInflight, 3 << 20, true, false},
		{2, maxInflightBytes / 2, true, false},
		{3, maxInflightBytes / 2, false, false},
	} {
		p.pending = make([]inflight, c.inflight)
		p.inflightBytes = c.inflight * c.each
		p.lone = c.lone
		if got := p.roomInRaft(); got != c.room {
			t.Errorf("%d in flight of %d bytes each, lone batch %v: room %v, want %v", c.inflight, c.each, c.lone, got, c.room)
		}
	}
	p.sequenced, p.lone = false, true
	p.pending, p.inflightBytes = make([]inflight, 1), 1<<20
	if p.roomInRaft() {
		t.Error("an unsequenced pipeline put a second proposal in flight")
	}
}

// TestPipelineProposesInPlace: a batch of one large transaction is proposed from its
// own buffer, the command's prefix written in the room before its events, and the
// command is the one AppendEncoded writes; a batch of more items is encoded as
// before; and a room that does not end where the events begin is never written.
func TestPipelineProposesInPlace(t *testing.T) {
	p := newPipeline(binlog.Position{}, false, "")
	feed(t, p, fakeRotate("m.1"), binlog.NewFDE(1, "10.11.6-MariaDB-log", true))
	txn := largeTxn(gtid(1))
	encoding := func() []byte {
		return (&statemachine.Append{Epoch: p.epoch, PrevOrdinal: p.proposed, Sequenced: p.sequenced, Seq: p.seq, Items: p.items}).Encode()
	}

	feed(t, p, txn...) // after the new file's item: two items
	want := encoding()
	if cmd, inPlace := p.encode(); inPlace || !bytes.Equal(cmd, want) {
		t.Fatalf("a batch of two items: in place %v, encoding equal %v", inPlace, bytes.Equal(cmd, want))
	}

	// As if proposed: the next large transaction is a batch of its own.
	p.items, p.batchBytes, p.room = nil, 0, nil
	p.epoch, p.proposed, p.sequenced, p.seq = 3, 1, true, 1
	txn[0] = binlog.NewGTIDEvent(gtid(2), 0, true)
	feed(t, p, txn...)
	if len(p.items) != 1 {
		t.Fatalf("%d items, want one transaction", len(p.items))
	}
	want = encoding()
	ev := p.items[0].Txn.Events
	cmd, inPlace := p.encode()
	if !inPlace || !bytes.Equal(cmd, want) {
		t.Fatalf("a batch of one large transaction: in place %v, encoding equal %v", inPlace, bytes.Equal(cmd, want))
	}
	if &cmd[len(cmd)-len(ev)] != &ev[0] {
		t.Fatal("the command in place does not hold the transaction's own events")
	}

	// A part of a large event, after the previous part (proposed) in the stream's
	// buffer: only the prefix's bytes before it change.
	raw := make([]byte, 1<<20)
	for i := range raw {
		raw[i] = byte(i)
	}
	orig := bytes.Clone(raw)
	part := raw[512<<10 : 1<<20 : 1<<20]
	p.items, p.room = []statemachine.Item{{Txn: &statemachine.Txn{GTID: gtid(3), Events: part}}}, nil
	p.roomBefore(raw[:512<<10])
	want = encoding()
	cmd, inPlace = p.encode()
	if !inPlace || !bytes.Equal(cmd, want) || &cmd[len(cmd)-len(part)] != &part[0] {
		t.Fatalf("a part with room before it: in place %v, encoding equal %v", inPlace, bytes.Equal(cmd, want))
	}
	if at := 512<<10 - (len(cmd) - len(part)); !bytes.Equal(raw[:at], orig[:at]) || !bytes.Equal(part, orig[512<<10:]) {
		t.Fatal("writing the prefix changed bytes outside it")
	}

	// A room that ends elsewhere (a bug): the events are encoded, raw is not written.
	copy(raw, orig)
	p.room = nil
	p.roomBefore(raw[:256<<10])
	cmd, inPlace = p.encode()
	if inPlace || !bytes.Equal(cmd, want) || !bytes.Equal(raw, orig) {
		t.Fatalf("a room ending away from the events: in place %v, encoding equal %v, raw unchanged %v", inPlace, bytes.Equal(cmd, want), bytes.Equal(raw, orig))
	}
}

// recorder is raft for a pipeline test: it keeps a copy of each command proposed, as
// dragonboat does, and the slice it was handed; it never answers.
type recorder struct{ cmds, handed [][]byte }

func (r *recorder) Propose(_ *client.Session, cmd []byte, _ time.Duration) (*dragonboat.RequestState, error) {
	r.cmds, r.handed = append(r.cmds, bytes.Clone(cmd)), append(r.handed, cmd)
	return &dragonboat.RequestState{CompletedC: make(chan dragonboat.RequestResult, 1)}, nil
}

func (r *recorder) GetNoOPSession(uint64) *client.Session { return nil }

// TestPipelineProposesPartsInPlace: an event larger than a piece goes to raft in
// parts, each a batch of its own; the parts after the first are proposed from the
// stream's buffer, their prefixes written over the tail of the part before (proposed
// already). Every command decodes, and the events raft was handed, joined, are the
// master's transaction byte for byte.
func TestPipelineProposesPartsInPlace(t *testing.T) {
	p := newPipeline(binlog.Position{}, false, "")
	rec := &recorder{}
	p.raft = rec
	p.s.m.clusterVersion.Store(statemachine.SequencedAppendVersion)
	feed(t, p, fakeRotate("m.1"), binlog.NewFDE(1, "10.11.6-MariaDB-log", true))
	p.items, p.batchBytes, p.room = nil, 0, nil // as if the new file were proposed
	evs := rowTxn(gtid(1), 10)
	big := binlog.NewOpaque(23, 1, 3*maxPieceBytes+(1<<20), true) // three parts and a rest
	raw := bytes.Clone(big)                                       // the stream's buffer
	feed(t, p, evs[0], evs[1], evs[3], raw, evs[5])
	if len(rec.cmds) != 3 || len(p.items) != 1 || p.inPlace != 3 {
		t.Fatalf("%d proposals (%d in place) and %d items left, want three parts proposed in place and the rest with the commit", len(rec.cmds), p.inPlace, len(p.items))
	}
	var got []byte
	for i, cmd := range rec.cmds {
		kind, a, err := statemachine.DecodeCommand(cmd)
		if err != nil || kind != statemachine.KindAppend || !a.Sequenced || len(a.Items) != 1 || a.Items[0].Txn == nil {
			t.Fatalf("proposal %d: kind %d, %v: want one sequenced transaction item", i, kind, err)
		}
		got = append(got, a.Items[0].Txn.Events...)
		if i > 0 {
			// Handed from the stream's buffer: its last byte is the part's in raw.
			h := rec.handed[i]
			end := len(evs[0]) + len(evs[1]) + len(evs[3]) // where big starts in the transaction
			if at := len(got) - end; &h[len(h)-1] != &raw[at-1] {
				t.Fatalf("proposal %d was not made in place from the stream's buffer", i)
			}
		}
	}
	got = append(got, p.items[0].Txn.Events...)
	if want := bytes.Join([][]byte{evs[0], evs[1], evs[3], big, evs[5]}, nil); !bytes.Equal(got, want) {
		t.Fatal("the events proposed, joined, differ from the master's transaction")
	}
}
