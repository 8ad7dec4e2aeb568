// Package mariadbtest starts real, throwaway MariaDB servers for Flotilla's
// end-to-end tests. Mocks cannot reproduce the binlog stream, GTID handling
// and rotation behaviour a relay must survive, so tests run the genuine
// mariadbd binary in a private directory instead of relying on a system
// service. Servers run in their own process group and are killed if the test
// binary dies, so a crashed test does not leak daemons onto the machine.
package mariadbtest

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/go-mysql-org/go-mysql/client"
	"github.com/go-mysql-org/go-mysql/driver"
	"github.com/go-mysql-org/go-mysql/mysql"
)

const (
	// startTimeout bounds how long Start waits for a fresh server to accept
	// connections; install plus first start normally takes a few seconds.
	startTimeout = 60 * time.Second
	// stopTimeout is how long Stop lets InnoDB shut down cleanly before it
	// resorts to SIGKILL.
	stopTimeout = 30 * time.Second
	// connCollation is sent at handshake. go-mysql defaults to collation id
	// 255 (MySQL 8's utf8mb4_0900_ai_ci), which MariaDB 10.11 does not know
	// and silently maps to latin1, breaking non-ASCII test data.
	connCollation = "utf8mb4_general_ci"
	// maxSocketPath keeps the unix socket path below the kernel's sun_path
	// limit (108 bytes) that long t.TempDir() paths can exceed.
	maxSocketPath = 100
	// innodbLogFileSize is the redo log's size, at install and at every start.
	innodbLogFileSize = "48M"
)

// Options configures a test server. The zero value gives a server without a
// binary log, which is what a plain replica target usually wants.
type Options struct {
	// ServerID must differ between servers that replicate with each other
	// (directly or through Flotilla), otherwise events are skipped as echoes.
	ServerID uint32
	// DomainID sets gtid_domain_id so tests can tell which server
	// originated a GTID.
	DomainID uint32
	// LogBin enables the binary log (ROW format, CRC32 checksums) and
	// log_slave_updates; a master needs it, a replica only if it is chained.
	LogBin bool
	// MaxBinlogSize, when positive, sets max_binlog_size in bytes so tests
	// can force frequent binlog rotation; 0 keeps the server default (1 GiB).
	MaxBinlogSize int64
	// Port, when non-zero, pins the TCP port. Restarting a server on the
	// same Dir with its previous Port keeps its address stable for clients
	// that were configured with it; 0 picks a free port.
	Port int
	// ExtraArgs are appended to the mariadbd command line last, so they
	// override the harness defaults.
	ExtraArgs []string
}

// Server is a running mariadbd child process plus a connection pool to it.
// Its methods are safe for concurrent use.
type Server struct {
	dir     string
	port    int
	socket  string
	sockDir string // temporary socket directory to remove on stop, if any
	opt     Options
	cmd     *exec.Cmd
	db      *sql.DB

	done    chan struct{} // closed once the process has been reaped
	waitErr error         // set before done is closed

	stopOnce sync.Once
	stopErr  error
}

// Start initialises dir/data as mariadb-install-db would (a copy of an installed
// template; skipped if it already holds a data directory, so a stopped server can be
// restarted on the same data) and launches mariadbd on a loopback port. It returns once root can log
// in over TCP without a password, so callers can issue queries immediately.
// ctx only bounds startup; the server keeps running until Stop or Kill.
func Start(ctx context.Context, dir string, opt Options) (*Server, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("mariadbtest: resolve dir: %w", err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("mariadbtest: create dir: %w", err)
	}
	if err := installDB(ctx, dir); err != nil {
		return nil, err
	}

	// A port chosen by FreePort can be grabbed by someone else before
	// mariadbd binds it; retry a few times rather than fail the test.
	const attempts = 3
	for i := 1; ; i++ {
		port := opt.Port
		if port == 0 {
			if port, err = FreePort(); err != nil {
				return nil, err
			}
		}
		s, err := launch(ctx, dir, port, opt)
		if err == nil {
			return s, nil
		}
		if opt.Port != 0 || i == attempts || !errors.Is(err, errPortInUse) {
			return nil, err
		}
	}
}

var errPortInUse = errors.New("port already in use")

