package mariadbtest

import (
	"bytes"
	"context"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestServer starts one server (startup dominates the runtime) and checks the
// harness basics, then the workload, against it.
func TestServer(t *testing.T) {
	RequireTools(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	s, err := Start(ctx, t.TempDir(), Options{ServerID: 1, DomainID: 0, LogBin: true})
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			_ = s.Kill()
		}
	})

	t.Run("Basics", func(t *testing.T) { testBasics(ctx, t, s) })
	t.Run("Workload", func(t *testing.T) { testWorkload(ctx, t, s) })

	// Without root@127.0.0.1 the restart below must repair TCP root login
	// over the unix socket.
	if err := s.Exec(ctx, "DROP USER 'root'@'127.0.0.1'"); err != nil {
		t.Fatal(err)
	}
	stopped = true
	if err := s.Stop(); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if err := s.Stop(); err != nil {
		t.Fatalf("second Stop: %v", err)
	}
	if err := s.Exec(ctx, "SELECT 1"); err == nil {
		t.Fatal("Exec after Stop succeeded")
	}

	// Restart on the same data and port, as a master-restart test would.
	s2, err := Start(ctx, s.Dir(), Options{ServerID: 1, LogBin: true, Port: s.Port()})
	if err != nil {
		t.Fatalf("restart: %v", err)
	}
	defer s2.Kill()
	if s2.Addr() != s.Addr() {
		t.Errorf("restart address %s, want %s", s2.Addr(), s.Addr())
	}
	if n, err := s2.QueryValue(ctx, "SELECT COUNT(*) FROM relaytest.blobs"); err != nil || n != "4" {
		t.Errorf("after restart: blobs = %q, %v", n, err)
	}
	if n, err := s2.QueryValue(ctx, "SELECT COUNT(*) FROM mysql.user WHERE user = 'root' AND host = '127.0.0.1'"); err != nil || n != "1" {
		t.Errorf("after restart: root@127.0.0.1 not recreated: %q, %v", n, err)
	}
	if err := s2.Kill(); err != nil {
		t.Fatalf("Kill: %v", err)
	}
}

func testBasics(ctx context.Context, t *testing.T, s *Server) {
	if !strings.HasPrefix(s.Addr(), "127.0.0.1:") || s.Port() == 0 || s.Dir() == "" {
		t.Fatalf("bad address/port/dir: %q %d %q", s.Addr(), s.Port(), s.Dir())
	}
	for q, want := range map[string]string{
		"SELECT @@log_bin":              "1",
		"SELECT @@binlog_format":        "ROW",
		"SELECT @@server_id":            "1",
		"SELECT CURRENT_USER()":         "root@127.0.0.1",
		"SELECT @@character_set_client": "utf8mb4",
	} {
		got, err := s.QueryValue(ctx, q)
		if err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Errorf("%s = %q, want %q", q, got, want)
		}
	}

	if err := s.Exec(ctx, "CREATE DATABASE basics"); err != nil {
		t.Fatal(err)
	}
	if err := s.Exec(ctx, "CREATE TABLE basics.big (id INT PRIMARY KEY, note VARCHAR(10) NULL, data LONGBLOB) ENGINE=InnoDB"); err != nil {
		t.Fatal(err)
	}
	blob := bytes.Repeat([]byte("0123456789abcdef\x00\xff"), 5<<20/18+1)[:5<<20]
	if err := s.Exec(ctx, "INSERT INTO basics.big VALUES (?, ?, ?)", 1, nil, blob); err != nil {
		t.Fatal(err)
	}
	rows, err := s.Query(ctx, "SELECT id, note, LENGTH(data), data = ? FROM basics.big", blob)
	if err != nil {
		t.Fatal(err)
	}
	if want := [][]string{{"1", "NULL", strconv.Itoa(5 << 20), "1"}}; !equalRows(rows, want) {
		t.Fatalf("rows = %v, want %v", rows, want)
	}
	back, err := s.QueryValue(ctx, "SELECT data FROM basics.big WHERE id = 1")
	if err != nil {
		t.Fatal(err)
	}
	if back != string(blob) {
		t.Fatalf("blob read back differs (len %d)", len(back))
	}

	sums, err := TableChecksums(ctx, s, "basics")
	if err != nil {
		t.Fatal(err)
	}
	if len(sums) != 1 || !strings.HasPrefix(sums["basics.big"], "count=1 checksum=") {
		t.Fatalf("TableChecksums = %v", sums)
	}

	if err := s.CreateReplUser(ctx, "repl", "p'w"); err != nil {
		t.Fatal(err)
	}
	if n, err := s.QueryValue(ctx, "SELECT COUNT(*) FROM mysql.user WHERE user = 'repl'"); err != nil || n != "2" {
		t.Fatalf("repl users = %q, %v", n, err)
	}

	wctx, wcancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer wcancel()
	if err := s.WaitFor(wctx, "SELECT 2", "3"); err == nil || !strings.Contains(err.Error(), `last value "2"`) {
		t.Fatalf("WaitFor mismatch error = %v", err)
	}
	if err := s.WaitFor(ctx, "SELECT COUNT(*) FROM basics.big", "1"); err != nil {
		t.Fatal(err)
	}
}

