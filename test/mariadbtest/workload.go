package mariadbtest

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
)

// WorkloadDB is the database RunWorkload writes to; pass it to
// TableChecksums to compare a master with its replicas.
const WorkloadDB = "relaytest"

// WorkloadBlobSize is the size of each LONGBLOB value RunWorkload writes.
// Several MB per row forces binlog events well beyond typical buffer sizes,
// which is where relays tend to break.
const WorkloadBlobSize = 3 << 20

// WorkloadStats summarises what one RunWorkload step wrote, so tests can
// size timeouts and check that the expected amount of binlog was relayed.
type WorkloadStats struct {
	// Transactions is the number of committed binlog transactions (each one
	// gets a GTID): autocommit statements, explicit COMMITs and DDL. Rolled
	// back work and FLUSH BINARY LOGS are not counted. When steps run in
	// order 0, 1, 2, ... on a master with LogBin, it equals the advance of
	// the master's GTID sequence number.
	Transactions int
	// Bytes approximates the data written: statement text plus blob
	// parameters.
	Bytes int64
}

// RunWorkload applies one deterministic step of a mixed workload to database
// relaytest on m, covering what a binlog relay must carry faithfully: DDL,
// single- and multi-row INSERT, UPDATE, DELETE, multi-statement InnoDB
// transactions, a rolled-back transaction (which must leave no trace on any
// replica), ALTER TABLE ADD COLUMN, multi-MB LONGBLOB rows, a composite
// primary key, a wide range of column types including non-ASCII utf8mb4 text
// and NULLs, and a binlog rotation (FLUSH BINARY LOGS) in the middle of the
// step so its events span two binlog files.
//
// Step 0 creates the schema and must run first; later steps use keys derived
// from step, so calling 0, 1, 2, ... never collides. Each step writes about
// 15 MB of binlog and takes well under a few seconds locally.
func RunWorkload(ctx context.Context, m *Server, step int) (WorkloadStats, error) {
	if step < 0 {
		return WorkloadStats{}, fmt.Errorf("mariadbtest: workload step %d: must be >= 0", step)
	}
	// One pinned connection: BEGIN ... COMMIT must run on the same session,
	// and a single session keeps the binlog order identical on every run.
	conn, err := m.DB().Conn(ctx)
	if err != nil {
		return WorkloadStats{}, fmt.Errorf("mariadbtest: workload step %d: get connection: %w", step, err)
	}
	defer conn.Close()

	w := &workload{ctx: ctx, conn: conn, step: step}
	if err := w.run(); err != nil {
		// Do not leave an open transaction on a pooled session.
		_, _ = conn.ExecContext(context.WithoutCancel(ctx), "ROLLBACK")
		return w.stats, fmt.Errorf("mariadbtest: workload step %d: %w", step, err)
	}
	return w.stats, nil
}

type workload struct {
	ctx   context.Context
	conn  *sql.Conn
	step  int
	stats WorkloadStats
}

// exec runs one statement; commits says whether it ends a binlog
// transaction (autocommit DML/DDL or COMMIT) and so should be counted.
func (w *workload) exec(commits bool, query string, args ...any) (sql.Result, error) {
	res, err := w.conn.ExecContext(w.ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", abbrev(query), err)
	}
	w.stats.Bytes += int64(len(query))
	for _, a := range args {
		if b, ok := a.([]byte); ok {
			w.stats.Bytes += int64(len(b))
		}
	}
	if commits {
		w.stats.Transactions++
	}
	return res, nil
}

// tx runs statements between BEGIN and end ("COMMIT" or "ROLLBACK") as
// separate round trips, exactly as an application would.
func (w *workload) tx(end string, stmts ...stmt) error {
	if _, err := w.exec(false, "BEGIN"); err != nil {
		return err
	}
	for _, s := range stmts {
		if _, err := w.exec(false, s.query, s.args...); err != nil {
			return err
		}
	}
	_, err := w.exec(end == "COMMIT", end)
	return err
}

type stmt struct {
	query string
	args  []any
}

func q(query string, args ...any) stmt { return stmt{query: query, args: args} }

