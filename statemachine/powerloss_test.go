package statemachine

import (
	"math/rand/v2"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	sm "github.com/lni/dragonboat/v3/statemachine"

	"github.com/flotilla-relay/flotilla/internal/binlog"
)

// TestPowerLoss runs the store (segments and index) on pebble's crashable in-memory
// filesystem and cuts the power at random moments while a group appends: the
// filesystem after each cut holds what was synced and a random share of what was not
// (blocks of file data and directory entries alike). After every cut the store must
// open to a valid prefix of what was appended, with an index that agrees with the
// segments, holding at least everything a Sync covered and everything the previous
// recovery found (recovery itself makes what it found durable).
//
// Unlike TestCrashRecovery (SIGKILL keeps the page cache), this is what shows an
// fsync is needed: delete one from the storage code and the rounds whose cut drops
// the bytes it should have made durable fail (a single run need not reach every one;
// the seed is random per run and printed for replay).
func TestPowerLoss(t *testing.T) {
	lives, rounds := 8, 10 // each life starts from an empty filesystem
	if testing.Short() {
		lives = 3
	}
	seed := uint64(time.Now().UnixNano())
	if v := os.Getenv("FLOTILLA_POWERLOSS_SEED"); v != "" { // replay a failure
		var err error
		if seed, err = strconv.ParseUint(v, 10, 64); err != nil {
			t.Fatalf("FLOTILLA_POWERLOSS_SEED=%q: %v", v, err)
		}
	}
	t.Logf("seed %d (replay: FLOTILLA_POWERLOSS_SEED=%d)", seed, seed)
	rnd := rand.New(rand.NewPCG(seed, 11))
	// Odd lives are bulk loads, which close files without an fsync (closeDue). In
	// half the lives of each kind other groups' durable commits sync the index's
	// log at random moments (sharedWAL): the index is then often durable ahead of
	// this group's segments. Together they found four ways a rebuild from the
	// segments lost files (rebuild_test.go pins each).
	var syncedRounds, cutsMidway, deaths uint64
	unsyncedCloses := 0
	for life := 0; life < lives; life++ {
		s, m, d, u := powerLossLife(t, rnd, seed, rounds, life%2 == 1, life/2%2 == 1)
		syncedRounds, cutsMidway, deaths, unsyncedCloses = syncedRounds+s, cutsMidway+m, deaths+d, max(unsyncedCloses, u)
	}
	if syncedRounds == 0 || cutsMidway == 0 {
		t.Fatalf("cuts never followed a Sync (%d) or never caught unsynced work (%d): the test checked nothing", syncedRounds, cutsMidway)
	}
	if lives > 1 && unsyncedCloses < 2 {
		t.Fatalf("the bulk lives never closed two files in a row without an fsync (at most %d): they checked nothing new", unsyncedCloses)
	}
	t.Logf("%d power cuts or process deaths (%d deaths; %d after a Sync, %d with unsynced appends; up to %d files closed without an fsync); every recovery a valid prefix holding all that was synced and found before",
		lives*rounds, deaths, syncedRounds, cutsMidway, unsyncedCloses)
}

