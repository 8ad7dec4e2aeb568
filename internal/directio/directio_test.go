package directio

import (
	"bytes"
	"log/slog"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
)

func TestAligned(t *testing.T) {
	for _, n := range []int{0, 1, Block, 3*Block + 17, 1 << 20} {
		b := Aligned(n)
		if len(b) != n || cap(b) != n {
			t.Fatalf("Aligned(%d): len %d cap %d", n, len(b), cap(b))
		}
		if n > 0 && !IsAligned(b) {
			t.Fatalf("Aligned(%d) is not %d-aligned", n, Block)
		}
		if n > 1 && IsAligned(b[1:]) {
			t.Fatalf("IsAligned of an offset slice: true")
		}
	}
}

func TestRefusal(t *testing.T) {
	var out bytes.Buffer
	s := Switch{On: new(atomic.Bool), Log: slog.New(slog.NewTextHandler(&out, nil)), What: "raft payload files"}
	s.On.Store(true)
	s.Refused("/data/raft/payloads/5-1/0000000000000001.pay", syscall.EINVAL)
	s.Refused("/data/raft/payloads/6-1/0000000000000001.pay", syscall.EINVAL)
	if s.On.Load() {
		t.Fatal("direct I/O still reported on after a refusal")
	}
	if n := strings.Count(out.String(), "refused direct I/O"); n != 1 {
		t.Fatalf("the refusal was logged %d times, want once:\n%s", n, out.String())
	}
	if !strings.Contains(out.String(), "5-1") || !strings.Contains(out.String(), "for raft payload files") {
		t.Fatalf("the log does not name the refused file and what it holds:\n%s", out.String())
	}
}
