package rafttransport

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"net"
	"sync/atomic"
	"testing"
	"time"
	_ "unsafe" // go:linkname

	"github.com/flotilla-relay/flotilla/internal/crcalg"
	"github.com/flotilla-relay/flotilla/internal/directio"
	_ "github.com/lni/dragonboat/v3" // links dragonboat's TCP transport, the interop tests' peer
	"github.com/lni/dragonboat/v3/config"
	"github.com/lni/dragonboat/v3/raftio"
	pb "github.com/lni/dragonboat/v3/raftpb"

	"github.com/flotilla-relay/flotilla/internal/tlstest"
)

// dragonboatTCP is dragonboat's own TCP transport (v3.3.8), which releases before
// cluster version WireVersion run: the interop tests talk to it.
//
//go:linkname dragonboatTCP github.com/lni/dragonboat/v3/internal/transport.NewTCPTransport
func dragonboatTCP(config.NodeHostConfig, raftio.MessageHandler, raftio.ChunkHandler) raftio.ITransport

// peer is a started transport and what it received.
type peer struct {
	tr      raftio.ITransport
	addr    string
	batches chan pb.MessageBatch
	chunks  chan pb.Chunk
	// crc is the checksum memo of one of ours, as a node gives it.
	crc *crcalg.Memo
}

// tlsFiles is a node's mutual TLS (empty: none).
type tlsFiles struct{ ca, cert, key string }

func nodeConfig(addr string, tf tlsFiles) config.NodeHostConfig {
	return config.NodeHostConfig{RaftAddress: addr, MutualTLS: tf.ca != "", CAFile: tf.ca, CertFile: tf.cert, KeyFile: tf.key}
}

// freeAddr is a loopback address nothing listens on (dragonboat's transport does not
// say where it listens when given port 0).
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// startPeer starts this transport (dragonboat's if legacyImpl), writing its own
// frames if newWire.
func startPeer(t *testing.T, tf tlsFiles, newWire, legacyImpl bool) *peer {
	t.Helper()
	p := &peer{batches: make(chan pb.MessageBatch, 16), chunks: make(chan pb.Chunk, 16)}
	onBatch := func(b pb.MessageBatch) { p.batches <- b }
	onChunk := func(c pb.Chunk) bool { p.chunks <- c; return true }
	if legacyImpl {
		p.addr = freeAddr(t)
		p.tr = dragonboatTCP(nodeConfig(p.addr, tf), onBatch, onChunk)
	} else {
		nw := new(atomic.Bool)
		nw.Store(newWire)
		p.crc = crcalg.NewMemo()
		p.tr = Factory{NewWire: nw, CRC: p.crc}.Create(nodeConfig("127.0.0.1:0", tf), onBatch, onChunk)
	}
	if err := p.tr.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.tr.Stop)
	if tr, ok := p.tr.(*Transport); ok {
		p.addr = tr.Addr().String()
	}
	return p
}

// testBatch is a batch of replicate messages with large, small and empty payloads
// (a large one after a small one in the last) and a heartbeat.
func testBatch(rnd *rand.Rand) pb.MessageBatch {
	big := make([]byte, 4<<20+17)
	for i := range big {
		big[i] = byte(rnd.Uint32())
	}
	after := make([]byte, 300<<10+5)
	for i := range after {
		after[i] = byte(rnd.Uint32())
	}
	return pb.MessageBatch{DeploymentId: 7, SourceAddress: "node-2:1234", BinVer: raftio.TransportBinVersion, Requests: []pb.Message{
		{Type: pb.Replicate, ClusterId: 9, To: 1, From: 2, Term: 3, LogTerm: 3, LogIndex: 41, Commit: 40, Entries: []pb.Entry{
			{Type: pb.EncodedEntry, Term: 3, Index: 42, Cmd: big},
			{Type: pb.ApplicationEntry, Term: 3, Index: 43},
			{Type: pb.EncodedEntry, Term: 3, Index: 44, Cmd: []byte("a small one")},
		}},
		{Type: pb.Heartbeat, ClusterId: 11, To: 1, From: 2, Term: 5, Commit: 9},
		{Type: pb.Replicate, ClusterId: 12, To: 1, From: 2, Term: 1, Entries: []pb.Entry{{Type: pb.EncodedEntry, Term: 1, Index: 1, Cmd: []byte{1}}}},
		{Type: pb.Replicate, ClusterId: 13, To: 1, From: 2, Term: 1, Entries: []pb.Entry{
			{Type: pb.EncodedEntry, Term: 1, Index: 1, Cmd: []byte("small, then large")},
			{Type: pb.EncodedEntry, Term: 1, Index: 2, Cmd: after},
		}},
	}}
}