// installDB gives dir/data the system tables, unless it holds a data directory
// already: a copy of the installed template (see template.go), which is what a
// fresh install would write, in a twentieth of the time.
func installDB(ctx context.Context, dir string) error {
	data := filepath.Join(dir, "data")
	if _, err := os.Stat(filepath.Join(data, "mysql")); err == nil {
		return nil
	}
	tmpl, err := template(ctx)
	if err != nil {
		return err
	}
	// Copied beside it, then renamed: a copy cut short (a killed test) never looks
	// like a data directory to the next Start.
	tmp, err := os.MkdirTemp(dir, "data-*.tmp")
	if err != nil {
		return fmt.Errorf("mariadbtest: %w", err)
	}
	defer os.RemoveAll(tmp) // gone once renamed
	if err := copyTree(tmpl, filepath.Join(tmp, "data")); err != nil {
		return fmt.Errorf("mariadbtest: copy the installed template %s to %s: %w (remove the template if it is damaged)", tmpl, data, err)
	}
	if err := os.Rename(filepath.Join(tmp, "data"), data); err != nil {
		return fmt.Errorf("mariadbtest: put the data directory in place: %w", err)
	}
	return nil
}

// install creates the system tables in data with mariadb-install-db. The "normal"
// root authentication method gives root@localhost, root@127.0.0.1 and root@::1 an
// empty password, which is what makes passwordless TCP logins possible. The redo
// log is made the size launch asks for, so a first start does not resize it.
func install(ctx context.Context, bin, data, logPath string) error {
	logFile, err := os.Create(logPath)
	if err != nil {
		return fmt.Errorf("mariadbtest: create install log: %w", err)
	}
	defer logFile.Close()
	// One retry: a bootstrap that aborts once (seen rarely on a loaded machine) is
	// not what the tests are about; a second failure is reported with its log.
	for attempt := 0; attempt < 2; attempt++ {
		cmd := exec.CommandContext(ctx, bin, installArgs(data)...)
		cmd.Stdout = logFile
		cmd.Stderr = logFile
		if err = cmd.Run(); err == nil {
			return nil
		}
		// Leave no half-initialised datadir behind for the retry.
		_ = os.RemoveAll(data)
		fmt.Fprintf(logFile, "\n--- attempt %d failed: %v ---\n", attempt+1, err)
	}
	return fmt.Errorf("mariadbtest: %s failed twice: %w\n%s", bin, err, tailFile(logPath, 60))
}

// installArgs are mariadb-install-db's arguments for data.
func installArgs(data string) []string {
	return []string{
		"--no-defaults",
		"--auth-root-authentication-method=normal",
		"--datadir=" + data,
		"--user=root",
		"--skip-test-db",
		"--skip-name-resolve",
		"--innodb-log-file-size=" + innodbLogFileSize,
	}
}

// lookTool finds the first of names on PATH or in /usr/sbin, where Debian
// puts mariadbd but which is not always on PATH for non-login shells.
func lookTool(names ...string) (string, error) {
	for _, n := range names {
		if p, err := exec.LookPath(n); err == nil {
			return p, nil
		}
		for _, d := range []string{"/usr/sbin", "/usr/local/sbin"} {
			p := filepath.Join(d, n)
			if st, err := os.Stat(p); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
				return p, nil
			}
		}
	}
	return "", fmt.Errorf("mariadbtest: %s not found (run scripts/ensure-mariadb.sh): %w", names[0], exec.ErrNotFound)
}

