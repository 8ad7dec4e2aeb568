package mariadbtest

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// TestCopySparse: the copy has the source's bytes, and its zero blocks take no
// space.
func TestCopySparse(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	data := make([]byte, 4<<20+123) // zeros but for a few bytes at each end
	copy(data, "head")
	copy(data[len(data)-4:], "tail")
	if err := os.WriteFile(src, data, 0o640); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(dir, "dst")
	if err := copySparse(src, dst, 0o640); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(dst)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("the copy differs from its source (%d bytes, want %d)", len(got), len(data))
	}
	var st syscall.Stat_t
	if err := syscall.Stat(dst, &st); err != nil {
		t.Fatal(err)
	}
	if used := st.Blocks * 512; used > 1<<20 {
		t.Errorf("the copy of a file of zeros but 8 bytes uses %d bytes on disk: holes were written", used)
	}
	if err := copySparse(src, dst, 0o640); err == nil {
		t.Error("copySparse overwrote an existing file")
	}
}

// TestServersFromTheTemplateAreIndependent: two servers copied from the one
// template share nothing (what one writes the other does not see).
func TestServersFromTheTemplateAreIndependent(t *testing.T) {
	RequireTools(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var servers []*Server
	for i := range 2 {
		s, err := Start(ctx, filepath.Join(t.TempDir(), "s"), Options{ServerID: uint32(i + 1)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Kill() })
		servers = append(servers, s)
	}
	if err := servers[0].Exec(ctx, "CREATE DATABASE only_in_first"); err != nil {
		t.Fatal(err)
	}
	if n, err := servers[1].QueryValue(ctx, "SELECT COUNT(*) FROM information_schema.schemata WHERE schema_name = 'only_in_first'"); err != nil || n != "0" {
		t.Fatalf("the second server sees the first's database: %q, %v", n, err)
	}
	if n, err := servers[1].QueryValue(ctx, "SELECT COUNT(*) FROM mysql.user WHERE user = 'root'"); err != nil || n == "0" {
		t.Fatalf("the copied server has no root user: %q, %v", n, err)
	}
}