func testChunk() pb.Chunk {
	return pb.Chunk{ClusterId: 9, NodeId: 1, From: 2, ChunkId: 0, ChunkSize: 5, ChunkCount: 1, Index: 100, Term: 3, Data: []byte("chunk"), Filepath: "snapshot.gbsnap", FileSize: 5}
}

// same reports whether two batches marshal alike (nil and empty payloads are
// the same on the wire).
func same(t *testing.T, a, b pb.MessageBatch) bool {
	t.Helper()
	ab, err := a.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	bb, err := b.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return bytes.Equal(ab, bb)
}

func receive[T any](t *testing.T, c chan T, what string) T {
	t.Helper()
	select {
	case v := <-c:
		return v
	case <-time.After(10 * time.Second):
		t.Fatalf("no %s received in 10 s", what)
	}
	var zero T
	return zero
}

// exchange sends a batch and a snapshot chunk from one transport to another and
// checks both arrive whole, the chunk before the snapshot connection's Close
// returns.
func exchange(t *testing.T, from raftio.ITransport, to *peer) {
	t.Helper()
	ctx := context.Background()
	want := testBatch(rand.New(rand.NewPCG(1, 2)))
	wantCopy := testBatch(rand.New(rand.NewPCG(1, 2)))
	c, err := from.GetConnection(ctx, to.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for i := 0; i < 2; i++ { // twice: buffers are reused between frames
		if err := c.SendMessageBatch(want); err != nil {
			t.Fatal(err)
		}
		if got := receive(t, to.batches, "batch"); !same(t, got, wantCopy) {
			t.Fatalf("frame %d: the batch received differs from the one sent", i)
		}
	}
	if !same(t, want, wantCopy) {
		t.Fatal("sending changed the batch")
	}
	sc, err := from.GetSnapshotConnection(ctx, to.addr)
	if err != nil {
		t.Fatal(err)
	}
	if err := sc.SendChunk(testChunk()); err != nil {
		t.Fatal(err)
	}
	sc.Close()
	select {
	case got := <-to.chunks:
		if want := testChunk(); got.ChunkId != want.ChunkId || !bytes.Equal(got.Data, want.Data) || got.Filepath != want.Filepath {
			t.Fatalf("chunk received %+v, sent %+v", got, want)
		}
	default:
		t.Fatal("the snapshot connection closed before its chunk was handed on")
	}
}

// TestWires: batches and snapshot chunks cross between two of these transports in
// either frame, with and without TLS.
func TestWires(t *testing.T) {
	ca := tlstest.NewCA(t)
	p1, p2 := ca.Issue(t, "n1"), ca.Issue(t, "n2")
	for _, tc := range []struct {
		name     string
		newWire  bool
		tls1, t2 tlsFiles
	}{
		{"dragonboat frames", false, tlsFiles{}, tlsFiles{}},
		{"own frames", true, tlsFiles{}, tlsFiles{}},
		{"dragonboat frames, TLS", false, tlsFiles{ca.CertFile, p1.CertFile, p1.KeyFile}, tlsFiles{ca.CertFile, p2.CertFile, p2.KeyFile}},
		{"own frames, TLS", true, tlsFiles{ca.CertFile, p1.CertFile, p1.KeyFile}, tlsFiles{ca.CertFile, p2.CertFile, p2.KeyFile}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, b := startPeer(t, tc.tls1, tc.newWire, false), startPeer(t, tc.t2, tc.newWire, false)
			exchange(t, a.tr, b)
			exchange(t, b.tr, a)
		})
	}
}