func launch(ctx context.Context, dir string, port int, opt Options) (*Server, error) {
	bin, err := lookTool("mariadbd", "mysqld")
	if err != nil {
		return nil, err
	}
	data := filepath.Join(dir, "data")
	socket := filepath.Join(dir, "mysqld.sock")
	var sockDir string
	if len(socket) > maxSocketPath {
		if sockDir, err = os.MkdirTemp("", "mdbsock"); err != nil {
			return nil, fmt.Errorf("mariadbtest: socket dir: %w", err)
		}
		socket = filepath.Join(sockDir, "mysqld.sock")
	}
	errLog := filepath.Join(dir, "error.log")
	// Only this run's log lines are relevant for a startup failure.
	var logOffset int64
	if st, err := os.Stat(errLog); err == nil {
		logOffset = st.Size()
	}

	args := []string{
		"--no-defaults",
		"--user=root",
		"--datadir=" + data,
		"--socket=" + socket,
		"--port=" + strconv.Itoa(port),
		"--bind-address=127.0.0.1",
		"--pid-file=" + filepath.Join(dir, "mysqld.pid"),
		"--log-error=" + errLog,
		"--server-id=" + strconv.FormatUint(uint64(opt.ServerID), 10),
		"--gtid-domain-id=" + strconv.FormatUint(uint64(opt.DomainID), 10),
		"--max-allowed-packet=64M",
		"--innodb-buffer-pool-size=32M",
		"--innodb-log-file-size=" + innodbLogFileSize,
		"--skip-name-resolve",
		"--binlog-format=ROW",
		"--binlog-checksum=CRC32",
		"--skip-slave-start",
		"--relay-log=" + filepath.Join(data, "mariadb-relay-bin"),
		"--innodb-flush-log-at-trx-commit=2",
		"--sync-binlog=0",
	}
	if opt.LogBin {
		args = append(args,
			"--log-bin="+filepath.Join(data, "mariadb-bin"),
			"--log-slave-updates",
		)
	}
	if opt.MaxBinlogSize > 0 {
		args = append(args, "--max-binlog-size="+strconv.FormatInt(opt.MaxBinlogSize, 10))
	}
	args = append(args, opt.ExtraArgs...)

	out, err := os.OpenFile(filepath.Join(dir, "mariadbd.out"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("mariadbtest: open stdout log: %w", err)
	}
	// Not CommandContext: ctx bounds startup only, not the server lifetime.
	cmd := exec.Command(bin, args...)
	cmd.Stdout = out
	cmd.Stderr = out
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Setpgid:   true,
		Pdeathsig: syscall.SIGKILL,
	}
	if err := cmd.Start(); err != nil {
		out.Close()
		if sockDir != "" {
			_ = os.RemoveAll(sockDir)
		}
		return nil, fmt.Errorf("mariadbtest: start %s: %w", bin, err)
	}
	s := &Server{
		dir:     dir,
		port:    port,
		socket:  socket,
		sockDir: sockDir,
		opt:     opt,
		cmd:     cmd,
		done:    make(chan struct{}),
	}
	go func() {
		s.waitErr = cmd.Wait()
		out.Close()
		close(s.done)
	}()

	s.db = sql.OpenDB(driver.Connector{
		Addr:   s.Addr(),
		User:   "root",
		Params: url.Values{"collation": {connCollation}, "timeout": {"10s"}},
	})
	s.db.SetMaxIdleConns(4)
	s.db.SetConnMaxIdleTime(time.Minute)

	if err := s.waitReady(ctx, errLog, logOffset); err != nil {
		_ = s.Kill()
		return nil, err
	}
	return s, nil
}

// waitReady polls until root can log in over TCP. If the grant tables lack a
// TCP-reachable root (e.g. a datadir created by other means), it repairs that
// once over the unix socket, which root@localhost can always use.
func (s *Server) waitReady(ctx context.Context, errLog string, logOffset int64) error {
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	fixedGrants := false
	var lastErr error
	for {
		select {
		case <-s.done:
			log := tailFrom(errLog, logOffset, 40)
			if strings.Contains(log, "Address already in use") || strings.Contains(log, "Do you already have another server running") {
				return fmt.Errorf("mariadbtest: mariadbd on port %d: %w\n%s", s.port, errPortInUse, log)
			}
			return fmt.Errorf("mariadbtest: mariadbd exited during startup (%v)\n%s", s.waitErr, log)
		case <-ctx.Done():
			return fmt.Errorf("mariadbtest: mariadbd not ready on %s (last error: %v): %w\n%s",
				s.Addr(), lastErr, ctx.Err(), tailFrom(errLog, logOffset, 40))
		case <-tick.C:
		}
		lastErr = s.ping(ctx)
		if lastErr == nil {
			return nil
		}
		if isAccessDenied(lastErr) && !fixedGrants {
			fixedGrants = true
			if err := s.grantTCPRoot(ctx); err != nil {
				return fmt.Errorf("mariadbtest: enable TCP root login: %w", err)
			}
		}
	}
}

