package statemachine

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"

	sm "github.com/lni/dragonboat/v3/statemachine"

	"github.com/flotilla-relay/flotilla/internal/binlog"
)

const crashChildEnv = "FLOTILLA_CRASH_CHILD"

// TestMain lets the test binary double as the crash test's appender process.
func TestMain(m *testing.M) {
	if dir := os.Getenv(crashChildEnv); dir != "" {
		if err := crashChild(dir); err != nil {
			fmt.Fprintln(os.Stderr, "crash child:", err)
			os.Exit(3)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// crashChild appends forever, as the apply loop of a busy group would, and reports
// each Sync. The parent kills it at a random moment.
func crashChild(dir string) error {
	st, err := Open(dir, discardLog())
	if err != nil {
		return err
	}
	st.SetSegmentSize(64 << 10) // many parts: kills land around rolls too
	st.SetDirectIO(true)        // where the filesystem takes it, kills land around direct writes too
	g := st.NewGroup(5, 1).(*Group)
	index, err := g.Open(nil)
	if err != nil {
		return err
	}
	a, err := newAppender(g, index, rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 7)))
	if err != nil {
		return err
	}
	// Purges keep the store small (the parent reads all of it after every kill) and
	// put kills around purges too.
	a.purge = true
	fmt.Println("ready")
	for {
		synced, err := a.step()
		if err != nil {
			return err
		}
		if synced {
			// Everything up to here must survive the kill (the parent checks).
			fmt.Println("synced", a.ordinal)
		}
	}
}

// appender drives a group as the apply loop of a busy group would: batches of random
// size, transactions split over two entries, file rotations, and a Sync now and then.
// It starts with a new epoch, as a new leader's syncer does, which drops the pieces of
// a transaction left incomplete.
type appender struct {
	g                          *Group
	rnd                        *rand.Rand
	index, epoch, ordinal, seq uint64
	// purge lets steps purge every file but the current one now and then.
	purge bool
	// bulk makes steps close files eight times as often and sync a third as often,
	// on a store whose Updates all count as a bulk load's (bulkUpdates): files are
	// then closed without an fsync, several in a row.
	bulk bool
	// maxUnsynced is the most files closed without an fsync after any step.
	maxUnsynced int
}

func newAppender(g *Group, index uint64, rnd *rand.Rand) (*appender, error) {
	a := &appender{g: g, rnd: rnd, index: index}
	res, err := a.apply(EncodeClaimEpoch())
	if err != nil {
		return nil, err
	}
	a.epoch = binary.BigEndian.Uint64(res.Data)
	t, _ := g.Tail()
	a.ordinal, a.seq = t.Ordinal, t.State[0].Seq
	if t.File == 0 {
		if err := a.must([]Item{newFile("m.000001", binlog.Position{})}, 0); err != nil {
			return nil, err
		}
	}
	return a, nil
}

func (a *appender) apply(cmd []byte) (sm.Result, error) {
	a.index++
	out, err := a.g.Update([]sm.Entry{{Index: a.index, Cmd: cmd}})
	if err != nil {
		return sm.Result{}, err
	}
	return out[0].Result, nil
}

func (a *appender) must(items []Item, txns uint64) error {
	r, err := a.apply((&Append{Epoch: a.epoch, PrevOrdinal: a.ordinal, Items: items}).Encode())
	if err != nil {
		return err
	}
	if r.Value != ResultOK {
		return fmt.Errorf("rejected: %s", r.Data)
	}
	a.ordinal += txns
	return nil
}

// leavePending applies the first piece of a transaction and not the rest, as a
// leader that loses its term mid-transaction does: half the time the piece ends
// inside an event cut across pieces, so its checksum state is pending too.
func (a *appender) leavePending() error {
	ev := txnEvents(gt(a.seq+1), 1000)
	cut := binlog.HeaderLen + 13 + binlog.ChecksumLen // after the GTID event
	if a.rnd.IntN(2) == 0 {
		cut = len(ev) - 31 - 500 // inside the row event (the XID event is 31 bytes)
	}
	return a.must([]Item{{Txn: &Txn{GTID: gt(a.seq + 1), First: true, Events: ev[:cut]}}}, 0)
}

// step applies one command (two for a split transaction) and reports whether it then
// synced: everything appended so far must survive any crash from then on.
func (a *appender) step() (synced bool, err error) {
	n, syncOdds := 40, 3
	if a.bulk {
		n, syncOdds = 5, 9
	}
	switch r := a.rnd.IntN(n); {
	case r == 0:
		if err := a.must([]Item{newFile(fmt.Sprintf("m.%06d", a.seq), nil)}, 0); err != nil {
			return false, err
		}
		// Purge everything but the new file, often right away: its first records
		// are then all that is left. A purge fsyncs: a bulk load's is rarer, so
		// that files closed without one pile up.
		purgeOdds := 2
		if a.bulk {
			purgeOdds = 4
		}
		if a.purge && a.rnd.IntN(purgeOdds) == 0 {
			t, _ := a.g.Tail()
			if res, err := a.apply(EncodePurge(t.File)); err != nil || res.Value != ResultOK {
				return false, fmt.Errorf("purge before %d: %v %s", t.File, err, res.Data)
			}
		}
	case r < 4:
		a.seq++
		ev := txnEvents(gt(a.seq), 30000+a.rnd.IntN(300000))
		cut := binlog.HeaderLen + 13 + binlog.ChecksumLen // after the GTID event
		if err := a.must([]Item{{Txn: &Txn{GTID: gt(a.seq), First: true, Events: ev[:cut]}}}, 0); err != nil {
			return false, err
		}
		if err := a.must([]Item{{Txn: &Txn{GTID: gt(a.seq), Last: true, Events: ev[cut:]}}}, 1); err != nil {
			return false, err
		}
	default:
		var items []Item
		for n := 1 + a.rnd.IntN(20); n > 0; n-- {
			a.seq++
			items = append(items, txn(gt(a.seq), 50+a.rnd.IntN(20000)))
		}
		if err := a.must(items, uint64(len(items))); err != nil {
			return false, err
		}
	}
	a.maxUnsynced = max(a.maxUnsynced, a.g.unsyncedCloses)
	if a.rnd.IntN(syncOdds) != 0 {
		return false, nil
	}
	return true, a.g.Sync()
}

// TestCrashRecovery kills an appending process with SIGKILL at random moments, 50
// times, and checks after every restart that the group's state is a valid prefix of
// what was appended and that the GTID index agrees with the segments.
func TestCrashRecovery(t *testing.T) {
	rounds := 50
	if testing.Short() {
		rounds = 10
	}
	dir := t.TempDir()
	rnd := rand.New(rand.NewPCG(42, 42))
	var lastSeq uint64
	syncedRounds := 0
	for round := 0; round < rounds; round++ {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), crashChildEnv+"="+dir)
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		br := bufio.NewReader(out)
		line, err := br.ReadString('\n')
		if err != nil || line != "ready\n" {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("round %d: child did not start: %q %v", round, line, err)
		}
		// The child reports each Sync: what it synced must survive.
		synced := make(chan uint64, 1)
		go func() {
			var last uint64
			for {
				line, err := br.ReadString('\n')
				if err != nil {
					synced <- last
					return
				}
				fmt.Sscanf(line, "synced %d", &last)
			}
		}()
		// Random crash time (not a synchronisation: any moment must be safe).
		time.Sleep(time.Duration(5+rnd.IntN(250)) * time.Millisecond)
		if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		durable := <-synced
		cmd.Wait()

		h := newHarness(t, dir)
		seq := verifyPrefix(t, h, rnd)
		h.close()
		if seq < lastSeq {
			t.Fatalf("round %d: state went back from transaction %d to %d", round, lastSeq, seq)
		}
		if seq < durable {
			t.Fatalf("round %d: the child synced %d transactions but only %d survived", round, durable, seq)
		}
		if durable > 0 {
			syncedRounds++
		}
		lastSeq = seq
	}
	if syncedRounds == 0 {
		t.Fatal("no round synced anything: the durability check never ran")
	}
	t.Logf("%d SIGKILL rounds (%d after a Sync); %d transactions survived, each state a valid prefix with a consistent index holding everything synced", rounds, syncedRounds, lastSeq)
}

