// Package bench measures Flotilla against baselines taken in the same run and prints
// each figure beside its baseline and the ratio. Run with `make bench`.
package bench

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"syscall"
	"testing"
	"time"

	sm "github.com/lni/dragonboat/v3/statemachine"

	"github.com/flotilla-relay/flotilla/internal/binlog"
	"github.com/flotilla-relay/flotilla/internal/directio"
	"github.com/flotilla-relay/flotilla/statemachine"
)

const serverID = 1

// txn builds one row transaction of about size bytes.
func txn(seq uint64, size int) []byte {
	g := binlog.GTID{Domain: 0, Server: serverID, Seq: seq}
	var b []byte
	b = append(b, binlog.NewGTIDEvent(g, 0, true)...)
	b = append(b, binlog.NewQuery(serverID, "db", "BEGIN", true)...)
	b = append(b, binlog.NewOpaque(binlog.TableMapEvent, serverID, 40, true)...)
	b = append(b, binlog.NewOpaque(30, serverID, max(size-200, 10), true)...)
	b = append(b, binlog.NewXID(serverID, seq, true)...)
	return b
}

// writer drives a group's state machine directly, as raft would after commit.
type writer struct {
	g       *statemachine.Group
	store   *statemachine.Store
	index   uint64
	epoch   uint64
	ordinal uint64
	seq     uint64
}

func newWriter(tb testing.TB, dir string) *writer { return newWriterIO(tb, dir, false) }

// newWriterIO is newWriter with the store's segments written with direct I/O, as a
// node writes them, when direct is set (and the platform has it).
func newWriterIO(tb testing.TB, dir string, direct bool) *writer {
	st, err := statemachine.Open(dir, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		tb.Fatal(err)
	}
	st.SetDirectIO(direct)
	g := st.NewGroup(2, 1).(*statemachine.Group)
	idx, err := g.Open(nil)
	if err != nil {
		tb.Fatal(err)
	}
	w := &writer{g: g, store: st, index: idx}
	res := w.apply(tb, statemachine.EncodeClaimEpoch())
	w.epoch = binary.BigEndian.Uint64(res.Data)
	w.mustAppend(tb, []statemachine.Item{{NewFile: &statemachine.NewFile{ServerID: serverID, UpstreamFile: "m.000001",
		FDE: binlog.NewFDE(serverID, "10.11.6-MariaDB-log", true), BaseState: binlog.Position{}}}}, 0)
	return w
}

func (w *writer) close() { w.g.Close(); w.store.Close() }

func (w *writer) apply(tb testing.TB, cmd []byte) sm.Result {
	w.index++
	out, err := w.g.Update([]sm.Entry{{Index: w.index, Cmd: cmd}})
	if err != nil {
		tb.Fatal(err)
	}
	return out[0].Result
}

func (w *writer) mustAppend(tb testing.TB, items []statemachine.Item, txns uint64) {
	r := w.apply(tb, (&statemachine.Append{Epoch: w.epoch, PrevOrdinal: w.ordinal, Items: items}).Encode())
	if r.Value != statemachine.ResultOK {
		tb.Fatalf("append rejected: %s", r.Data)
	}
	w.ordinal += txns
}

// batch returns batchBytes worth of transactions of txnSize bytes, as Append items.
func (w *writer) batch(batchBytes, txnSize int) ([]statemachine.Item, int) {
	var items []statemachine.Item
	n := 0
	for n < batchBytes {
		w.seq++
		ev := txn(w.seq, txnSize)
		items = append(items, statemachine.Item{Txn: &statemachine.Txn{GTID: binlog.GTID{Server: serverID, Seq: w.seq}, First: true, Last: true, Events: ev}})
		n += len(ev)
	}
	return items, n
}

func report(b *testing.B, what string, figure, baseline float64, unit string) {
	ratio := figure / baseline
	b.ReportMetric(figure, unit)
	b.ReportMetric(baseline, "baseline-"+unit)
	b.ReportMetric(ratio, "ratio")
	fmt.Printf("%-44s %10.3f %-6s baseline %10.3f %-6s ratio %.5f\n", what, figure, unit, baseline, unit, ratio)
}

// BenchmarkAppend: segment append + index throughput with an fsync (Sync) per raft
// batch, against writing the same bytes to a plain file with one fsync per batch.
// Rounds alternate which goes first; the median ratio is reported.
func BenchmarkAppend(b *testing.B) { benchAppend(b, 1, "Sync per 1 MiB batch") }