// workloadSchema is created on step 0. Table roles:
//   - items: simple integer key; gains one column per step via ALTER TABLE.
//   - order_lines: composite primary key.
//   - typed: one column of each commonly replicated type, with NULLs.
//   - blobs: multi-MB LONGBLOB rows.
var workloadSchema = []string{
	"CREATE DATABASE IF NOT EXISTS relaytest CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci",
	`CREATE TABLE IF NOT EXISTS relaytest.items (
		id INT NOT NULL PRIMARY KEY,
		name VARCHAR(100) NOT NULL,
		qty INT NOT NULL DEFAULT 0,
		updated_at DATETIME(6) NULL
	) ENGINE=InnoDB`,
	`CREATE TABLE IF NOT EXISTS relaytest.order_lines (
		order_id BIGINT NOT NULL,
		line_no SMALLINT NOT NULL,
		sku VARCHAR(32) NOT NULL,
		amount DECIMAL(12,2) NOT NULL,
		PRIMARY KEY (order_id, line_no)
	) ENGINE=InnoDB`,
	`CREATE TABLE IF NOT EXISTS relaytest.typed (
		id INT NOT NULL PRIMARY KEY,
		i INT NULL,
		bi BIGINT NULL,
		ubi BIGINT UNSIGNED NULL,
		ti TINYINT NULL,
		dc DECIMAL(30,10) NULL,
		f DOUBLE NULL,
		vc VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci NULL,
		txt TEXT CHARACTER SET utf8mb4 NULL,
		dt DATETIME(6) NULL,
		d DATE NULL,
		tm TIME(3) NULL,
		j JSON NULL,
		e ENUM('red','green','blue') NULL,
		st SET('a','b','c') NULL,
		bits BIT(10) NULL,
		vb VARBINARY(64) NULL
	) ENGINE=InnoDB`,
	`CREATE TABLE IF NOT EXISTS relaytest.blobs (
		id INT NOT NULL PRIMARY KEY,
		label VARCHAR(64) NOT NULL,
		data LONGBLOB NULL
	) ENGINE=InnoDB`,
}

// WorkloadText is stored in relaytest.typed.vc so tests can check that
// multi-byte utf8mb4 (including 4-byte emoji) survives the relay unchanged.
const WorkloadText = "Grüße, 東京 🚀 — ñandú"

