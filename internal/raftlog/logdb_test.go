package raftlog

import (
	"bytes"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/flotilla-relay/flotilla/internal/crcalg"
	"github.com/flotilla-relay/flotilla/internal/directio"
	"github.com/lni/dragonboat/v3/config"
	"github.com/lni/dragonboat/v3/raftio"
	pb "github.com/lni/dragonboat/v3/raftpb"
	gvfs "github.com/lni/goutils/vfs"
)

// Test sizes: payloads of 1 KiB and more leave the LSM, into files of 64 KiB.
const (
	testMinPayload = 1 << 10
	testFileSize   = 64 << 10
	testDir        = "/node/raft"
)

func openTestLog(t testing.TB, fs gvfs.FS) *LogDB {
	t.Helper()
	return openTestLogAt(t, fs, testDir)
}

// openTestLogAt opens a test LogDB in dir of fs.
func openTestLogAt(t testing.TB, fs gvfs.FS, testDir string) *LogDB {
	t.Helper()
	if err := fs.MkdirAll(testDir, 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := config.NodeHostConfig{Expert: config.ExpertConfig{LogDB: config.GetSmallMemLogDBConfig(), FS: fs}}
	cfg.Expert.Engine = config.GetDefaultEngineConfig()
	inner, err := newDefaultLogDB(cfg, func(config.LogDBInfo) {}, []string{testDir}, []string{testDir}, fs)
	if err != nil {
		t.Fatal(err)
	}
	// The node host's directories are durable before its log is used (dragonboat
	// syncs them as it makes them; its LogDB's shard directories are made here).
	names, err := fs.List(testDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range append([]string{"/", fs.PathDir(testDir), testDir}, names...) {
		if d[0] != '/' {
			d = fs.PathJoin(testDir, d)
		}
		if err := syncDir(fs, d); err != nil {
			t.Fatal(err)
		}
	}
	on := new(atomic.Bool)
	on.Store(true)
	l, err := wrap(inner, fs, fs.PathJoin(testDir, "payloads"), testMinPayload, testFileSize, on)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// entries makes n entries from index first on: a mix of small and large payloads, of
// both types raft proposes with.
func entries(rnd *rand.Rand, first uint64, n int) []pb.Entry {
	var out []pb.Entry
	for i := 0; i < n; i++ {
		size := 10 + rnd.IntN(200)
		if rnd.IntN(3) > 0 {
			size = testMinPayload + rnd.IntN(20<<10)
		}
		cmd := make([]byte, size)
		for j := range cmd {
			cmd[j] = byte(rnd.Uint32())
		}
		typ := pb.EncodedEntry
		if i%4 == 3 {
			typ = pb.ApplicationEntry
		}
		out = append(out, pb.Entry{Term: 1, Index: first + uint64(i), Type: typ, Cmd: cmd, ClientID: uint64(i), SeriesID: 7})
	}
	return out
}

func clone(ents []pb.Entry) []pb.Entry {
	out := append([]pb.Entry(nil), ents...)
	for i := range out {
		out[i].Cmd = append([]byte(nil), out[i].Cmd...)
	}
	return out
}

func save(t testing.TB, l raftio.ILogDB, cluster uint64, ents []pb.Entry) {
	t.Helper()
	last := ents[len(ents)-1].Index
	u := pb.Update{ClusterID: cluster, NodeID: 1, State: pb.State{Term: 1, Commit: last}, EntriesToSave: ents}
	// dragonboat saves a group from its step worker, cluster % ExecShards.
	if err := l.SaveRaftState([]pb.Update{u}, cluster%config.GetDefaultEngineConfig().ExecShards); err != nil {
		t.Fatal(err)
	}
}

func readAll(t *testing.T, l raftio.ILogDB, cluster, low, high uint64) []pb.Entry {
	t.Helper()
	got, _, err := l.IterateEntries(nil, 0, cluster, 1, low, high, math.MaxUint64)
	if err != nil {
		t.Fatal(err)
	}
	return got
}

func sameEntries(t *testing.T, what string, got, want []pb.Entry) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d entries, want %d", what, len(got), len(want))
	}
	for i := range want {
		g, w := got[i], want[i]
		if g.Index != w.Index || g.Term != w.Term || g.Type != w.Type || g.ClientID != w.ClientID || g.SeriesID != w.SeriesID || !bytes.Equal(g.Cmd, w.Cmd) {
			t.Fatalf("%s: entry %d is index %d type %d (%d bytes), want index %d type %d (%d bytes)", what, i, g.Index, g.Type, len(g.Cmd), w.Index, w.Type, len(w.Cmd))
		}
	}
}

// TestLargePayloadsLeaveTheLSM: large entries reach the inner LogDB as references
// and come back whole, of their own type; small ones are stored as they were; the
// entries handed to SaveRaftState are not modified; maxSize cuts where dragonboat's
// LogDB cuts; a reopened log reads the same and appends to a new file.
func TestLargePayloadsLeaveTheLSM(t *testing.T) {
	fs := gvfs.NewMem()
	rnd := rand.New(rand.NewPCG(1, 2))
	l := openTestLog(t, fs)
	var want []pb.Entry
	for first := uint64(1); first < 200; first += 40 {
		ents := entries(rnd, first, 40)
		before := clone(ents)
		save(t, l, 5, ents)
		sameEntries(t, "entries after SaveRaftState", ents, before)
		want = append(want, before...)
	}
	other := entries(rnd, 1, 10)
	save(t, l, 6, clone(other))
	sameEntries(t, "group 5", readAll(t, l, 5, 1, 201), want)
	sameEntries(t, "group 6", readAll(t, l, 6, 1, 11), other)

	inner := readAll(t, l.ILogDB, 5, 1, 201)
	var refs int
	for i, e := range inner {
		switch {
		case len(want[i].Cmd) >= testMinPayload:
			if e.Type != refEntry || len(e.Cmd) != refLen {
				t.Fatalf("entry %d of %d bytes is in the LSM as type %d, %d bytes: not a reference", e.Index, len(want[i].Cmd), e.Type, len(e.Cmd))
			}
			refs++
		case e.Type != want[i].Type || !bytes.Equal(e.Cmd, want[i].Cmd):
			t.Fatalf("small entry %d was changed in the LSM", e.Index)
		}
	}
	if refs == 0 || refs == len(want) {
		t.Fatalf("%d of %d entries are references: the test needs both kinds", refs, len(want))
	}

	// maxSize: the entry that passes it is the last one returned.
	for _, limit := range []uint64{0, 1, uint64(want[0].SizeUpperLimit()), uint64(want[0].SizeUpperLimit() + want[1].SizeUpperLimit() + 1), 100 << 10} {
		got, size, err := l.IterateEntries(nil, 0, 5, 1, 1, 201, limit)
		if err != nil {
			t.Fatal(err)
		}
		n, total := 0, uint64(0)
		for n < len(want) {
			total += uint64(want[n].SizeUpperLimit())
			n++
			if total > limit {
				break
			}
		}
		if len(got) != n || size != total {
			t.Fatalf("maxSize %d: %d entries (%d bytes), want %d (%d bytes)", limit, len(got), size, n, total)
		}
		sameEntries(t, "entries under maxSize", got, want[:n])
	}

	files := func() []string {
		names, err := fs.List(fs.PathJoin(testDir, "payloads", "5-1"))
		if err != nil {
			t.Fatal(err)
		}
		return names
	}
	before := len(files())
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	l = openTestLog(t, fs)
	defer l.Close()
	sameEntries(t, "group 5 reopened", readAll(t, l, 5, 1, 201), want)
	more := entries(rnd, 201, 5)
	more[0].Cmd = make([]byte, testMinPayload)
	save(t, l, 5, clone(more))
	if after := len(files()); after != before+1 {
		t.Fatalf("%d payload files after a reopen and an append, %d before: the append did not start a new file", after, before)
	}
	sameEntries(t, "group 5 appended after reopening", readAll(t, l, 5, 1, 206), append(want, more...))
}

// TestRemoveEntriesToRemovesFiles: a payload file goes once its group's log is cut
// past all it holds (also after a restart, from its record headers), never before;
// RemoveNodeData takes the group's directory.
func TestRemoveEntriesToRemovesFiles(t *testing.T) {
	fs := gvfs.NewMem()
	rnd := rand.New(rand.NewPCG(3, 4))
	l := openTestLog(t, fs)
	dir := fs.PathJoin(testDir, "payloads", "5-1")
	var want []pb.Entry
	for first := uint64(1); first <= 300; first += 30 {
		ents := entries(rnd, first, 30)
		want = append(want, clone(ents)...)
		save(t, l, 5, ents)
	}
	count := func() int {
		names, _ := fs.List(dir)
		return len(names)
	}
	all := count()
	if all < 10 {
		t.Fatalf("%d payload files: the test needs many", all)
	}
	if err := l.RemoveEntriesTo(5, 1, 150); err != nil {
		t.Fatal(err)
	}
	half := count()
	if half >= all || half <= 1 {
		t.Fatalf("%d payload files of %d left after cutting half the log", half, all)
	}
	sameEntries(t, "the entries above the cut", readAll(t, l, 5, 151, 301), want[150:])

	l.Close()
	l = openTestLog(t, fs)
	defer l.Close()
	sameEntries(t, "the entries above the cut, reopened", readAll(t, l, 5, 151, 301), want[150:])
	if err := l.RemoveEntriesTo(5, 1, 299); err != nil {
		t.Fatal(err)
	}
	if n := count(); n != 1 {
		t.Fatalf("%d payload files left after cutting all but the last entry, want the last one's", n)
	}
	sameEntries(t, "the last entry", readAll(t, l, 5, 300, 301), want[299:])
	if err := l.RemoveNodeData(5, 1); err != nil {
		t.Fatal(err)
	}
	if _, err := fs.Stat(dir); err == nil {
		t.Fatalf("%s is still there after RemoveNodeData", dir)
	}
}

// TestPowerCutKeepsSavedPayloads runs the log on a filesystem that keeps only what
// was synced, cutting the power after random saves, sometimes with a payload written
// after the last save (a save that did not finish): every entry SaveRaftState
// returned for reads back whole after each cut, and the log takes appends after it.
// Drop the payload sync in SaveRaftState and it fails (the LSM keeps references to
// bytes the cut lost).
func TestPowerCutKeepsSavedPayloads(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rnd := rand.New(rand.NewPCG(seed, 5))
	fs := gvfs.NewStrictMem()
	var want []pb.Entry
	var torn int
	for round := 0; round < 12; round++ {
		l := openTestLog(t, fs)
		if len(want) > 0 {
			sameEntries(t, "after the power cut", readAll(t, l, 5, 1, uint64(len(want))+1), want)
		}
		for i := rnd.IntN(4); i >= 0; i-- {
			ents := entries(rnd, uint64(len(want))+1, 1+rnd.IntN(8))
			want = append(want, clone(ents)...)
			save(t, l, 5, ents)
		}
		if rnd.IntN(2) == 0 {
			writeUnsaved(t, l, uint64(len(want))+1)
			torn++
		}
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		fs.ResetToSyncedState()
	}
	l := openTestLog(t, fs)
	defer l.Close()
	sameEntries(t, "after the last power cut", readAll(t, l, 5, 1, uint64(len(want))+1), want)
	if torn == 0 {
		t.Fatal("no cut caught an unfinished save: the test checked less than it claims")
	}
}

// writeUnsaved writes a payload of the entry at index to group 5's file without
// syncing it or saving its reference: a save a power cut interrupts, which may keep
// any part of it.
func writeUnsaved(t *testing.T, l *LogDB, index uint64) {
	t.Helper()
	g, err := l.group(5, 1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := g.append(index, make([]byte, 3*testMinPayload)); err != nil {
		t.Fatal(err)
	}
	g.mu.Lock()
	err = g.finish(g.cur)
	g.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
}

// TestCorruptPayloadIsAnError: a payload whose bytes changed on disk is an error
// naming its file, never returned as the entry.
func TestCorruptPayloadIsAnError(t *testing.T) {
	fs := gvfs.NewMem()
	l := openTestLog(t, fs)
	defer l.Close()
	ents := []pb.Entry{{Term: 1, Index: 1, Type: pb.EncodedEntry, Cmd: bytes.Repeat([]byte{7}, 2*testMinPayload)}}
	save(t, l, 5, ents)
	path := fs.PathJoin(testDir, "payloads", "5-1", "0000000000000001"+fileSuffix)
	f, err := fs.OpenForAppend(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte{8}, recordHeaderLen+100); err != nil {
		t.Fatal(err)
	}
	f.Close()
	_, _, err = l.IterateEntries(nil, 0, 5, 1, 1, 2, math.MaxUint64)
	if err == nil || !strings.Contains(err.Error(), "corrupt") || !strings.Contains(err.Error(), path) {
		t.Fatalf("reading a damaged payload: %v, want an error naming %s as corrupt", err, path)
	}
}

// TestPayloadChecksumsComeFromTheMemo: a payload's CRC32C comes from the node's
// memo when its transport took it already, and one read back is left there for the
// transport; a memo that were wrong (the payload changed after its checksum was
// taken, which the package's invariants forbid) leaves a record that reads as
// corrupt, not one that passes its check.
func TestPayloadChecksumsComeFromTheMemo(t *testing.T) {
	fs := gvfs.NewMem()
	l := openTestLog(t, fs)
	defer l.Close()
	memo := crcalg.NewMemo()
	l.crc = memo
	cmd := bytes.Repeat([]byte{7, 1, 9}, crcalg.MemoMin)
	memo.Checksum(cmd) // as the transport does, sending it
	save(t, l, 5, []pb.Entry{{Term: 1, Index: 1, Type: pb.EncodedEntry, Cmd: cmd}})
	if hits, misses := memo.Stats(); hits != 1 || misses != 1 {
		t.Fatalf("memo: %d hits, %d misses; want the save to use the transport's checksum", hits, misses)
	}
	got := readAll(t, l, 5, 1, 2)
	sameEntries(t, "read back", got, []pb.Entry{{Term: 1, Index: 1, Type: pb.EncodedEntry, Cmd: cmd}})
	if crc, want := memo.Checksum(got[0].Cmd), crcalg.Castagnoli().Checksum(cmd); crc != want {
		t.Fatalf("the memo holds %08x for the payload read back, want %08x", crc, want)
	}
	if hits, misses := memo.Stats(); hits != 2 || misses != 1 {
		t.Fatalf("memo: %d hits, %d misses; want the checksum of the payload read back remembered", hits, misses)
	}

	wrong := bytes.Repeat([]byte{3}, crcalg.MemoMin)
	memo.Remember(wrong, crcalg.Castagnoli().Checksum(wrong)^1)
	save(t, l, 5, []pb.Entry{{Term: 1, Index: 2, Type: pb.EncodedEntry, Cmd: wrong}})
	if _, _, err := l.IterateEntries(nil, 0, 5, 1, 2, 3, math.MaxUint64); err == nil || !strings.Contains(err.Error(), "corrupt") {
		t.Fatalf("reading a payload saved with a wrong checksum: %v, want it reported corrupt", err)
	}
}

// TestStateMachinesCommandIsRemembered: the memo learns the checksum of what the state
// machine is handed of a large encoded entry (its payload past dragonboat's header
// byte, 0 when uncompressed) when the entry is saved and when it is read back; not
// for another header byte (a compressed entry, decoded into a new slice) nor for an
// application entry (handed whole).
func TestStateMachinesCommandIsRemembered(t *testing.T) {
	fs := gvfs.NewMem()
	l := openTestLog(t, fs)
	defer l.Close()
	memo := crcalg.NewMemo()
	l.crc = memo
	cmd := append([]byte{0}, bytes.Repeat([]byte{7, 1, 9}, crcalg.MemoMin)...)
	other := append([]byte{2}, bytes.Repeat([]byte{5}, crcalg.MemoMin)...)
	plain := append([]byte{0}, bytes.Repeat([]byte{6}, crcalg.MemoMin)...) // handed whole: not encoded
	save(t, l, 5, []pb.Entry{{Term: 1, Index: 1, Type: pb.EncodedEntry, Cmd: cmd}, {Term: 1, Index: 2, Type: pb.EncodedEntry, Cmd: other},
		{Term: 1, Index: 3, Type: pb.ApplicationEntry, Cmd: plain}})
	known := func(what string, b []byte) {
		t.Helper()
		crc, ok := memo.Known(b)
		if want := crcalg.Castagnoli().Checksum(b); !ok || crc != want {
			t.Fatalf("%s: the memo holds %08x (known %v), want %08x", what, crc, ok, want)
		}
	}
	known("saved", cmd[1:])
	if _, ok := memo.Known(other[1:]); ok {
		t.Fatal("the memo knows the command of an entry whose header byte is not 0")
	}
	if _, ok := memo.Known(plain[1:]); ok {
		t.Fatal("the memo knows a part of an application entry, which the state machine is handed whole")
	}
	got := readAll(t, l, 5, 1, 3)
	known("read back", got[0].Cmd[1:])
	if _, ok := memo.Known(got[1].Cmd[1:]); ok {
		t.Fatal("the memo knows the command of an entry read back whose header byte is not 0")
	}
}

// TestPayloadFilesWaitForTheirVersion: until On is set (the cluster version that
// needs a release able to read them is recorded), every entry is saved whole, as an
// older release saves and reads it; after, large ones become references, and a log
// holding both kinds reads back whole.
func TestPayloadFilesWaitForTheirVersion(t *testing.T) {
	fs := gvfs.NewMem()
	rnd := rand.New(rand.NewPCG(7, 8))
	l := openTestLog(t, fs)
	defer l.Close()
	l.on = new(atomic.Bool)
	before := entries(rnd, 1, 30)
	save(t, l, 5, clone(before))
	for _, e := range readAll(t, l.ILogDB, 5, 1, 31) {
		if e.Type == refEntry {
			t.Fatalf("entry %d became a reference before the version allowed it", e.Index)
		}
	}
	if names, _ := fs.List(fs.PathJoin(testDir, "payloads", "5-1")); len(names) != 0 {
		t.Fatalf("payload files %v before the version allowed them", names)
	}
	l.on.Store(true)
	after := entries(rnd, 31, 30)
	save(t, l, 5, clone(after))
	refs := 0
	for _, e := range readAll(t, l.ILogDB, 5, 31, 61) {
		if e.Type == refEntry {
			refs++
		}
	}
	if refs == 0 {
		t.Fatal("no reference once the version allowed them")
	}
	sameEntries(t, "a log of both kinds", readAll(t, l, 5, 1, 61), append(before, after...))
}

// TestCutIntoTheCurrentFileRollsIt: once the log is cut into the file being appended
// to, the next payload starts a new file, so the old one goes at the next cut past
// it instead of lingering (with mostly cut entries) until it fills.
func TestCutIntoTheCurrentFileRollsIt(t *testing.T) {
	fs := gvfs.NewMem()
	rnd := rand.New(rand.NewPCG(9, 10))
	l := openTestLog(t, fs)
	defer l.Close()
	l.fileSize = 1 << 30 // one file would take everything
	big := func(first uint64, n int) []pb.Entry {
		ents := entries(rnd, first, n)
		for i := range ents {
			ents[i].Cmd = make([]byte, testMinPayload)
		}
		return ents
	}
	dir := fs.PathJoin(testDir, "payloads", "5-1")
	count := func() int {
		names, _ := fs.List(dir)
		return len(names)
	}
	save(t, l, 5, big(1, 10))
	if err := l.RemoveEntriesTo(5, 1, 5); err != nil {
		t.Fatal(err)
	}
	save(t, l, 5, big(11, 2))
	if n := count(); n != 2 {
		t.Fatalf("%d payload files after a cut into the first and two more payloads, want 2", n)
	}
	if err := l.RemoveEntriesTo(5, 1, 10); err != nil {
		t.Fatal(err)
	}
	if n := count(); n != 1 {
		t.Fatalf("%d payload files after the cut passed the first file, want 1", n)
	}
	got := readAll(t, l, 5, 11, 13)
	if len(got) != 2 || got[0].Index != 11 {
		t.Fatalf("entries above the cut: %d", len(got))
	}
}

// TestOrphanPayloadsRemovedAtOpen: a replica whose inner log went (a crash between
// RemoveNodeData's two steps) has its payload directory removed when the log opens
// again; a replica with a log keeps its own, and a directory of another shape is left.
func TestOrphanPayloadsRemovedAtOpen(t *testing.T) {
	fs := gvfs.NewMem()
	rnd := rand.New(rand.NewPCG(5, 6))
	l := openTestLog(t, fs)
	keep, gone := entries(rnd, 1, 20), entries(rnd, 1, 20)
	want := clone(keep)
	save(t, l, 5, keep)
	save(t, l, 6, gone)
	// The inner log's half of RemoveNodeData only: the crash comes before the rest.
	if err := l.ILogDB.RemoveNodeData(6, 1); err != nil {
		t.Fatal(err)
	}
	other := fs.PathJoin(testDir, "payloads", "not-a-group")
	if err := fs.MkdirAll(other, 0o755); err != nil {
		t.Fatal(err)
	}
	l.Close()
	l = openTestLog(t, fs)
	defer l.Close()
	if _, err := fs.Stat(fs.PathJoin(testDir, "payloads", "6-1")); err == nil {
		t.Fatal("the payloads of a replica whose log was removed are still there")
	}
	for _, dir := range []string{fs.PathJoin(testDir, "payloads", "5-1"), other} {
		if _, err := fs.Stat(dir); err != nil {
			t.Fatalf("%s was removed: %v", dir, err)
		}
	}
	sameEntries(t, "the kept replica", readAll(t, l, 5, 1, 21), want)
}

// TestGroupsOpenConcurrently: after a restart, many groups open their payload files
// at once (each scans its files outside the LogDB's lock) and each reads its own.
func TestGroupsOpenConcurrently(t *testing.T) {
	fs := gvfs.NewMem()
	rnd := rand.New(rand.NewPCG(7, 8))
	l := openTestLog(t, fs)
	const groups = 8
	want := map[uint64][]pb.Entry{}
	for c := uint64(1); c <= groups; c++ {
		ents := entries(rnd, 1, 20)
		want[c] = clone(ents)
		save(t, l, c, ents)
	}
	l.Close()
	l = openTestLog(t, fs)
	defer l.Close()
	var wg sync.WaitGroup
	errs := make(chan error, 2*groups)
	for c := uint64(1); c <= groups; c++ {
		for range 2 { // two readers of each group race to open it
			wg.Add(1)
			go func() {
				defer wg.Done()
				got, _, err := l.IterateEntries(nil, 0, c, 1, 1, 21, math.MaxUint64)
				if err == nil && (len(got) != len(want[c]) || !bytes.Equal(got[19].Cmd, want[c][19].Cmd)) {
					err = fmt.Errorf("group %d read back %d entries, or the last one differs", c, len(got))
				}
				if err != nil {
					errs <- err
				}
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// TestDirectIOPayloads: on a real filesystem, payload files are written with direct
// I/O, which takes only whole blocks at block offsets: saves of every size (and
// several per file, and files rolled mid-save) must write such blocks, and read back,
// before and after a reopen, exactly what was saved, with every file whole to a scan.
// Large block-aligned payloads are written from their own memory after a pad (the
// test counts them), large misaligned ones through the stage.
func TestDirectIOPayloads(t *testing.T) {
	fs := gvfs.Default
	dir := fs.PathJoin(t.TempDir(), "raft")
	rnd := rand.New(rand.NewPCG(7, 8))
	l := openTestLogAt(t, fs, dir)
	l.direct = true
	var want []pb.Entry
	first := uint64(1)
	for first <= 400 {
		n := 1 + rnd.IntN(12)
		ents := entries(rnd, first, n)
		if first == 1 {
			ents[0].Cmd = make([]byte, stageSize+12345) // more than a stage
		}
		if k := rnd.IntN(3); k < 2 {
			// A large payload, block-aligned (written in place) or not.
			size := directio.InPlaceMin + rnd.IntN(3*blockSize)
			cmd := directio.Aligned(size + k)[k:]
			for j := range cmd {
				cmd[j] = byte(rnd.Uint32())
			}
			ents[rnd.IntN(n)].Cmd = cmd
		}
		want = append(want, clone(ents)...)
		save(t, l, 5, ents)
		first += uint64(n)
	}
	g, err := l.group(5, 1)
	if err != nil {
		t.Fatal(err)
	}
	if !g.direct {
		// A filesystem that takes a direct write of one aligned block where the
		// payload writes fell back means those writes were misaligned: a failure,
		// not a filesystem to skip.
		if directio.Available() {
			if probe, err := os.OpenFile(fs.PathJoin(dir, "probe"), os.O_CREATE|os.O_WRONLY|directio.Flag, 0o600); err == nil {
				raw := make([]byte, 2*blockSize) // one block, aligned here, not by the code under test
				at := int(-uintptr(unsafe.Pointer(&raw[0])) & (blockSize - 1))
				_, werr := probe.WriteAt(raw[at:at+blockSize], 0)
				probe.Close()
				if werr == nil {
					t.Fatalf("%s takes direct writes of aligned blocks, but the payload writes fell back to buffered ones: misaligned", dir)
				}
			}
		}
		if os.Getenv("CI") != "" {
			t.Fatalf("%s refused direct I/O: CI must run this test where it is allowed", dir)
		}
		t.Skipf("%s refused direct I/O (O_DIRECT): nothing to test here", dir)
	}
	if n := g.inPlace.Load(); n < 10 {
		t.Fatalf("%d payloads written in place: the test needs more", n)
	}
	sameEntries(t, "entries saved with direct I/O", readAll(t, l, 5, 1, first), want)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	l = openTestLogAt(t, fs, dir)
	defer l.Close()
	sameEntries(t, "entries after a reopen", readAll(t, l, 5, 1, first), want)
	g, err = l.group(5, 1)
	if err != nil {
		t.Fatal(err)
	}
	if len(g.files) < 3 {
		t.Fatalf("%d payload files: the test needs several", len(g.files))
	}
	for _, f := range g.files {
		if !f.whole || f.size%blockSize != 0 {
			t.Fatalf("payload file %s: %d bytes, whole %v: want whole blocks, every record readable", f.path, f.size, f.whole)
		}
	}
}

// TestInPlacePads: the pad before a payload written in place, at the two edges: a
// gap to the next block shorter than a record header (a block more is padded) and
// no gap at all (no pad). The payloads read back whole, before and after a reopen.
func TestInPlacePads(t *testing.T) {
	fs := gvfs.Default
	dir := fs.PathJoin(t.TempDir(), "raft")
	l := openTestLogAt(t, fs, dir)
	l.fileSize, l.direct = FileSize, true // one file holds them all
	cmd := func(n int, aligned bool) []byte {
		b := make([]byte, n)
		if aligned {
			b = directio.Aligned(n)
		}
		for i := range b {
			b[i] = byte(i*7 + n)
		}
		return b
	}
	// Record sizes (header 24): 24+4036 ends at 4060, 12 short of where a header
	// ending at a block would start; then 4096+12 of pad, the header, 256 KiB; then
	// 24+4048 ends 24 short of a block: no pad before the last payload.
	ents := []pb.Entry{
		{Term: 1, Index: 1, Type: pb.EncodedEntry, Cmd: cmd(4036, false)},
		{Term: 1, Index: 2, Type: pb.EncodedEntry, Cmd: cmd(directio.InPlaceMin, true)},
		{Term: 1, Index: 3, Type: pb.EncodedEntry, Cmd: cmd(4048, false)},
		{Term: 1, Index: 4, Type: pb.EncodedEntry, Cmd: cmd(directio.InPlaceMin+100, true)},
	}
	want := clone(ents)
	save(t, l, 5, ents)
	g, err := l.group(5, 1)
	if err != nil {
		t.Fatal(err)
	}
	if !g.direct {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s refused direct I/O: CI must run this test where it is allowed", dir)
		}
		t.Skipf("%s refused direct I/O (O_DIRECT): nothing to test here", dir)
	}
	if n := g.inPlace.Load(); n != 2 {
		t.Fatalf("%d payloads written in place, want 2", n)
	}
	f := g.files[1]
	if f == nil {
		t.Fatal("no first payload file")
	}
	// 4060, the pad (4108), the header, 256 KiB, 4072, the header, 256 KiB + 100,
	// then finish's pad to a block.
	if end := int64(4060 + 4108 + 24 + directio.InPlaceMin + 4072 + 24 + directio.InPlaceMin + 100); f.size != (end+blockSize-1)/blockSize*blockSize {
		t.Fatalf("payload file of %d bytes, want %d rounded up to a block", f.size, end)
	}
	sameEntries(t, "entries written in place", readAll(t, l, 5, 1, 5), want)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	l = openTestLogAt(t, fs, dir)
	defer l.Close()
	sameEntries(t, "entries after a reopen", readAll(t, l, 5, 1, 5), want)
}

// TestFactoryDirectIO: a node host's LogDB writes payloads with direct I/O when the
// node host writes to the operating system's files, and never through a filesystem
// of its own (fault injection, memory). dragonboat fills in its default filesystem
// before it calls the factory, so the factory is tested with a config prepared as
// dragonboat prepares it: a check for a nil filesystem alone left direct I/O off in
// every node (0.39 and before).
func TestFactoryDirectIO(t *testing.T) {
	for _, tc := range []struct {
		name string
		fs   config.IFS
		want bool
	}{
		{"the operating system's", nil, true},
		{"in memory", gvfs.NewMem(), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			cfg := config.NodeHostConfig{NodeHostDir: dir, RTTMillisecond: 200, RaftAddress: "127.0.0.1:1",
				Expert: config.ExpertConfig{LogDB: config.GetSmallMemLogDBConfig(), FS: tc.fs}}
			if err := cfg.Prepare(); err != nil {
				t.Fatal(err)
			}
			if err := cfg.Expert.FS.MkdirAll(dir, 0o700); err != nil {
				t.Fatal(err)
			}
			state := new(atomic.Bool)
			state.Store(!tc.want)
			db, err := Factory{DirectIO: true, DirectState: state}.Create(cfg, func(config.LogDBInfo) {}, []string{dir}, []string{dir})
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			if got := db.(*LogDB).direct; got != tc.want {
				t.Fatalf("direct I/O on a node host's %s filesystem: %v, want %v", tc.name, got, tc.want)
			}
			if state.Load() != tc.want {
				t.Fatalf("DirectState says %v for a node host's %s filesystem, want %v", state.Load(), tc.name, tc.want)
			}
		})
	}
}