// BenchmarkAppendSyncEvery64: the same, with the state machine's Sync every 64
// batches, which is closer to production: dragonboat makes each batch durable in its
// raft log and calls Sync only before compacting it. The plain file still fsyncs every
// batch.
func BenchmarkAppendSyncEvery64(b *testing.B) { benchAppend(b, 64, "Sync every 64 batches") }

func benchAppend(b *testing.B, syncEvery int, label string) {
	const batchBytes, txnSize, batches, rounds = 1 << 20, 16 << 10, 256, 3
	dir := b.TempDir()
	for i := 0; i < b.N; i++ {
		var ratios, flo, pla []float64
		var mb float64
		for r := 0; r < rounds; r++ {
			w := newWriter(b, filepath.Join(dir, fmt.Sprintf("flotilla-%d-%d", i, r)))
			// Entries arrive at storage already encoded by the proposer (raft carries
			// bytes); encoding is the leader's work and is not timed here.
			cmds := make([][]byte, batches)
			raw := make([][]byte, batches)
			var total int
			for j := range cmds {
				items, _ := w.batch(batchBytes, txnSize)
				for _, it := range items {
					raw[j] = append(raw[j], it.Txn.Events...)
				}
				cmds[j] = (&statemachine.Append{Epoch: w.epoch, PrevOrdinal: w.ordinal, Items: items}).Encode()
				w.ordinal += uint64(len(items))
				total += len(raw[j])
			}
			mb = float64(total) / (1 << 20)
			runFlotilla := func() time.Duration {
				start := time.Now()
				for j := range cmds {
					if r := w.apply(b, cmds[j]); r.Value != statemachine.ResultOK {
						b.Fatalf("append rejected: %s", r.Data)
					}
					if (j+1)%syncEvery == 0 || j == len(cmds)-1 {
						if err := w.g.Sync(); err != nil {
							b.Fatal(err)
						}
					}
				}
				return time.Since(start)
			}
			runPlain := func() time.Duration {
				f, err := os.Create(filepath.Join(dir, fmt.Sprintf("plain-%d-%d", i, r)))
				if err != nil {
					b.Fatal(err)
				}
				defer f.Close()
				start := time.Now()
				for j := range raw {
					if _, err := f.Write(raw[j]); err != nil {
						b.Fatal(err)
					}
					if err := f.Sync(); err != nil {
						b.Fatal(err)
					}
				}
				return time.Since(start)
			}
			var tf, tp time.Duration
			if r%2 == 0 {
				tf, tp = runFlotilla(), runPlain()
			} else {
				tp, tf = runPlain(), runFlotilla()
			}
			w.close()
			flo = append(flo, mb/tf.Seconds())
			pla = append(pla, mb/tp.Seconds())
			ratios = append(ratios, tp.Seconds()/tf.Seconds())
		}
		m := median(ratios)
		for k := range ratios {
			if ratios[k] == m {
				report(b, fmt.Sprintf("append %d MiB, %s (median of %d)", int(mb), label, rounds), flo[k], pla[k], "MB/s")
			}
		}
	}
}

// BenchmarkApplyCPU: the CPU a replica spends applying large transactions (3 MiB
// row events, 4 MiB raft entries, segments written with direct I/O as a node writes
// them, one Sync at the end), against writing the same bytes once to a file with
// direct I/O and one fsync: CPU (user and system, this process) per GiB. Its own
// baseline moves with the machine, so compare ratios.
func BenchmarkApplyCPU(b *testing.B) {
	const entryBytes, txnSize, entries = 4 << 20, 3 << 20, 64
	dir := b.TempDir()
	for i := 0; i < b.N; i++ {
		w := newWriterIO(b, filepath.Join(dir, fmt.Sprintf("flotilla-%d", i)), true)
		if !w.store.DirectIO() {
			w.close()
			if os.Getenv("CI") != "" {
				b.Fatal("no direct I/O here, and the figure is of the direct path: CI must run where the filesystem takes O_DIRECT")
			}
			b.Skip("no direct I/O here: the figure is of the direct path")
		}
		cmds := make([][]byte, entries)
		var raw []byte
		for j := range cmds {
			items, _ := w.batch(entryBytes, txnSize)
			for _, it := range items {
				raw = append(raw, it.Txn.Events...)
			}
			cmds[j] = (&statemachine.Append{Epoch: w.epoch, PrevOrdinal: w.ordinal, Items: items}).Encode()
			w.ordinal += uint64(len(items))
		}
		gib := float64(len(raw)) / (1 << 30)
		c0 := cpuTime(b)
		for _, cmd := range cmds {
			if r := w.apply(b, cmd); r.Value != statemachine.ResultOK {
				b.Fatalf("append rejected: %s", r.Data)
			}
		}
		if err := w.g.Sync(); err != nil {
			b.Fatal(err)
		}
		flo := (cpuTime(b) - c0).Seconds() * 1000 / gib
		w.close()
		c0 = cpuTime(b)
		if err := writeDirect(filepath.Join(dir, fmt.Sprintf("plain-%d", i)), raw); err != nil {
			b.Fatal(err)
		}
		plain := (cpuTime(b) - c0).Seconds() * 1000 / gib
		report(b, fmt.Sprintf("apply CPU, %d MiB of 3 MiB rows", len(raw)>>20), flo, plain, "cpu-ms/GiB")
	}
}

