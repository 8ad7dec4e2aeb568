package server

import (
	"crypto/md5"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Flag files as dragonboat writes them pass; missing, they are no damage (a new node
// host writes them); empty, cut short, with a flipped byte or (the identity) a record
// of the wrong size, the check names the file. (test/e2e's
// TestDamagedRaftFlagFileIsNamed checks files dragonboat wrote.)
func TestCheckRaftFlagFiles(t *testing.T) {
	dir := t.TempDir()
	if err := checkRaftFlagFiles(dir); err != nil {
		t.Fatalf("missing files: %v", err)
	}
	flag := func(record []byte) []byte {
		sum := md5.Sum(record)
		return append(append([]byte{}, sum[8:]...), record...)
	}
	ds := flag([]byte("\n\x0f127.0.0.1:7071\x12\x02vm"))
	id := flag([]byte{1, 2, 3, 4, 5, 6, 7, 8})
	write := func(name string, b []byte) {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	flipped := func(b []byte) []byte {
		c := append([]byte{}, b...)
		c[10] ^= 1
		return c
	}
	for _, tc := range []struct {
		name    string
		ds, id  []byte
		damaged string // the file named, "" for none
	}{
		{"as written", ds, id, ""},
		{"empty", nil, id, "dragonboat.ds"},
		{"cut short", ds[:5], id, "dragonboat.ds"},
		{"cut in the record", ds[:len(ds)-1], id, "dragonboat.ds"},
		{"flipped byte", flipped(ds), id, "dragonboat.ds"},
		{"identity empty", ds, nil, "NODEHOST.ID"},
		{"identity flipped", ds, flipped(id), "NODEHOST.ID"},
		{"identity of 4 bytes", ds, flag([]byte{1, 2, 3, 4}), "NODEHOST.ID"},
	} {
		write("dragonboat.ds", tc.ds)
		write("NODEHOST.ID", tc.id)
		err := checkRaftFlagFiles(dir)
		if tc.damaged == "" && err != nil {
			t.Errorf("%s: %v", tc.name, err)
		}
		if tc.damaged != "" && (err == nil || !strings.Contains(err.Error(), filepath.Join(dir, tc.damaged)+" (")) || err != nil && !strings.Contains(err.Error(), "is damaged") {
			t.Errorf("%s: got %v, want %s named as damaged", tc.name, err, tc.damaged)
		}
	}
}