// powerLossLife cuts the power (or kills the process) rounds times on a new
// filesystem; it returns how many cuts came after a Sync, how many caught unsynced
// appends and how many were process deaths. A bulk life's Updates all count as a
// bulk load's, which closes files without an fsync (see closeDue). With sharedWAL
// the index's log is synced at random moments, as other groups' commits do.
func powerLossLife(t *testing.T, rnd *rand.Rand, seed uint64, rounds int, bulk, sharedWAL bool) (syncedRounds, cutsMidway, processDeaths uint64, unsyncedCloses int) {
	fs := vfs.NewCrashableMem()
	const dir = "/flotilla/storage"
	var durable, epoch uint64
	for round := 0; round < rounds; round++ {
		var setup []func(*Store)
		if bulk {
			setup = append(setup, bulkUpdates)
		}
		h := newHarnessOn(t, fs, dir, 64<<10, setup...) // many parts: cuts land around rolls too
		seq := verifyPrefix(t, h, rnd)
		if seq < durable {
			t.Fatalf("round %d (seed %d): %d transactions were durable before the power cut, %d survived", round, seed, durable, seq)
		}
		// A claimed epoch is in no served record, yet it fences stale leaders. One
		// exception: a group whose segments never held a synced Update starts over
		// from entry 0 (see rebuildIndex), and dragonboat then applies its whole log
		// again, the claim included. A first claim, made before the group had a
		// segment, is in the index alone: a cut that keeps the index's next, unsynced
		// write but not the first segment's bytes sends the group back there.
		if tail, _ := h.g.Tail(); tail.Epoch < epoch && (tail.Applied != 0 || durable > 0) {
			t.Fatalf("round %d (seed %d): epoch %d was claimed before the power cut, the group came back at %d (applied %d)", round, seed, epoch, tail.Epoch, tail.Applied)
		}
		durable = seq
		a, err := newAppender(h.g, h.index, rand.New(rand.NewPCG(rnd.Uint64(), 3)))
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		a.purge, a.bulk, epoch = true, bulk, a.epoch
		// Everything present after Open is durable too: the next round checks it.
		var synced atomic.Uint64
		synced.Store(seq)
		var stop atomic.Bool
		var wg sync.WaitGroup
		var appendErr error
		steps := rnd.IntN(30) // 0: the cut follows the claim (and dropped pieces)
		syncs := make(chan struct{}, steps)
		rnd2 := rand.New(rand.NewPCG(rnd.Uint64(), 5)) // the appender's own: rnd is not goroutine-safe
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < steps && !stop.Load(); i++ {
				ok, err := a.step()
				if err != nil {
					appendErr = err
					break
				}
				if ok {
					synced.Store(a.ordinal)
					syncs <- struct{}{} // at most steps of them: never blocks
				}
				// Other groups' durable commits sync the index's log they share: the
				// index may then be durable ahead of this group's segments, older
				// files' included.
				if sharedWAL && rnd2.IntN(3) == 0 {
					if err := h.store.db.LogData(nil, pebble.Sync); err != nil {
						appendErr = err
						break
					}
				}
			}
			// Often with a transaction left incomplete: the next round's claim drops it.
			if appendErr == nil && !stop.Load() && rnd2.IntN(2) == 0 {
				appendErr = a.leavePending()
			}
			// Then quiet: a cut now catches background work (compression).
			close(syncs)
		}()
		// A random moment after a random number of Syncs, not a synchronisation:
		// every moment must be safe.
		for n := rnd.IntN(3); n > 0; n-- {
			<-syncs
		}
		time.Sleep(time.Duration(rnd.IntN(3000)) * time.Microsecond)
		// Read what is durable before cutting: a Sync returning after the read may
		// or may not be in the cut.
		before := synced.Load()
		// Mostly a power cut; else the process dies and restarts (closing drops the
		// handles and syncs nothing), leaving unsynced writes for the next Open to
		// find: what it builds on them must be durable (the next cut checks).
		cut := fs
		if rnd.IntN(3) != 0 {
			cut = fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: rnd.IntN(101), RNG: rnd})
		} else {
			processDeaths++
		}
		stop.Store(true)
		wg.Wait()
		unsyncedCloses = max(unsyncedCloses, a.maxUnsynced)
		if appendErr != nil {
			t.Fatalf("round %d: append: %v", round, appendErr)
		}
		if before > seq {
			syncedRounds++
		}
		if a.ordinal > before {
			cutsMidway++
		}
		h.close()
		fs = cut
		durable = before
	}
	h := newHarnessOn(t, fs, dir, 64<<10)
	if seq := verifyPrefix(t, h, rnd); seq < durable {
		t.Fatalf("last round (seed %d): %d transactions were durable, %d survived", seed, durable, seq)
	}
	h.close()
	return syncedRounds, cutsMidway, processDeaths, unsyncedCloses
}

// TestPowerLossAtEveryDirSync cuts the power right after every directory fsync the
// storage (and its index) makes while a group appends, rotates and purges, keeping
// nothing unsynced: each such moment must recover to a valid prefix holding all that
// a Sync covered. Unlike TestPowerLoss it is deterministic. Purge once made its
// segment removals durable (the directory fsync) before the index that no longer
// names them: a cut in between recovered nothing, and this test fails on that code.
func TestPowerLossAtEveryDirSync(t *testing.T) {
	const dir = "/flotilla/storage"
	mem := vfs.NewCrashableMem()
	type cut struct {
		fs      *vfs.MemFS
		durable uint64
	}
	var (
		durable atomic.Uint64
		mu      sync.Mutex
		pending []cut // taken by whichever goroutine synced (pebble's too)
	)
	spy := &dirSyncSpy{FS: mem, after: func() {
		d := durable.Load() // before the clone: a Sync finishing meanwhile is in it
		c := cut{fs: mem.CrashClone(vfs.CrashCloneCfg{}), durable: d}
		mu.Lock()
		pending = append(pending, c)
		mu.Unlock()
	}}
	cuts, rnd := 0, rand.New(rand.NewPCG(5, 5))
	check := func() {
		mu.Lock()
		p := pending
		pending = nil
		mu.Unlock()
		for _, c := range p {
			cuts++
			h := newHarnessOn(t, c.fs, dir, 64<<10)
			seq := verifyPrefix(t, h, rnd)
			h.close()
			if seq < c.durable {
				t.Fatalf("power cut after directory fsync %d: %d transactions were durable, %d survived", cuts, c.durable, seq)
			}
		}
	}
	h := newHarnessOn(t, spy, dir, 64<<10)
	defer h.close()
	a, err := newAppender(h.g, h.index, rand.New(rand.NewPCG(3, 3)))
	if err != nil {
		t.Fatal(err)
	}
	a.purge = true
	purges := 0
	for i := 0; i < 200; i++ {
		first := a.g.m.FirstFile
		ok, err := a.step()
		if err != nil {
			t.Fatal(err)
		}
		if a.g.m.FirstFile != first {
			purges++
		}
		if ok {
			durable.Store(a.ordinal)
		}
		check()
	}
	if purges < 2 || cuts < 20 {
		t.Fatalf("%d purges, %d cuts: the test checked too little", purges, cuts)
	}
	t.Logf("%d power cuts after directory fsyncs, %d purges, %d transactions", cuts, purges, a.ordinal)
}