// TestOwnFramesAlignLargePayloads: this transport's frames deliver every payload of
// directio.InPlaceMin or more in a block-aligned buffer of its own, also one that
// follows a small payload in its message, so that the raft log writes it to the disk
// from there (raftlog's putInPlace) rather than copy it. (Dragonboat's frames are
// read by code that is not this package's.)
func TestOwnFramesAlignLargePayloads(t *testing.T) {
	from, to := startPeer(t, tlsFiles{}, true, false), startPeer(t, tlsFiles{}, true, false)
	c, err := from.tr.GetConnection(context.Background(), to.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.SendMessageBatch(testBatch(rand.New(rand.NewPCG(1, 2)))); err != nil {
		t.Fatal(err)
	}
	got := receive(t, to.batches, "batch")
	if !same(t, got, testBatch(rand.New(rand.NewPCG(1, 2)))) {
		t.Fatal("the batch received differs from the one sent")
	}
	large := 0
	for _, m := range got.Requests {
		for _, e := range m.Entries {
			if len(e.Cmd) >= directio.InPlaceMin {
				large++
				if !directio.IsAligned(e.Cmd) {
					t.Fatalf("a payload of %d bytes arrived in a buffer not block-aligned: the raft log copies it to write it", len(e.Cmd))
				}
			}
		}
	}
	if large != 2 {
		t.Fatalf("%d large payloads received, want 2", large)
	}
}

// TestDragonboatInterop: this transport, before the cluster version allows its own
// frames, and dragonboat's TCP transport (what older releases run) exchange batches
// and snapshot chunks both ways, with and without TLS; this one reads dragonboat's
// frames at any time.
func TestDragonboatInterop(t *testing.T) {
	ca := tlstest.NewCA(t)
	p1, p2 := ca.Issue(t, "n1"), ca.Issue(t, "n2")
	for _, tc := range []struct {
		name     string
		tls1, t2 tlsFiles
	}{
		{"plain", tlsFiles{}, tlsFiles{}},
		{"TLS", tlsFiles{ca.CertFile, p1.CertFile, p1.KeyFile}, tlsFiles{ca.CertFile, p2.CertFile, p2.KeyFile}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			old := startPeer(t, tc.tls1, false, true)
			ours, upgraded := startPeer(t, tc.t2, false, false), startPeer(t, tc.t2, true, false)
			exchange(t, old.tr, ours)     // dragonboat's frames read
			exchange(t, ours.tr, old)     // dragonboat's frames written, read by dragonboat
			exchange(t, old.tr, upgraded) // read also once writing its own
		})
	}
}

// TestBadFramesCloseTheirConnectionOnly: a frame with a bad magic, header, length or
// CRC closes its connection, reaches nothing, and leaves the transport serving
// others.
func TestBadFramesCloseTheirConnectionOnly(t *testing.T) {
	p := startPeer(t, tlsFiles{}, true, false)
	var enc encoder
	good, err := enc.batch(testBatch(rand.New(rand.NewPCG(3, 4))), nil)
	if err != nil {
		t.Fatal(err)
	}
	frame := bytes.Join(good, nil)
	lgood, err := enc.legacy(raftMethod, &pb.MessageBatch{Requests: []pb.Message{{Type: pb.Heartbeat, ClusterId: 1, To: 1, From: 2}}}, false)
	if err != nil {
		t.Fatal(err)
	}
	legacy := bytes.Join(lgood, nil)
	flip := func(b []byte, at int) []byte {
		c := bytes.Clone(b)
		c[at] ^= 0x40
		return c
	}
	huge := bytes.Clone(frame[:2+frameHeaderLen])
	huge[3], huge[4] = 0x7f, 0xff // a 2 GiB skeleton
	for _, tc := range []struct {
		name string
		data []byte
	}{
		{"bad magic", []byte("GET / HTTP/1.1\r\n\r\n")},
		{"payload byte flipped", flip(frame, len(frame)-100)},
		{"skeleton byte flipped", flip(frame, 2+frameHeaderLen+3)},
		{"length over the bound", huge},
		{"unknown kind", flip(frame, 2)},
		{"dragonboat header flipped", flip(legacy, 5)},
		{"dragonboat payload flipped", flip(legacy, len(legacy)-1)},
	} {
		c, err := net.Dial("tcp", p.addr)
		if err != nil {
			t.Fatal(err)
		}
		c.Write(tc.data)
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		// Closed with unread data, the connection may be reset rather than ended.
		var ne net.Error
		if _, err := c.Read(make([]byte, 1)); err == nil || errors.As(err, &ne) && ne.Timeout() {
			t.Fatalf("%s: the connection was not closed (read: %v)", tc.name, err)
		}
		c.Close()
		select {
		case <-p.batches:
			t.Fatalf("%s: a bad frame reached dragonboat", tc.name)
		default:
		}
	}
	other := startPeer(t, tlsFiles{}, true, false)
	exchange(t, other.tr, p)
}