func (s *Server) ping(ctx context.Context) error {
	pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	c, err := client.ConnectWithContext(pctx, s.Addr(), "root", "", "", 2*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	return c.Ping()
}

func (s *Server) grantTCPRoot(ctx context.Context) error {
	c, err := client.ConnectWithContext(ctx, s.socket, "root", "", "", 5*time.Second)
	if err != nil {
		return fmt.Errorf("connect via %s: %w", s.socket, err)
	}
	defer c.Close()
	for _, q := range []string{
		"CREATE USER IF NOT EXISTS 'root'@'127.0.0.1' IDENTIFIED BY ''",
		"GRANT ALL ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION",
	} {
		if _, err := c.Execute(q); err != nil {
			return fmt.Errorf("%s: %w", q, err)
		}
	}
	return nil
}

func isAccessDenied(err error) bool {
	var me *mysql.MyError
	if errors.As(err, &me) {
		// 1045 ER_ACCESS_DENIED_ERROR, 1698 ER_ACCESS_DENIED_NO_PASSWORD_ERROR
		return me.Code == 1045 || me.Code == 1698
	}
	return strings.Contains(err.Error(), "Access denied")
}

// Addr returns "127.0.0.1:port", the form both go-mysql and Flotilla's
// configuration expect for a master address.
func (s *Server) Addr() string {
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port))
}

// Port returns the TCP port, e.g. for CHANGE MASTER TO ... MASTER_PORT, or
// to restart the server on the same address via Options.Port.
func (s *Server) Port() int { return s.port }

// Dir returns the directory passed to Start; the data directory, binlogs
// (data/mariadb-bin.*) and error.log live under it for post-mortems.
func (s *Server) Dir() string { return s.dir }

// DB exposes the root connection pool for what the helpers do not cover,
// notably transactions, which need a single connection (use DB().Conn or
// DB().BeginTx rather than Exec("BEGIN") on the pool).
func (s *Server) DB() *sql.DB { return s.db }

// Stop shuts the server down cleanly (SIGTERM), so InnoDB and the binlog are
// consistent for a later restart on the same Dir. If it has not exited
// within 30s it is killed. Calling Stop or Kill again is a no-op.
func (s *Server) Stop() error {
	return s.terminate(syscall.SIGTERM, stopTimeout)
}

// PID is the server process's id (benchmarks read its CPU time).
func (s *Server) PID() int { return s.cmd.Process.Pid }

// Kill stops the server with SIGKILL, simulating a crash: the binlog may end
// in a partially written event and InnoDB will run crash recovery on restart.
func (s *Server) Kill() error {
	return s.terminate(syscall.SIGKILL, stopTimeout)
}

func (s *Server) terminate(sig syscall.Signal, grace time.Duration) error {
	s.stopOnce.Do(func() {
		if s.db != nil {
			_ = s.db.Close()
		}
		pid := s.cmd.Process.Pid
		// Signal the whole process group: mariadbd has no children today,
		// but this also catches anything it might spawn. Not once it has been
		// reaped: its pid may then name another process group (this machine's
		// pids wrap at 32768, and the suites run side by side).
		select {
		case <-s.done:
		default:
			if err := syscall.Kill(-pid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
				s.stopErr = fmt.Errorf("mariadbtest: signal %v to mariadbd: %w", sig, err)
			}
		}
		defer func() {
			if s.sockDir != "" {
				_ = os.RemoveAll(s.sockDir)
			}
		}()
		select {
		case <-s.done:
			return
		case <-time.After(grace):
		}
		select {
		case <-s.done: // it exited as the grace ran out: its pid may be another's now
		default:
			_ = syscall.Kill(-pid, syscall.SIGKILL)
		}
		<-s.done
		if sig != syscall.SIGKILL && s.stopErr == nil {
			s.stopErr = fmt.Errorf("mariadbtest: mariadbd did not stop within %v after %v; killed", grace, sig)
		}
	})
	return s.stopErr
}

// Exec runs a statement on a pooled root connection. Arguments use
// server-side prepared statements, which is how multi-MB blobs are sent
// without escaping them into the query text.
func (s *Server) Exec(ctx context.Context, query string, args ...any) error {
	if _, err := s.db.ExecContext(ctx, query, args...); err != nil {
		return fmt.Errorf("mariadbtest: exec %q: %w", abbrev(query), err)
	}
	return nil
}