// cpuTime is the CPU time (user and system) this process used so far.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// writeDirect writes p to a new file at path with direct I/O, 1 MiB at a time from
// an aligned buffer (the copy a direct write needs), and fsyncs it.
func writeDirect(path string, p []byte) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|directio.Flag, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	buf := directio.Aligned(1 << 20)
	for off := 0; off < len(p); off += len(buf) {
		n := copy(buf, p[off:])
		if _, err := f.Write(buf[:(n+directio.Block-1)&^(directio.Block-1)]); err != nil {
			return err
		}
	}
	return f.Sync()
}

func median(v []float64) float64 {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	return s[len(s)/2]
}

// BenchmarkSeek: time to find where to start a replica's dump for a random GTID in a
// group holding FLOTILLA_BENCH_SEEK_GB (default 10) GiB, against a linear scan.
func BenchmarkSeek(b *testing.B) {
	gb := 10.0
	if v := os.Getenv("FLOTILLA_BENCH_SEEK_GB"); v != "" {
		gb, _ = strconv.ParseFloat(v, 64)
	}
	const txnSize = 64 << 10
	dir := b.TempDir()
	w := newWriter(b, dir)
	defer w.close()
	target := int64(gb * (1 << 30))
	var written int64
	for written < target {
		items, n := w.batch(4<<20, txnSize)
		w.mustAppend(b, items, uint64(len(items)))
		written += int64(n)
		if w.seq%20000 < uint64(len(items)) { // a new served file every ~1.2 GiB, as a master rotates
			w.mustAppend(b, []statemachine.Item{{NewFile: &statemachine.NewFile{ServerID: serverID, UpstreamFile: fmt.Sprintf("m.%06d", w.seq),
				FDE: binlog.NewFDE(serverID, "10.11.6-MariaDB-log", true)}}}, 0)
		}
	}
	if err := w.g.Sync(); err != nil {
		b.Fatal(err)
	}
	rnd := rand.New(rand.NewPCG(1, 2))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		const seeks = 1000
		start := time.Now()
		for j := 0; j < seeks; j++ {
			seq := 1 + rnd.Uint64N(w.seq)
			if _, err := w.g.Locate(binlog.Position{0: {Domain: 0, Server: serverID, Seq: seq}}); err != nil {
				b.Fatal(err)
			}
		}
		seek := time.Since(start) / seeks
		// Baseline: read records from the first file until the GTID shows up.
		const scans = 3
		start = time.Now()
		for j := 0; j < scans; j++ {
			seq := 1 + rnd.Uint64N(w.seq)
			if err := linearScan(w.g, seq); err != nil {
				b.Fatal(err)
			}
		}
		scan := time.Since(start) / scans
		report(b, fmt.Sprintf("seek GTID in %.1f GiB (%d txns)", float64(written)/(1<<30), w.seq), float64(seek.Microseconds())/1000, float64(scan.Microseconds())/1000, "ms")
	}
}

func linearScan(g *statemachine.Group, seq uint64) error {
	c, err := g.NewCursor(statemachine.Start{File: 1, Served: 4})
	if err != nil {
		return err
	}
	defer c.Close()
	t, _ := g.Tail()
	for {
		rec, err := c.Next(t)
		if errors.Is(err, statemachine.ErrAtTail) {
			return fmt.Errorf("GTID 0-%d-%d not found", serverID, seq)
		}
		if err != nil {
			return err
		}
		if id, ok := statemachine.TxnGTID(rec.Payload); ok && !rec.Continued && id.Seq == seq {
			return nil
		}
	}
}