// dirSyncSpy calls after once each directory fsync has returned.
type dirSyncSpy struct {
	vfs.FS
	after func()
}

func (s *dirSyncSpy) OpenDir(name string) (vfs.File, error) {
	f, err := s.FS.OpenDir(name)
	if err != nil {
		return nil, err
	}
	return &spiedDir{File: f, after: s.after}, nil
}

type spiedDir struct {
	vfs.File
	after func()
}

func (d *spiedDir) Sync() error {
	err := d.File.Sync()
	if err == nil {
		d.after()
	}
	return err
}

// A power cut soon after a group's first append: its segment was never fsynced (a
// group syncs its segments only at dragonboat's Sync, a new epoch, a closed file),
// but another group's synced commit made its index durable (the store's index shares
// one WAL). The index then names a first file with no complete batch left in it. That
// is no loss (raft still holds every entry: its log is compacted only after a Sync),
// so the group opens empty and dragonboat applies its log again; it used to refuse
// to open ("no complete batch found ... data was lost"), and its node with it.
func TestPowerCutBeforeFirstSegmentSync(t *testing.T) {
	// The segment's directory entry may be lost too, or survive without its data.
	for _, emptyFile := range []bool{false, true} {
		powerCutBeforeFirstSegmentSync(t, emptyFile)
	}
}

func powerCutBeforeFirstSegmentSync(t *testing.T, emptyFile bool) {
	fs := vfs.NewCrashableMem()
	const dir = "/flotilla/storage"
	st, err := OpenFS(fs, dir, discardLog())
	if err != nil {
		t.Fatal(err)
	}
	a := st.NewGroup(5, 1).(*Group)
	b := st.NewGroup(6, 1).(*Group)
	for _, g := range []*Group{a, b} {
		if _, err := g.Open(nil); err != nil {
			t.Fatal(err)
		}
	}
	cmds := [][]byte{EncodeClaimEpoch(), (&Append{Epoch: 1, Items: []Item{newFile("m.1", binlog.Position{}), txn(gt(1), 100), txn(gt(2), 100)}}).Encode()}
	for i, cmd := range cmds {
		if out, err := a.Update([]sm.Entry{{Index: uint64(i + 1), Cmd: cmd}}); err != nil || out[0].Result.Value != ResultOK {
			t.Fatalf("entry %d: %v %s", i+1, err, out[0].Result.Data)
		}
	}
	if _, err := b.Update([]sm.Entry{{Index: 1, Cmd: EncodeClaimEpoch()}}); err != nil { // a synced commit
		t.Fatal(err)
	}
	cut := fs.CrashClone(vfs.CrashCloneCfg{}) // nothing unsynced survives
	seg := a.segPath(1)
	a.Close()
	b.Close()
	st.Close()
	if emptyFile {
		if err := cut.MkdirAll(cut.PathDir(seg), 0o755); err != nil {
			t.Fatal(err)
		}
		f, err := cut.Create(seg, vfs.WriteCategoryUnspecified)
		if err != nil {
			t.Fatal(err)
		}
		f.Close()
	}

	st2, err := OpenFS(cut, dir, discardLog())
	if err != nil {
		t.Fatal(err)
	}
	defer st2.Close()
	g := st2.NewGroup(5, 1).(*Group)
	defer g.Close()
	applied, err := g.Open(nil)
	if err != nil {
		t.Fatalf("empty segment file %v: the group does not open after the power cut: %v", emptyFile, err)
	}
	if applied >= 2 {
		t.Fatalf("empty segment file %v: the group opened at entry %d, but its append was lost with the segment", emptyFile, applied)
	}
	// Dragonboat applies the log from there on.
	for i := applied; i < uint64(len(cmds)); i++ {
		if out, err := g.Update([]sm.Entry{{Index: i + 1, Cmd: cmds[i]}}); err != nil || out[0].Result.Value != ResultOK {
			t.Fatalf("empty segment file %v: entry %d applied again: %v %s", emptyFile, i+1, err, out[0].Result.Data)
		}
	}
	if tail, _ := g.Tail(); tail.Ordinal != 2 || tail.Epoch != 1 {
		t.Fatalf("empty segment file %v: after the log is applied again: %d transactions, epoch %d; want 2 and 1", emptyFile, tail.Ordinal, tail.Epoch)
	}
}
