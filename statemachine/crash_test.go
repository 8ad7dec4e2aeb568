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

// crashChild appends forever, as the apply loop of a busy group would: batches of
// random size, transactions split over several entries, file rotations, and a Sync
// now and then. The parent kills it at a random moment.
func crashChild(dir string) error {
	st, err := Open(dir, discardLog())
	if err != nil {
		return err
	}
	st.SetSegmentSize(64 << 10) // many parts: kills land around rolls too
	g := st.NewGroup(5, 1).(*Group)
	index, err := g.Open(nil)
	if err != nil {
		return err
	}
	apply := func(cmd []byte) (sm.Result, error) {
		index++
		out, err := g.Update([]sm.Entry{{Index: index, Cmd: cmd}})
		if err != nil {
			return sm.Result{}, err
		}
		return out[0].Result, nil
	}
	res, err := apply(EncodeClaimEpoch())
	if err != nil {
		return err
	}
	epoch := binary.BigEndian.Uint64(res.Data)
	t, _ := g.Tail()
	ordinal, seq := t.Ordinal, t.State[0].Seq
	rnd := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 7))
	must := func(items []Item, txns uint64) error {
		r, err := apply((&Append{Epoch: epoch, PrevOrdinal: ordinal, Items: items}).Encode())
		if err != nil {
			return err
		}
		if r.Value != ResultOK {
			return fmt.Errorf("rejected: %s", r.Data)
		}
		ordinal += txns
		return nil
	}
	if t.File == 0 {
		if err := must([]Item{newFile("m.000001", binlog.Position{})}, 0); err != nil {
			return err
		}
	}
	fmt.Println("ready")
	for {
		switch r := rnd.IntN(40); {
		case r == 0:
			if err := must([]Item{newFile(fmt.Sprintf("m.%06d", seq), nil)}, 0); err != nil {
				return err
			}
		case r < 4:
			seq++
			ev := txnEvents(gt(seq), 30000+rnd.IntN(300000))
			cut := binlog.HeaderLen + 13 + binlog.ChecksumLen // after the GTID event
			if err := must([]Item{{Txn: &Txn{GTID: gt(seq), First: true, Events: ev[:cut]}}}, 0); err != nil {
				return err
			}
			if err := must([]Item{{Txn: &Txn{GTID: gt(seq), Last: true, Events: ev[cut:]}}}, 1); err != nil {
				return err
			}
		default:
			var items []Item
			for n := 1 + rnd.IntN(20); n > 0; n-- {
				seq++
				items = append(items, txn(gt(seq), 50+rnd.IntN(20000)))
			}
			if err := must(items, uint64(len(items))); err != nil {
				return err
			}
		}
		if rnd.IntN(3) == 0 {
			if err := g.Sync(); err != nil {
				return err
			}
			// Everything up to here must survive the kill (the parent checks).
			fmt.Println("synced", ordinal)
		}
	}
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

		seq := verifyPrefix(t, dir, rnd)
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

// verifyPrefix opens the store like a restarted node and checks it; it returns the
// last transaction's sequence number.
func verifyPrefix(t *testing.T, dir string, rnd *rand.Rand) uint64 {
	t.Helper()
	h := newHarness(t, dir)
	defer h.close()
	tail, _ := h.g.Tail()
	if tail.File == 0 {
		return 0
	}
	recs := readAll(t, h.g, Start{File: 1, Served: 4}) // checks log_pos and checksums too
	var seq uint64
	var starts []Start
	for i, r := range recs {
		switch r.Type {
		case recHeader:
			if i > 0 && recs[i-1].Type != recRotate {
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
	}
	if tail.Ordinal != seq || tail.State[0].Seq != seq {
		t.Fatalf("index says %d transactions ending at %v, segments hold %d", tail.Ordinal, tail.State, seq)
	}
	// The index finds every sampled transaction where the segments have it.
	for i := 0; i < 40 && len(starts) > 1; i++ {
		k := 1 + rnd.IntN(len(starts)-1) // transaction k+1 follows transaction k
		s, err := h.g.Locate(binlog.Position{0: gt(uint64(k))})
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
			if r.Type != recTxn {
				continue // the Rotate and header between files
			}
			if g, _ := TxnGTID(r.Payload); g.Seq != uint64(k+1) || r.Pos != starts[k].Served {
				t.Fatalf("index points after transaction %d to %v at %d, segments have it at %d", k, g, r.Pos, starts[k].Served)
			}
			break
		}
		c.Close()
	}
	return seq
}