func testWorkload(ctx context.Context, t *testing.T, s *Server) {
	logsBefore, err := s.Query(ctx, "SHOW BINARY LOGS")
	if err != nil {
		t.Fatal(err)
	}
	const steps = 3
	for step := 0; step < steps; step++ {
		seqBefore := gtidSeq(ctx, t, s)
		start := time.Now()
		st, err := RunWorkload(ctx, s, step)
		if err != nil {
			t.Fatal(err)
		}
		seqAfter := gtidSeq(ctx, t, s)
		t.Logf("step %d: %+v in %v", step, st, time.Since(start).Round(time.Millisecond))
		if got := seqAfter - seqBefore; got != int64(st.Transactions) {
			t.Errorf("step %d: GTID seq advanced by %d, Transactions = %d", step, got, st.Transactions)
		}
		if st.Bytes < 3*WorkloadBlobSize {
			t.Errorf("step %d: Bytes = %d, want >= %d", step, st.Bytes, 3*WorkloadBlobSize)
		}
	}

	logsAfter, err := s.Query(ctx, "SHOW BINARY LOGS")
	if err != nil {
		t.Fatal(err)
	}
	if len(logsAfter) < len(logsBefore)+steps {
		t.Errorf("binlogs: %d before, %d after %d steps", len(logsBefore), len(logsAfter), steps)
	}

	for q, want := range map[string]string{
		"SELECT COUNT(*) FROM relaytest.items WHERE name = 'ghost' OR id % 1000 = 999": "0",
		"SELECT COUNT(*) FROM relaytest.blobs WHERE id % 1000 = 999":                   "0",
		"SELECT vc FROM relaytest.typed WHERE id = 1":                                  WorkloadText + " ✓",
		"SELECT LENGTH(data) FROM relaytest.blobs WHERE id = 2001":                     strconv.Itoa(WorkloadBlobSize),
		"SELECT COUNT(*) FROM relaytest.blobs":                                         "4",
		"SELECT c2 FROM relaytest.items WHERE id = 2003":                               "4006",
		"SELECT c2 FROM relaytest.items WHERE id = 1003":                               "2",
		"SELECT COUNT(*) FROM relaytest.typed WHERE i IS NULL AND vc IS NULL":          strconv.Itoa(steps),
		"SELECT dc FROM relaytest.typed WHERE id = 1":                                  "12345678901234567890.0123456789",
	} {
		got, err := s.QueryValue(ctx, q)
		if err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Errorf("%s = %q, want %q", q, got, want)
		}
	}

	// The reference decoder must accept every binlog the workload wrote.
	files, err := filepath.Glob(filepath.Join(s.Dir(), "data", "mariadb-bin.[0-9]*"))
	if err != nil || len(files) == 0 {
		t.Fatalf("binlog files: %v %v", files, err)
	}
	out, err := exec.CommandContext(ctx, "mariadb-binlog", append([]string{"--no-defaults", "--base64-output=decode-rows"}, files...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("mariadb-binlog: %v\n%s", err, out[max(0, len(out)-2000):])
	}
	if !bytes.Contains(out, []byte("Rotate to")) || !bytes.Contains(out, []byte("COMMIT")) {
		t.Errorf("mariadb-binlog output lacks rotate/commit events")
	}

	sums, err := TableChecksums(ctx, s, WorkloadDB)
	if err != nil {
		t.Fatal(err)
	}
	if len(sums) != 4 {
		t.Fatalf("TableChecksums = %v, want 4 tables", sums)
	}
	t.Logf("checksums: %v", sums)
}

// gtidSeq returns the sequence number of the server's only GTID domain.
func gtidSeq(ctx context.Context, t *testing.T, s *Server) int64 {
	t.Helper()
	pos, err := s.QueryValue(ctx, "SELECT @@gtid_binlog_pos")
	if err != nil {
		t.Fatal(err)
	}
	if pos == "" {
		return 0
	}
	parts := strings.Split(pos, "-")
	if len(parts) != 3 || strings.Contains(pos, ",") {
		t.Fatalf("unexpected gtid_binlog_pos %q", pos)
	}
	n, err := strconv.ParseInt(parts[2], 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func equalRows(a, b [][]string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if len(a[i]) != len(b[i]) {
			return false
		}
		for j := range a[i] {
			if a[i][j] != b[i][j] {
				return false
			}
		}
	}
	return true
}