// verifyPrefix checks a store just opened like a restarted node's; it returns the
// last transaction's sequence number.
func verifyPrefix(t *testing.T, h *harness, rnd *rand.Rand) uint64 {
	t.Helper()
	tail, _ := h.g.Tail()
	if tail.File == 0 {
		return 0
	}
	// Transactions before the oldest file held were purged.
	base := h.g.fileStart(tail.FirstFile)[0].Seq
	seq := base
	var starts []Start
	prev := byte(0) // the previous record's type (none yet)
	// eachRecord checks every log_pos and checksum too.
	eachRecord(t, h.g, Start{File: tail.FirstFile, Served: 4}, func(r Record) {
		switch r.Type {
		case recHeader:
			if prev != 0 && prev != recRotate {
				t.Fatalf("file %d starts without the previous file's Rotate", r.File)
			}
		case recTxn:
			g, ok := TxnGTID(r.Payload)
			if !ok || g.Seq != seq+1 {
				t.Fatalf("after transaction %d comes %v: a gap, a duplicate or a torn record", seq, g)
			}
			seq = g.Seq
			starts = append(starts, Start{File: r.File, Served: r.Pos})
		}
		prev = r.Type
	})
	if tail.Ordinal != seq || tail.State[0].Seq != seq {
		t.Fatalf("index says %d transactions ending at %v, segments hold %d", tail.Ordinal, tail.State, seq)
	}
	// The index finds every sampled transaction where the segments have it.
	for i := 0; i < 40 && len(starts) > 1; i++ {
		i := 1 + rnd.IntN(len(starts)-1)
		k := base + uint64(i) // transaction k+1 follows transaction k
		s, err := h.g.Locate(binlog.Position{0: gt(k)})
		if err != nil {
			t.Fatalf("locate after transaction %d: %v", k, err)
		}
		c, err := h.g.NewCursor(s)
		if err != nil {
			t.Fatal(err)
		}
		for {
			r, err := c.Next(tail)
			if errors.Is(err, ErrAtTail) || err != nil {
				t.Fatalf("nothing after transaction %d: %v", k, err)
			}
			if r.IsHeader() || r.IsRotate() {
				continue // the Rotate and header between files
			}
			if g, _ := TxnGTID(r.Payload); g.Seq != k+1 || r.Pos != starts[i].Served {
				t.Fatalf("index points after transaction %d to %v at %d, segments have it at %d", k, g, r.Pos, starts[i].Served)
			}
			break
		}
		c.Close()
	}
	return seq
}
