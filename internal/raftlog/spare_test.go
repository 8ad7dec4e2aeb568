package raftlog

import (
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flotilla-relay/flotilla/internal/directio"
	pb "github.com/lni/dragonboat/v3/raftpb"
	gvfs "github.com/lni/goutils/vfs"
)

// testSpares is how many spare files the recycling tests' reserve holds.
const testSpares = 3

// openRecyclingLog opens a test log with recycling on and a reserve of testSpares
// spare files (the keeper not started: tests trim themselves).
func openRecyclingLog(t testing.TB, fs gvfs.FS) *LogDB {
	t.Helper()
	l := openTestLog(t, fs)
	l.recycle.Store(true)
	p, err := openSpares(fs, l.root, l.fileSize, testSpares*(testFileSize+testFileSize/16), l.recycle, nil, slog.New(slog.DiscardHandler), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	l.pool = p
	return l
}

// groupFiles returns the payload files of group cluster as a reopened log sees them.
func groupFiles(t *testing.T, l *LogDB, cluster uint64) map[uint64]*payFile {
	t.Helper()
	g, err := l.group(cluster, 1)
	if err != nil {
		t.Fatal(err)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	out := map[uint64]*payFile{}
	for seq, f := range g.files {
		c := *f
		out[seq] = &c
	}
	return out
}

// TestSparesGiveWayToAFullDisk: a cut file is kept as a spare only while the disk
// has room for it, and spares kept are removed once it has no room to spare; the
// spares kept survive a restart.
func TestSparesGiveWayToAFullDisk(t *testing.T) {
	fs := gvfs.NewMem()
	rnd := rand.New(rand.NewPCG(21, 22))
	l := openRecyclingLog(t, fs)
	var room atomic.Bool
	room.Store(true)
	l.pool.room = func(int64) bool { return room.Load() }
	for first := uint64(1); first <= 200; first += 40 {
		save(t, l, 5, entries(rnd, first, 40))
	}
	if err := l.RemoveEntriesTo(5, 1, 100); err != nil {
		t.Fatal(err)
	}
	if n := len(mustList(t, fs, l.pool.dir)); n != testSpares {
		t.Fatalf("%d spare files after a cut freed many, want the reserve's %d", n, testSpares)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	l = openRecyclingLog(t, fs)
	defer l.Close()
	if n := len(l.pool.ready); n != testSpares {
		t.Fatalf("%d spares ready after a restart, want %d", n, testSpares)
	}
	room.Store(false)
	l.pool.room = func(int64) bool { return room.Load() }
	l.pool.trim()
	if n := len(mustList(t, fs, l.pool.dir)); n != 0 || len(l.pool.ready) != 0 {
		t.Fatalf("%d spare files (%d ready) on a disk with no room to spare, want none", n, len(l.pool.ready))
	}
	if err := l.RemoveEntriesTo(5, 1, 199); err != nil {
		t.Fatal(err)
	}
	if n := len(mustList(t, fs, l.pool.dir)); n != 0 {
		t.Fatalf("a cut kept %d spares on a disk with no room to spare", n)
	}
}

func mustList(t *testing.T, fs gvfs.FS, dir string) []string {
	t.Helper()
	names, err := fs.List(dir)
	if err != nil {
		t.Fatal(err)
	}
	return names
}

// TestSpareFilesAreRecycled: files a cut frees become spares (up to the reserve),
// and new payload files are those spares renamed (salted). A file taken from a
// group with higher indexes, overwritten with lower ones, reads back whole with
// only its own records after a restart (its old records read as its end, its old
// tail sealed), so the cut that should remove it does.
func TestSpareFilesAreRecycled(t *testing.T) {
	fs := gvfs.NewMem()
	rnd := rand.New(rand.NewPCG(11, 12))
	l := openRecyclingLog(t, fs)

	// Group 7 writes high indexes, one record of 8,000 bytes a save (a record and
	// its pad fill two blocks); its cut frees files that become spares.
	one := func(index uint64) []pb.Entry {
		cmd := make([]byte, 8000)
		for j := range cmd {
			cmd[j] = byte(rnd.Uint32())
		}
		return []pb.Entry{{Term: 1, Index: index, Type: pb.EncodedEntry, Cmd: cmd}}
	}
	// Every eighth entry of group 7 is twice as long: its files end a block past
	// where group 5's (of 8,000-byte entries only) fill up, so those are sealed.
	var last uint64
	for i := uint64(100000); i < 100000+40; i++ {
		e := one(i)
		if i%8 == 7 {
			e[0].Cmd = append(e[0].Cmd, e[0].Cmd...)
		}
		save(t, l, 7, e)
		last = i
	}
	files7 := groupFiles(t, l, 7)
	for _, f := range files7 {
		if f.salt == 0 || f.phys != 0 {
			t.Fatalf("payload file %s: salt %x, taken from a spare of %d bytes: want salted, new", f.path, f.salt, f.phys)
		}
	}
	if err := l.RemoveEntriesTo(7, 1, last-1); err != nil {
		t.Fatal(err)
	}
	if n := len(l.pool.ready); n != testSpares {
		t.Fatalf("%d spares after a cut freed %d files, want %d", n, len(files7)-1, testSpares)
	}
	if n := len(groupFiles(t, l, 7)); n != 1 {
		t.Fatalf("%d files of group 7 left after the cut, want the last", n)
	}

	// Group 5 writes low indexes into the recycled files, records laid out as group
	// 7's were: its last file, left unsealed, has a header of group 7 right after
	// its own last record, which only the salt tells apart.
	var all [][]byte
	for i := uint64(1); i <= 12; i++ {
		ents := one(i)
		all = append(all, clone(ents)[0].Cmd)
		save(t, l, 5, ents)
	}
	recycled := 0
	for _, f := range groupFiles(t, l, 5) {
		if f.phys > 0 {
			recycled++
		}
	}
	files5 := groupFiles(t, l, 5)
	if recycled != len(files5) || recycled < 2 {
		t.Fatalf("group 5 took %d spares for its %d files, want every file (at least 2) a spare", recycled, len(files5))
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}

	l = openRecyclingLog(t, fs)
	defer l.Close()
	got := readAll(t, l, 5, 1, 13)
	for i, e := range got {
		if string(e.Cmd) != string(all[i]) {
			t.Fatalf("entry %d reads back other bytes after a restart", e.Index)
		}
	}
	for _, f := range groupFiles(t, l, 5) {
		if !f.whole || f.maxIndex > 12 || f.maxIndex == 0 {
			t.Fatalf("recycled file %s reopened: whole %v, highest index %d: want whole, its own records only (at most 12)", f.path, f.whole, f.maxIndex)
		}
	}
	if err := l.RemoveEntriesTo(5, 1, 12); err != nil {
		t.Fatal(err)
	}
	if n := len(groupFiles(t, l, 5)); n > 1 {
		t.Fatalf("%d payload files of group 5 left after a cut past all its entries, want at most the last", n)
	}
}

// TestCutIntoARecycledFile: a cut into the recycled file a group appends to seals
// it, syncs and closes it (no descriptor, nothing left dirty), and a later cut past
// its entries gives it back to the spares.
func TestCutIntoARecycledFile(t *testing.T) {
	fs := gvfs.NewMem()
	rnd := rand.New(rand.NewPCG(31, 32))
	l := openRecyclingLog(t, fs)
	defer l.Close()
	for first := uint64(1); first <= 200; first += 40 {
		save(t, l, 7, entries(rnd, first, 40))
	}
	if err := l.RemoveEntriesTo(7, 1, 199); err != nil {
		t.Fatal(err)
	}
	two := entries(rnd, 1, 2)
	for i := range two {
		two[i].Cmd = make([]byte, 8000) // both leave the LSM
	}
	save(t, l, 5, two)
	g, err := l.group(5, 1)
	if err != nil {
		t.Fatal(err)
	}
	g.mu.Lock()
	cur := g.cur
	g.mu.Unlock()
	if cur == nil || cur.phys == 0 || cur.maxIndex != 2 {
		t.Fatalf("group 5 appends to %+v, want a spare holding entries 1 and 2", cur)
	}
	if err := l.RemoveEntriesTo(5, 1, 1); err != nil {
		t.Fatal(err)
	}
	g.mu.Lock()
	open, dirty, size, after := cur.w != nil, cur.dirty, cur.size, g.cur
	g.mu.Unlock()
	if open || dirty || after == cur || size < cur.phys {
		t.Fatalf("after a cut into it: open %v, dirty %v, still appended to %v, %d bytes of %d claimed: want sealed, synced, closed", open, dirty, after == cur, size, cur.phys)
	}
	spares := len(l.pool.ready)
	if err := l.RemoveEntriesTo(5, 1, 2); err != nil {
		t.Fatal(err)
	}
	if len(l.pool.ready) != spares+1 {
		t.Fatalf("%d spares after a cut past the sealed file, want %d", len(l.pool.ready), spares+1)
	}
}

// TestZeroReserveRemovesSpares: a node whose reserve is set to 0 gives the spares'
// disk back at its next start.
func TestZeroReserveRemovesSpares(t *testing.T) {
	fs := gvfs.NewMem()
	root := "/node/raft/payloads"
	if err := fs.MkdirAll(root+"/"+spareDir, 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := fs.Create(root + "/" + spareDir + "/0000000000000001" + spareSuffix)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	if err := removeSpares(fs, root, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := fs.Stat(root + "/" + spareDir); err == nil {
		t.Fatal("the spare directory is still there with a reserve of 0")
	}
	if err := removeSpares(fs, root, nil); err != nil {
		t.Fatalf("with no spare directory: %v", err)
	}
}

// TestSparesOffKeepsFilesPlain: without recycling (the cluster below
// RecycleVersion) files are plain, created new and removed at cuts, reserve or not.
func TestSparesOffKeepsFilesPlain(t *testing.T) {
	fs := gvfs.NewMem()
	rnd := rand.New(rand.NewPCG(13, 14))
	l := openRecyclingLog(t, fs)
	l.recycle.Store(false)
	for first := uint64(1); first <= 200; first += 40 {
		save(t, l, 5, entries(rnd, first, 40))
	}
	for _, f := range groupFiles(t, l, 5) {
		if f.salt != 0 || f.phys != 0 {
			t.Fatalf("payload file %s salted or recycled with recycling off", f.path)
		}
	}
	if err := l.RemoveEntriesTo(5, 1, 199); err != nil {
		t.Fatal(err)
	}
	if n := len(l.pool.ready); n != 0 {
		t.Fatalf("%d spares with recycling off", n)
	}
	l.Close()
}

// TestPowerCutWithSpares is TestPowerCutKeepsSavedPayloads with recycling: files
// cut from the log become spares and are overwritten by new ones, and the power
// goes after random saves and cuts. Every entry a save
// returned for above the last cut reads back whole, and every file reads whole at
// the next start. An overwrite not synced comes back as the old bytes (the
// filesystem keeps only what was synced), so a spare handed out twice, or a
// reference to unsynced bytes, shows as a wrong entry.
func TestPowerCutWithSpares(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rnd := rand.New(rand.NewPCG(seed, 15))
	fs := gvfs.NewStrictMem()
	var want [][]byte
	cut := uint64(0)
	taken := 0
	for round := 0; round < 16; round++ {
		l := openRecyclingLog(t, fs)
		if len(want) > 0 {
			got := readAll(t, l, 5, cut+1, uint64(len(want))+1)
			if len(got) != len(want)-int(cut) {
				t.Fatalf("round %d: %d entries above the cut %d, want %d", round, len(got), cut, len(want)-int(cut))
			}
			for _, e := range got {
				if string(e.Cmd) != string(want[e.Index-1]) {
					t.Fatalf("round %d: entry %d reads back other bytes after the power cut", round, e.Index)
				}
			}
			for _, f := range groupFiles(t, l, 5) {
				if f.maxIndex == math.MaxUint64 {
					t.Fatalf("round %d: payload file %s does not read whole after the power cut", round, f.path)
				}
			}
		}
		for i := rnd.IntN(6); i >= 0; i-- {
			ents := entries(rnd, uint64(len(want))+1, 1+rnd.IntN(12))
			for _, e := range clone(ents) {
				want = append(want, e.Cmd)
			}
			save(t, l, 5, ents)
		}
		if rnd.IntN(2) == 0 && uint64(len(want)) > cut+10 {
			cut = uint64(len(want)) - uint64(rnd.IntN(10))
			if err := l.RemoveEntriesTo(5, 1, cut); err != nil {
				t.Fatal(err)
			}
		}
		for _, f := range groupFiles(t, l, 5) {
			if f.phys > 0 {
				taken++
			}
		}
		if rnd.IntN(3) == 0 {
			writeUnsaved(t, l, uint64(len(want))+1)
		}
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		fs.ResetToSyncedState()
	}
	if taken == 0 {
		t.Fatal("no payload file was taken from the spares: the test checked less than it claims")
	}
}

// BenchmarkPayloadSave saves 4 MiB entries, one a save, into 64 MiB payload files
// with direct I/O on the disk under the temporary directory: files created new
// against files taken from spares written before the timer (overwrites). It
// isolates the raft log's save stage of an ingest; run it with -benchtime 64x or
// more, so that the files roll.
func BenchmarkPayloadSave(b *testing.B) {
	if !directio.Available() {
		b.Skip("direct I/O is not available here")
	}
	for _, recycled := range []bool{false, true} {
		name := "new"
		if recycled {
			name = "recycled"
		}
		b.Run(name, func(b *testing.B) {
			dir := b.TempDir()
			l := openTestLogAt(b, gvfs.Default, dir+"/raft")
			defer l.Close()
			l.fileSize, l.direct = FileSize, true
			const entry = 4 << 20
			if recycled {
				l.recycle.Store(true)
				files := int64(b.N)*entry/FileSize + 2
				p, err := openSpares(gvfs.Default, l.root, l.fileSize, files*(FileSize+stageSize), l.recycle, nil, slog.New(slog.DiscardHandler), nil, nil)
				if err != nil {
					b.Fatal(err)
				}
				zeros := directio.Aligned(stageSize)
				for k := range files {
					path := fmt.Sprintf("%s/%016x%s", p.dir, k+1, spareSuffix)
					w, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|directio.Flag, 0o644)
					if err != nil {
						b.Fatal(err)
					}
					for off := int64(0); off < FileSize+stageSize; off += stageSize {
						if _, err := w.WriteAt(zeros, off); err != nil {
							b.Fatal(err)
						}
					}
					if err := w.Sync(); err != nil {
						b.Fatal(err)
					}
					w.Close()
					p.ready = append(p.ready, path)
				}
				l.pool = p
			}
			cmd := make([]byte, entry)
			for i := range cmd {
				cmd[i] = byte(i * 7)
			}
			b.SetBytes(entry)
			b.ResetTimer()
			for i := range b.N {
				save(b, l, 5, []pb.Entry{{Term: 1, Index: uint64(i + 1), Type: pb.EncodedEntry, Cmd: cmd}})
			}
		})
	}
}

// TestStartDropsUnsettledSpares: a start takes as spares only files a cut settled
// (its old directory synced, then renamed to a spare name), and removes files given
// but not settled: a crash on a filesystem whose directories sync independently
// may have kept such a file's old name too.
func TestStartDropsUnsettledSpares(t *testing.T) {
	fs := gvfs.NewMem()
	l := openRecyclingLog(t, fs)
	dir := l.pool.dir
	l.Close()
	for _, name := range []string{"0000000000000001" + spareSuffix, "0000000000000002" + movedSuffix} {
		f, err := fs.Create(fs.PathJoin(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.Write(make([]byte, testFileSize)); err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
	l = openRecyclingLog(t, fs)
	defer l.Close()
	if len(l.pool.ready) != 1 || !strings.HasSuffix(l.pool.ready[0], spareSuffix) {
		t.Fatalf("spares ready after a start: %v, want the settled one only", l.pool.ready)
	}
	if names := mustList(t, fs, dir); len(names) != 1 {
		t.Fatalf("spare directory holds %v after a start, want the settled spare only", names)
	}
}

// TestUnusableSpareFallsBack: a spare that cannot be taken (here gone from the
// disk) is dropped, and the save goes on with a new file instead of failing.
func TestUnusableSpareFallsBack(t *testing.T) {
	fs := gvfs.NewMem()
	l := openRecyclingLog(t, fs)
	defer l.Close()
	l.pool.ready = []string{fs.PathJoin(l.pool.dir, "0000000000000009"+spareSuffix)}
	ents := entries(rand.New(rand.NewPCG(41, 42)), 1, 4)
	want := clone(ents)
	save(t, l, 5, ents)
	sameEntries(t, "after a spare could not be taken", readAll(t, l, 5, 1, 5), want)
	for _, f := range groupFiles(t, l, 5) {
		if f.phys != 0 {
			t.Fatalf("payload file %s counts %d bytes of a spare that was never taken", f.path, f.phys)
		}
	}
	if n := l.pool.recycled.Load(); n != 0 || len(l.pool.ready) != 0 {
		t.Fatalf("recycled %d, spares ready %v: want none", n, l.pool.ready)
	}
}