// TestFramesShareTheNodesChecksums: a sender combines a frame's CRC from the
// checksums its node's memo holds (the raft log took them) instead of taking them
// again, and a receiver leaves each large payload's checksum in its memo for its raft
// log. Were a memo ever wrong (a payload changed after its checksum was taken, which
// the raft log's invariants forbid), the frame fails its check at the receiver
// rather than deliver the changed bytes.
func TestFramesShareTheNodesChecksums(t *testing.T) {
	from, to := startPeer(t, tlsFiles{}, true, false), startPeer(t, tlsFiles{}, true, false)
	b := testBatch(rand.New(rand.NewPCG(1, 2)))
	big := b.Requests[0].Entries[0].Cmd
	want := crcalg.Castagnoli().Checksum(big)
	if got := from.crc.Checksum(big); got != want { // as the raft log does
		t.Fatalf("memo %08x, want %08x", got, want)
	}
	c, err := from.tr.GetConnection(context.Background(), to.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.SendMessageBatch(b); err != nil {
		t.Fatal(err)
	}
	got := receive(t, to.batches, "batch")
	if !same(t, got, testBatch(rand.New(rand.NewPCG(1, 2)))) {
		t.Fatal("the batch received differs from the one sent")
	}
	// The batch's other large payload (after) was taken by the frame, on either side.
	if hits, misses := from.crc.Stats(); hits != 1 || misses != 2 {
		t.Fatalf("sender's memo: %d hits, %d misses; want the frame to use the raft log's checksum", hits, misses)
	}
	if crc := to.crc.Checksum(got.Requests[0].Entries[0].Cmd); crc != want {
		t.Fatalf("receiver's memo %08x, want %08x", crc, want)
	}
	if hits, misses := to.crc.Stats(); hits != 1 || misses != 0 {
		t.Fatalf("receiver's memo: %d hits, %d misses; want the payload's checksum taken once, by the frame's check as it was read", hits, misses)
	}
	// The frame is the one a release without the memo writes and checks.
	var enc encoder
	withMemo, err := enc.batch(b, from.crc)
	if err != nil {
		t.Fatal(err)
	}
	frame := bytes.Join(withMemo, nil)
	plain, err := enc.batch(b, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(frame, bytes.Join(plain, nil)) {
		t.Fatal("a frame made with the memo differs from one made without")
	}
	big[12345] ^= 1 // what the memo must never see; its checksum is stale now
	stale, err := enc.batch(b, from.crc)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := net.Dial("tcp", to.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	raw.Write(bytes.Join(stale, nil))
	raw.SetReadDeadline(time.Now().Add(10 * time.Second))
	var ne net.Error
	if _, err := raw.Read(make([]byte, 1)); err == nil || errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("the connection of a frame with a stale checksum was not closed (read: %v)", err)
	}
	select {
	case <-to.batches:
		t.Fatal("a frame whose payload no longer matches its memoized checksum was handed on")
	default:
	}
}

// FuzzFrames feeds arbitrary bytes to a transport's reader: it must never panic,
// and whatever it hands on must be a batch or chunk it could have been sent.
func FuzzFrames(f *testing.F) {
	var enc encoder
	for _, b := range []pb.MessageBatch{testBatch(rand.New(rand.NewPCG(5, 6))), {Requests: []pb.Message{{Type: pb.Heartbeat, ClusterId: 1}}}} {
		own, err := enc.batch(b, nil)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(bytes.Join(own, nil))
		old, err := enc.legacy(raftMethod, &b, false)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(bytes.Join(old, nil))
	}
	ch := testChunk()
	own, _ := enc.chunk(&ch)
	f.Add(bytes.Join(own, nil))
	f.Add(poison[:])
	f.Fuzz(func(t *testing.T, data []byte) {
		tr := Factory{CRC: crcalg.NewMemo()}.Create(nodeConfig("127.0.0.1:0", tlsFiles{}), func(b pb.MessageBatch) {
			if _, err := b.Marshal(); err != nil {
				t.Fatalf("a batch handed on does not marshal: %v", err)
			}
		}, func(pb.Chunk) bool { return true }).(*Transport)
		a, b := net.Pipe()
		done := make(chan struct{})
		go func() {
			defer close(done)
			tr.serve(a)
			a.Close()
		}()
		b.SetWriteDeadline(time.Now().Add(time.Second))
		b.Write(data)
		b.Close()
		<-done
	})
}