func (w *workload) run() error {
	s := w.step
	base := s * 1000           // items, typed, blobs ids
	order := s * 10000         // order_lines order ids
	ts := func(n int) string { // deterministic DATETIME(6) literal
		return fmt.Sprintf("'2024-%02d-%02d %02d:%02d:%02d.%06d'", s%12+1, n%28+1, n%24, n%60, s%60, (s*7919+n*104729)%1000000)
	}

	if s == 0 {
		for _, ddl := range workloadSchema {
			if _, err := w.exec(true, ddl); err != nil {
				return err
			}
		}
	}

	// Single-row INSERT.
	if _, err := w.exec(true, fmt.Sprintf(
		"INSERT INTO relaytest.items (id, name, qty, updated_at) VALUES (%d, 'item-%d-first', 1, %s)", base+1, s, ts(1))); err != nil {
		return err
	}
	// Multi-row INSERTs.
	var vals []string
	for i := 2; i <= 21; i++ {
		vals = append(vals, fmt.Sprintf("(%d, 'item-%d-%d', %d, %s)", base+i, s, i, i*3, ts(i)))
	}
	if _, err := w.exec(true, "INSERT INTO relaytest.items (id, name, qty, updated_at) VALUES "+strings.Join(vals, ", ")); err != nil {
		return err
	}
	vals = vals[:0]
	for o := 1; o <= 5; o++ {
		for l := 1; l <= 4; l++ {
			vals = append(vals, fmt.Sprintf("(%d, %d, 'SKU-%d-%d', %d.%02d)", order+o, l, o, l, o*100+l, (o*l*7)%100))
		}
	}
	if _, err := w.exec(true, "INSERT INTO relaytest.order_lines (order_id, line_no, sku, amount) VALUES "+strings.Join(vals, ", ")); err != nil {
		return err
	}
	if _, err := w.exec(true, fmt.Sprintf(`INSERT INTO relaytest.typed
		(id, i, bi, ubi, ti, dc, f, vc, txt, dt, d, tm, j, e, st, bits, vb) VALUES
		(%d, -2147483648, 9223372036854775807, 18446744073709551615, -128, '12345678901234567890.0123456789', 3.141592653589793,
		 ?, 'plain ascii text', %s, '1999-12-31', '838:59:59.999', '{"step": %d, "tags": ["a", "ü"], "nested": {"ok": true}}', 'red', 'a,c', b'1010101010', X'00FF10'),
		(%d, %d, %d, 0, 0, '-0.0000000001', -0.5, 'second', '', %s, '2038-01-19', '00:00:00.000', '[]', 'blue', '', b'0', X''),
		(%d, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
		(%d, 42, -1, 1, 1, '0', 1e300, 'NULL', 'the string NULL, not SQL NULL', '1970-01-01 00:00:01.000000', '2000-02-29', '-12:34:56.789', 'null', 'green', 'b', b'1111111111', NULL)`,
		base+1, ts(30), s,
		base+2, s, int64(s)<<40, ts(31),
		base+3,
		base+4), WorkloadText); err != nil {
		return err
	}

	// A multi-statement InnoDB transaction touching several tables.
	if err := w.tx("COMMIT",
		q(fmt.Sprintf("INSERT INTO relaytest.items (id, name, qty) VALUES (%d, 'in-tx', 100)", base+100)),
		q(fmt.Sprintf("UPDATE relaytest.items SET qty = qty + 10, updated_at = %s WHERE id BETWEEN %d AND %d", ts(40), base+2, base+11)),
		q(fmt.Sprintf("DELETE FROM relaytest.order_lines WHERE order_id = %d", order+5)),
		q(fmt.Sprintf("INSERT INTO relaytest.order_lines (order_id, line_no, sku, amount) VALUES (%d, 1, 'TX-1', 1.00), (%d, 2, 'TX-2', 2.50), (%d, 3, 'TX-3', 99999.99)", order+6, order+6, order+6)),
		q(fmt.Sprintf("UPDATE relaytest.typed SET j = JSON_SET(j, '$.tx', %d), vc = CONCAT(vc, ' ✓') WHERE id = %d", s, base+1)),
	); err != nil {
		return err
	}

	// A transaction that is rolled back: nothing of it may reach the binlog.
	if err := w.tx("ROLLBACK",
		q(fmt.Sprintf("INSERT INTO relaytest.items (id, name, qty) VALUES (%d, 'ghost', -1)", base+999)),
		q(fmt.Sprintf("UPDATE relaytest.items SET name = 'ghost' WHERE id BETWEEN %d AND %d", base+1, base+21)),
		q(fmt.Sprintf("DELETE FROM relaytest.order_lines WHERE order_id = %d", order+1)),
		q(fmt.Sprintf("INSERT INTO relaytest.blobs (id, label, data) VALUES (%d, 'ghost', REPEAT('g', 1000000))", base+999)),
	); err != nil {
		return err
	}

	// Rotate the binlog mid-step. FLUSH BINARY LOGS is not itself logged.
	if _, err := w.exec(false, "FLUSH BINARY LOGS"); err != nil {
		return err
	}

	// Multi-MB blobs: insert, update (before and after images), and a
	// transaction mixing a blob with small rows.
	if _, err := w.exec(true, "INSERT INTO relaytest.blobs (id, label, data) VALUES (?, ?, ?)",
		base+1, fmt.Sprintf("blob-%d-1", s), workloadBlob(s, 1, WorkloadBlobSize)); err != nil {
		return err
	}
	if _, err := w.exec(true, "UPDATE relaytest.blobs SET label = ?, data = ? WHERE id = ?",
		fmt.Sprintf("blob-%d-1-updated", s), workloadBlob(s, 2, WorkloadBlobSize), base+1); err != nil {
		return err
	}
	if err := w.tx("COMMIT",
		q("INSERT INTO relaytest.blobs (id, label, data) VALUES (?, ?, ?)", base+2, fmt.Sprintf("blob-%d-2", s), workloadBlob(s, 3, WorkloadBlobSize)),
		q(fmt.Sprintf("INSERT INTO relaytest.items (id, name, qty) VALUES (%d, 'with-blob', 0)", base+200)),
	); err != nil {
		return err
	}

	// Schema change with data on both sides of it.
	if s >= 1 {
		col := fmt.Sprintf("c%d", s)
		if _, err := w.exec(true, fmt.Sprintf("ALTER TABLE relaytest.items ADD COLUMN IF NOT EXISTS %s INT NULL DEFAULT %d", col, s)); err != nil {
			return err
		}
		if _, err := w.exec(true, fmt.Sprintf("UPDATE relaytest.items SET %s = id * 2 WHERE id BETWEEN %d AND %d", col, base+1, base+5)); err != nil {
			return err
		}
		// The previous step's first blob: a multi-MB before image.
		res, err := w.exec(false, "DELETE FROM relaytest.blobs WHERE id = ?", (s-1)*1000+1)
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err == nil && n > 0 {
			w.stats.Transactions++
		}
	}

	// Plain autocommit DELETEs, including on the composite key.
	if _, err := w.exec(true, fmt.Sprintf("DELETE FROM relaytest.order_lines WHERE order_id BETWEEN %d AND %d AND line_no > 2", order+1, order+2)); err != nil {
		return err
	}
	if _, err := w.exec(true, fmt.Sprintf("DELETE FROM relaytest.items WHERE id BETWEEN %d AND %d", base+18, base+21)); err != nil {
		return err
	}
	if _, err := w.exec(true, fmt.Sprintf("UPDATE relaytest.typed SET i = NULL, txt = CONCAT('updated ', %d) WHERE id = %d", s, base+4)); err != nil {
		return err
	}
	return nil
}

// workloadBlob returns n deterministic, incompressible-looking bytes, so
// blob contents differ per step and row and compression cannot hide size
// problems.
func workloadBlob(step, row, n int) []byte {
	b := make([]byte, n)
	x := uint64(step)*0x9E3779B97F4A7C15 ^ uint64(row)*0xBF58476D1CE4E5B9 ^ 0x94D049BB133111EB
	for i := 0; i < n; i += 8 {
		// xorshift64*
		x ^= x >> 12
		x ^= x << 25
		x ^= x >> 27
		v := x * 0x2545F4914F6CDD1D
		for j := 0; j < 8 && i+j < n; j++ {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	return b
}
