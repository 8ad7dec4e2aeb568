// Command demo shows Flotilla relaying a real MariaDB master to a real MariaDB replica,
// step by step, and proves the replica ended up with the master's data. `make demo`
// runs it; -keep leaves everything running and prints how to connect.
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/flotilla-relay/flotilla/test/mariadbtest"
)

func main() {
	bin := flag.String("flotilla", "bin/flotilla", "flotilla binary")
	dir := flag.String("dir", ".demo", "working directory (removed first)")
	keep := flag.Bool("keep", false, "leave the servers running and print how to connect")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *bin, *dir, *keep); err != nil {
		fmt.Fprintf(os.Stderr, "\ndemo failed: %v\n", err)
		os.Exit(1)
	}
}

// narrator numbers the demo's steps.
type narrator struct{ step int }

func (n *narrator) say(format string, args ...any) {
	n.step++
	fmt.Printf("\n[%d] %s\n", n.step, fmt.Sprintf(format, args...))
}

func detail(format string, args ...any) { fmt.Printf("    %s\n", fmt.Sprintf(format, args...)) }

func run(ctx context.Context, bin, dir string, keep bool) error {
	bin, _ = filepath.Abs(bin)
	if _, err := os.Stat(bin); err != nil {
		return fmt.Errorf("flotilla binary %s: %w (run `make build`)", bin, err)
	}
	dir, _ = filepath.Abs(dir)
	say := (&narrator{}).say
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	var cleanups []func()
	defer func() {
		if keep {
			return
		}
		fmt.Println("\ncleaning up (use `make demo DEMO_ARGS=-keep` to leave everything running)")
		for i := len(cleanups) - 1; i >= 0; i-- {
			cleanups[i]()
		}
		os.RemoveAll(dir)
	}()

	say("Starting a MariaDB master (binlog on, ROW format, GTID domain 0, server_id 1)")
	master, err := mariadbtest.Start(ctx, filepath.Join(dir, "master"), mariadbtest.Options{ServerID: 1, LogBin: true})
	if err != nil {
		return err
	}
	cleanups = append(cleanups, func() { master.Stop() })
	detail("master listens on %s", master.Addr())
	if err := master.CreateReplUser(ctx, "flotilla", "flotilla-pw"); err != nil {
		return err
	}
	detail("created replication user 'flotilla' on the master")

	say("Writing some history on the master before Flotilla exists")
	for _, q := range []string{
		"CREATE DATABASE shop CHARACTER SET utf8mb4",
		"CREATE TABLE shop.customers (id INT PRIMARY KEY, name VARCHAR(100), city VARCHAR(100)) ENGINE=InnoDB",
		"INSERT INTO shop.customers VALUES (1,'Ada','London'),(2,'Grace','Arlington'),(3,'Linus','Helsinki')",
	} {
		if err := master.Exec(ctx, q); err != nil {
			return fmt.Errorf("%s: %w", q, err)
		}
		detail("%s", q)
	}

	say("Starting a Flotilla node (one-node cluster)")
	ports := make([]int, 3)
	for i := range ports {
		if ports[i], err = mariadbtest.FreePort(); err != nil {
			return err
		}
	}
	mysqlAddr, adminAddr := fmt.Sprintf("127.0.0.1:%d", ports[0]), fmt.Sprintf("127.0.0.1:%d", ports[1])
	logPath := filepath.Join(dir, "flotilla.log")
	lf, err := os.Create(logPath)
	if err != nil {
		return err
	}
	fl := exec.Command(bin, "serve", "--data", filepath.Join(dir, "flotilla-data"), "--mysql-addr", mysqlAddr,
		"--admin-addr", adminAddr, "--raft-addr", fmt.Sprintf("127.0.0.1:%d", ports[2]))
	fl.Stdout, fl.Stderr = lf, lf
	fl.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := fl.Start(); err != nil {
		return err
	}
	cleanups = append(cleanups, func() { _ = fl.Process.Signal(syscall.SIGTERM); _ = fl.Wait() })
	cli := func(args ...string) (string, error) {
		cmd := exec.CommandContext(ctx, bin, append([]string{"--admin", adminAddr}, args...)...)
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		if err := cmd.Run(); err != nil {
			return out.String(), fmt.Errorf("flotilla %s: %s", strings.Join(args, " "), strings.TrimSpace(errb.String()))
		}
		return out.String(), nil
	}
	if err := poll(ctx, 60*time.Second, func() error { _, err := cli("status"); return err }); err != nil {
		return fmt.Errorf("flotilla did not start (log in %s): %w", logPath, err)
	}
	detail("MySQL protocol on %s, admin API on %s, log in %s", mysqlAddr, adminAddr, logPath)

	say("Adding the master as upstream 'main' (Flotilla checks it, then copies its binlog from the oldest transaction)")
	args := []string{"upstream", "add", "main", "--source", master.Addr(), "--user", "flotilla", "--password", "flotilla-pw",
		"--replica-user", "repl", "--replica-password", "repl-pw"}
	detail("flotilla %s", strings.Join(args, " "))
	out, err := cli(args...)
	if err != nil {
		return err
	}
	fmt.Print(indent(out))

	say("Starting a MariaDB replica and pointing it at Flotilla instead of the master")
	replica, err := mariadbtest.Start(ctx, filepath.Join(dir, "replica"), mariadbtest.Options{ServerID: 2})
	if err != nil {
		return err
	}
	cleanups = append(cleanups, func() { replica.Stop() })
	change := fmt.Sprintf("CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT=%d, MASTER_USER='repl', MASTER_PASSWORD='repl-pw', MASTER_USE_GTID=slave_pos", ports[0])
	for _, q := range []string{change, "START SLAVE"} {
		if err := replica.Exec(ctx, q); err != nil {
			return fmt.Errorf("%s: %w", q, err)
		}
		detail("replica> %s", q)
	}

	say("Running a workload on the master: inserts, updates, deletes, a transaction, a rollback, DDL, binlog rotations")
	workload := []string{
		"INSERT INTO shop.customers VALUES (4,'Barbara','Boston'),(5,'Edsger','Austin')",
		"UPDATE shop.customers SET city='Cambridge' WHERE id=1",
		"CREATE TABLE shop.orders (id INT AUTO_INCREMENT PRIMARY KEY, customer INT, total DECIMAL(10,2), note TEXT) ENGINE=InnoDB",
		"BEGIN", "INSERT INTO shop.orders (customer,total,note) VALUES (1,19.99,'first'),(2,5.00,'Grüße')", "UPDATE shop.customers SET name='Grace H.' WHERE id=2", "COMMIT",
		"FLUSH BINARY LOGS",
		"BEGIN", "DELETE FROM shop.customers", "ROLLBACK",
		"DELETE FROM shop.customers WHERE id=3",
		"ALTER TABLE shop.orders ADD COLUMN created DATETIME DEFAULT '2026-01-01 00:00:00'",
		"INSERT INTO shop.orders (customer,total,note) SELECT id, id*10, REPEAT('x', 1000) FROM shop.customers",
		"FLUSH BINARY LOGS",
	}
	conn, err := master.DB().Conn(ctx)
	if err != nil {
		return err
	}
	for _, q := range workload {
		if _, err := conn.ExecContext(ctx, q); err != nil {
			conn.Close()
			return fmt.Errorf("%s: %w", q, err)
		}
		detail("master> %s", q)
	}
	conn.Close()

	say("Waiting for the replica to reach the master's GTID position")
	want, err := master.QueryValue(ctx, "SELECT @@gtid_binlog_pos")
	if err != nil {
		return err
	}
	var got string
	err = poll(ctx, 120*time.Second, func() error {
		got, _ = replica.QueryValue(ctx, "SELECT @@gtid_slave_pos")
		if got != want {
			return fmt.Errorf("replica at %q, master at %q", got, want)
		}
		return nil
	})
	if err != nil {
		status, _ := replica.Query(ctx, "SHOW SLAVE STATUS")
		return fmt.Errorf("%w; replica status: %v", err, status)
	}
	detail("master @@gtid_binlog_pos = %s", want)
	detail("replica @@gtid_slave_pos  = %s", got)

	say("Proof: row counts and CHECKSUM TABLE on master and replica")
	mc, err := mariadbtest.TableChecksums(ctx, master, "shop")
	if err != nil {
		return err
	}
	rc, err := mariadbtest.TableChecksums(ctx, replica, "shop")
	if err != nil {
		return err
	}
	var tables []string
	for t := range mc {
		tables = append(tables, t)
	}
	sort.Strings(tables)
	ok := len(mc) == len(rc) && len(mc) > 0
	for _, t := range tables {
		mark := "equal"
		if mc[t] != rc[t] {
			mark, ok = "DIFFERENT", false
		}
		detail("%-16s master: %-36s replica: %-36s %s", t, mc[t], rc[t], mark)
	}
	if !ok || got != want {
		return errors.New("the replica's data differs from the master's")
	}

	say("Flotilla's view (flotilla upstream get main)")
	out, err = cli("upstream", "get", "main")
	if err != nil {
		return err
	}
	fmt.Print(indent(out))
	fmt.Println("\nRESULT: the replica, fed only by Flotilla, holds exactly the master's data and GTID position.")
	if keep {
		fmt.Printf(`
Everything is still running (data in %s):
  master:   mariadb -h 127.0.0.1 -P %d -u root
  replica:  mariadb -h 127.0.0.1 -P %d -u root
  flotilla: %s --admin %s status
            mariadb -h 127.0.0.1 -P %d -u repl -prepl-pw -e 'SHOW BINARY LOGS'
Stop it with: kill %d %d %d
`, dir, master.Port(), replica.Port(), bin, adminAddr, ports[0], fl.Process.Pid, pidOf(master), pidOf(replica))
	}
	return nil
}

func pidOf(s *mariadbtest.Server) int {
	b, _ := os.ReadFile(filepath.Join(s.Dir(), "mysqld.pid"))
	var pid int
	fmt.Sscan(string(b), &pid)
	return pid
}

func indent(s string) string {
	var b strings.Builder
	for _, l := range strings.Split(strings.TrimRight(s, "\n"), "\n") {
		b.WriteString("    " + l + "\n")
	}
	return b.String()
}

// poll retries f until it succeeds or the timeout passes.
func poll(ctx context.Context, timeout time.Duration, f func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}