// Query returns all rows as strings so tests can compare results without
// caring about driver types; SQL NULL is rendered as "NULL". Integers and
// DECIMALs keep the server's text form; FLOAT/DOUBLE are reformatted by Go.
func (s *Server) Query(ctx context.Context, query string, args ...any) ([][]string, error) {
	rows, err := s.db.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("mariadbtest: query %q: %w", abbrev(query), err)
	}
	defer rows.Close()
	cols, err := rows.Columns()
	if err != nil {
		return nil, fmt.Errorf("mariadbtest: query %q: columns: %w", abbrev(query), err)
	}
	var out [][]string
	vals := make([]sql.NullString, len(cols))
	ptrs := make([]any, len(cols))
	for i := range vals {
		ptrs[i] = &vals[i]
	}
	for rows.Next() {
		if err := rows.Scan(ptrs...); err != nil {
			return nil, fmt.Errorf("mariadbtest: query %q: scan: %w", abbrev(query), err)
		}
		row := make([]string, len(cols))
		for i, v := range vals {
			if v.Valid {
				row[i] = v.String
			} else {
				row[i] = "NULL"
			}
		}
		out = append(out, row)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("mariadbtest: query %q: %w", abbrev(query), err)
	}
	return out, nil
}

// QueryValue returns the first column of the first row, the common case for
// checking a single variable or count. No rows is an error, so a typo in a
// WHERE clause does not pass as an empty string.
func (s *Server) QueryValue(ctx context.Context, query string, args ...any) (string, error) {
	rows, err := s.Query(ctx, query, args...)
	if err != nil {
		return "", err
	}
	if len(rows) == 0 || len(rows[0]) == 0 {
		return "", fmt.Errorf("mariadbtest: query %q returned no rows", abbrev(query))
	}
	return rows[0][0], nil
}

// WaitFor polls query every 100ms until its first value equals want, because
// replication is asynchronous and tests must wait for convergence instead of
// sleeping. Query errors are retried (the server may be restarting); on ctx
// expiry the last value or error seen is reported.
func (s *Server) WaitFor(ctx context.Context, query string, want string) error {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var last string
	var lastErr error
	for {
		v, err := s.QueryValue(ctx, query)
		if err == nil && v == want {
			return nil
		}
		// A query cut short by ctx expiry says nothing about the server;
		// keep the previous observation for the error message.
		if ctx.Err() == nil || (last == "" && lastErr == nil) {
			last, lastErr = v, err
		}
		select {
		case <-ctx.Done():
			if lastErr != nil {
				return fmt.Errorf("mariadbtest: %s: waiting for %q = %q: last error: %v: %w",
					s.Addr(), abbrev(query), want, lastErr, ctx.Err())
			}
			return fmt.Errorf("mariadbtest: %s: waiting for %q = %q: last value %q: %w",
				s.Addr(), abbrev(query), want, abbrev(last), ctx.Err())
		case <-tick.C:
		}
	}
}

// CreateReplUser creates an account that a replica (or Flotilla acting as
// one) can use to stream the binlog and inspect GTID state. Both '%' and
// '127.0.0.1' hosts are created so the login works regardless of how the
// server matches loopback clients.
func (s *Server) CreateReplUser(ctx context.Context, user, password string) error {
	for _, host := range []string{"%", "127.0.0.1"} {
		acct := quoteString(user) + "@" + quoteString(host)
		for _, q := range []string{
			"CREATE USER IF NOT EXISTS " + acct + " IDENTIFIED BY " + quoteString(password),
			"GRANT REPLICATION SLAVE, REPLICATION CLIENT, BINLOG MONITOR, SLAVE MONITOR, SELECT ON *.* TO " + acct,
		} {
			if err := s.Exec(ctx, q); err != nil {
				return fmt.Errorf("mariadbtest: create replication user %s: %w", user, err)
			}
		}
	}
	return nil
}

