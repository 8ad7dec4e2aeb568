package bench

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// diskFloor measures, on the filesystem of dir, what every durable write of the run
// pays at least, so a report shows what bounds its ratios: the latency of making a
// 4 KiB append durable (each raft save of a small proposal makes one on every
// replica before it counts toward the quorum), and the bandwidth of 4 MiB direct
// writes each made durable (each ingested byte is made durable twice on every
// replica: in the raft log's payload file and in its segment; the raw-copy baseline
// writes it once and syncs once at its end).
func diskFloor(b *testing.B, dir string) string {
	b.Helper()
	path := filepath.Join(dir, "disk-floor")
	defer os.Remove(path)
	f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		b.Fatal(err)
	}
	page := make([]byte, 4096)
	lat := make([]time.Duration, 0, 200)
	for range cap(lat) {
		t0 := time.Now()
		if _, err := f.Write(page); err != nil {
			b.Fatal(err)
		}
		if err := syscall.Fdatasync(int(f.Fd())); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(t0))
	}
	f.Close()
	slices.Sort(lat)

	// Direct writes where the filesystem takes them (a 4 MiB buffer of a 4 MiB
	// allocation is aligned enough), buffered ones otherwise.
	how := "direct"
	f, err = os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY|syscall.O_DIRECT, 0o644)
	if err != nil {
		how = "buffered"
		if f, err = os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644); err != nil {
			b.Fatal(err)
		}
	}
	defer func() { f.Close() }() // the file written last, should EINVAL reopen it
	const chunk, total = 4 << 20, 128 << 20
	buf := make([]byte, chunk)
	for i := range buf {
		buf[i] = byte(i)
	}
	t0 := time.Now()
	for off := int64(0); off < total; off += chunk {
		_, err := f.WriteAt(buf, off)
		if errors.Is(err, syscall.EINVAL) && how == "direct" && off == 0 {
			// The filesystem took O_DIRECT at open but refuses this buffer's alignment.
			f.Close()
			how = "buffered"
			if f, err = os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644); err == nil {
				_, err = f.WriteAt(buf, off)
			}
		}
		if err != nil {
			b.Fatal(err)
		}
		if err := syscall.Fdatasync(int(f.Fd())); err != nil {
			b.Fatal(err)
		}
	}
	bw := float64(total) / time.Since(t0).Seconds() / 1e6
	s := fmt.Sprintf("disk under the run's data: fdatasync of a 4 KiB append p50 %d µs, p99 %d µs (of 200); 4 MiB %s writes each made durable %.0f MB/s",
		lat[len(lat)/2].Microseconds(), lat[len(lat)*99/100].Microseconds(), how, bw)
	fmt.Println("  " + s)
	return s
}

// deviceWritten is how many bytes the block device holding dir has written so far
// (its sectors written, from /sys/dev/block), or false where that cannot be read. A
// report gives it per ingested byte: what the node's durable copies cost the disk,
// against the raw copy's one.
func deviceWritten(dir string) (uint64, bool) {
	var st syscall.Stat_t
	if err := syscall.Stat(dir, &st); err != nil {
		return 0, false
	}
	raw, err := os.ReadFile(fmt.Sprintf("/sys/dev/block/%d:%d/stat", unix.Major(st.Dev), unix.Minor(st.Dev)))
	if err != nil {
		return 0, false
	}
	f := strings.Fields(string(raw))
	if len(f) < 7 {
		return 0, false
	}
	sectors, err := strconv.ParseUint(f[6], 10, 64)
	return sectors * 512, err == nil
}

// diskNote says what the disk under dir wrote while ingested bytes arrived in took,
// given deviceWritten's reading from before.
func diskNote(dir string, before uint64, okBefore bool, ingested uint64, took time.Duration) string {
	after, ok := deviceWritten(dir)
	if !ok || !okBefore || ingested == 0 {
		return "the disk's writes could not be read (/sys/dev/block)"
	}
	w := after - before
	return fmt.Sprintf("the disk under the data wrote %.0f MB (%.2f bytes per ingested byte; %.0f MB/s over the ingest)",
		float64(w)/1e6, float64(w)/float64(ingested), float64(w)/1e6/took.Seconds())
}

// settleDisk writes out what the page cache holds unwritten for the filesystem of
// dir (syncfs(2), which also commits its journal) and returns how much the page
// cache held (Dirty and Writeback in /proc/meminfo, machine-wide; 0 where
// unreadable). Each timed copy, ingest and commit run starts with it, baseline and
// Flotilla alike, so that none runs with what the phases before left to the kernel
// (the master's lazily written binlog and redo, removed copies). In the session
// that added it, the 3-replica ingest's disk ran at 0.93-1.24 GB/s in ten runs
// without it and at 1.22-1.44 GB/s in seven with it (which leftover mattered was
// not isolated; see README, release 0.47).
func settleDisk(b testing.TB, dir string) uint64 {
	b.Helper()
	var pending uint64
	if raw, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, l := range strings.Split(string(raw), "\n") {
			if f := strings.Fields(l); len(f) >= 2 && (f[0] == "Dirty:" || f[0] == "Writeback:") {
				kb, _ := strconv.ParseUint(f[1], 10, 64)
				pending += kb << 10
			}
		}
	}
	d, err := os.Open(dir)
	if err != nil {
		b.Fatalf("settle the disk: %v", err)
	}
	defer d.Close()
	if err := unix.Syncfs(int(d.Fd())); err != nil {
		b.Fatalf("settle the disk: syncfs %s: %v", dir, err)
	}
	return pending
}

// settledNote completes a diskNote with what settleDisk wrote out before the phase.
func settledNote(settled uint64) string {
	return fmt.Sprintf(", after the page cache's %.0f MB unwritten were written out", float64(settled)/1e6)
}
