package mariadbtest

import (
	"context"
	"fmt"
)

// MaxPacketArg lets a server write, and replicate, events of up to 1 GiB: the large
// event tests start masters and replicas with it.
const MaxPacketArg = "--max-allowed-packet=1073741824"

// BlobDB is the database the large-event workloads write, with one table, blobs.
const BlobDB = "big"

// CreateBlobTable creates BlobDB.blobs (id, LONGBLOB b).
func CreateBlobTable(ctx context.Context, s *Server) error {
	for _, q := range []string{"CREATE DATABASE " + BlobDB, "CREATE TABLE " + BlobDB + ".blobs (id INT PRIMARY KEY, b LONGBLOB) ENGINE=InnoDB"} {
		if err := s.Exec(ctx, q); err != nil {
			return fmt.Errorf("%s: %w", q, err)
		}
	}
	return nil
}

// InsertBlobRow writes one row of n bytes as row id: one row event of about n bytes.
func InsertBlobRow(ctx context.Context, s *Server, id, n int) error {
	if err := s.Exec(ctx, fmt.Sprintf("INSERT INTO %s.blobs VALUES (%d, REPEAT('x', %d))", BlobDB, id, n)); err != nil {
		return fmt.Errorf("insert a %d-byte row: %w", n, err)
	}
	return nil
}

// InsertBlobRows writes rows from..to of n bytes each in one transaction: one row
// event per row.
func InsertBlobRows(ctx context.Context, s *Server, from, to, n int) error {
	q := fmt.Sprintf("INSERT INTO %s.blobs SELECT seq, REPEAT(CHAR(65 + seq %% 26), %d) FROM %s.seq_%d_to_%d", BlobDB, n, BlobDB, from, to)
	if err := s.Exec(ctx, q); err != nil {
		return fmt.Errorf("insert rows %d-%d of %d bytes in one transaction: %w", from, to, n, err)
	}
	return nil
}