// TableChecksums fingerprints every base table in dbs as
// "db.table" -> "count=N checksum=C", so a test can assert that a master and
// a replica fed through Flotilla hold identical data with one map comparison.
func TableChecksums(ctx context.Context, s *Server, dbs ...string) (map[string]string, error) {
	out := make(map[string]string)
	if len(dbs) == 0 {
		return out, nil
	}
	ph := strings.TrimSuffix(strings.Repeat("?,", len(dbs)), ",")
	args := make([]any, len(dbs))
	for i, d := range dbs {
		args[i] = d
	}
	tables, err := s.Query(ctx,
		"SELECT TABLE_SCHEMA, TABLE_NAME FROM information_schema.TABLES WHERE TABLE_TYPE = 'BASE TABLE' AND TABLE_SCHEMA IN ("+ph+") ORDER BY 1, 2",
		args...)
	if err != nil {
		return nil, fmt.Errorf("mariadbtest: list tables: %w", err)
	}
	for _, t := range tables {
		name := quoteIdent(t[0]) + "." + quoteIdent(t[1])
		count, err := s.QueryValue(ctx, "SELECT COUNT(*) FROM "+name)
		if err != nil {
			return nil, fmt.Errorf("mariadbtest: count %s: %w", name, err)
		}
		rows, err := s.Query(ctx, "CHECKSUM TABLE "+name)
		if err != nil {
			return nil, fmt.Errorf("mariadbtest: checksum %s: %w", name, err)
		}
		if len(rows) != 1 || len(rows[0]) < 2 {
			return nil, fmt.Errorf("mariadbtest: checksum %s: unexpected result %v", name, rows)
		}
		out[t[0]+"."+t[1]] = "count=" + count + " checksum=" + rows[0][1]
	}
	return out, nil
}

// quoteIdent backquotes a schema object name.
func quoteIdent(s string) string {
	return "`" + strings.ReplaceAll(s, "`", "``") + "`"
}

// quoteString makes a SQL string literal for statements such as CREATE USER
// that cannot take placeholders.
func quoteString(s string) string {
	r := strings.NewReplacer(`\`, `\\`, `'`, `\'`, "\x00", `\0`)
	return "'" + r.Replace(s) + "'"
}

// abbrev keeps error messages readable when a query embeds a large literal.
func abbrev(s string) string {
	const max = 200
	if len(s) <= max {
		return s
	}
	return s[:max] + fmt.Sprintf("...(%d bytes)", len(s))
}

func tailFile(path string, lines int) string {
	return tailFrom(path, 0, lines)
}

// tailFrom returns the last lines of path starting at byte offset, for
// attaching server diagnostics to errors.
func tailFrom(path string, offset int64, lines int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", path, err)
	}
	if offset > 0 && offset <= int64(len(b)) {
		b = b[offset:]
	}
	b = bytes.TrimRight(b, "\n")
	parts := bytes.Split(b, []byte("\n"))
	if len(parts) > lines {
		parts = parts[len(parts)-lines:]
	}
	return "--- " + path + " (tail) ---\n" + string(bytes.Join(parts, []byte("\n")))
}

// SlaveStatus is SHOW SLAVE STATUS as column name to value ("NULL" for NULL; an
// empty map when the server replicates from nobody).
func (r *Server) SlaveStatus(ctx context.Context) (map[string]string, error) {
	rows, err := r.DB().QueryContext(ctx, "SHOW SLAVE STATUS")
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	cols, _ := rows.Columns()
	out := map[string]string{}
	if !rows.Next() {
		return out, rows.Err()
	}
	vals := make([]any, len(cols))
	ptrs := make([]any, len(cols))
	for i := range vals {
		ptrs[i] = &vals[i]
	}
	if err := rows.Scan(ptrs...); err != nil {
		return nil, err
	}
	for i, c := range cols {
		switch v := vals[i].(type) {
		case []byte:
			out[c] = string(v)
		case nil:
			out[c] = "NULL"
		default:
			out[c] = fmt.Sprint(v)
		}
	}
	return out, nil
}

// FreeBytes is what may still be written on dir's filesystem.
func FreeBytes(dir string) (uint64, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, fmt.Errorf("statfs %s: %w", dir, err)
	}
	return st.Bavail * uint64(st.Bsize), nil
}

// Fill takes n bytes of path's filesystem with a new file (fallocate, or written
// zeros where the filesystem has no fallocate): tests of a full disk.
func Fill(path string, n int64) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := syscall.Fallocate(int(f.Fd()), 0, 0, n); err == nil {
		return nil
	} else if !errors.Is(err, syscall.EOPNOTSUPP) {
		return fmt.Errorf("fallocate %d bytes: %w", n, err)
	}
	buf := make([]byte, 1<<20)
	for w := int64(0); w < n; w += int64(len(buf)) {
		if _, err := f.Write(buf); err != nil {
			return err
		}
	}
	return f.Sync()
}
