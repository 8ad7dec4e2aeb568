package server

import (
	"crypto/md5"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A flag file as dragonboat writes it passes; missing, it is no damage (a new node
// host writes it); empty, cut short or with a flipped byte, the check names it.
// (test/e2e's TestDamagedRaftFlagFileIsNamed checks a file dragonboat wrote.)
func TestCheckRaftFlagFile(t *testing.T) {
	dir := t.TempDir()
	if err := checkRaftFlagFile(dir); err != nil {
		t.Fatalf("missing file: %v", err)
	}
	record := []byte("\n\x0f127.0.0.1:7071\x12\x02vm")
	sum := md5.Sum(record)
	good := append(append([]byte{}, sum[8:]...), record...)
	path := filepath.Join(dir, raftFlagFile)
	for _, tc := range []struct {
		name    string
		content []byte
		damaged bool
	}{
		{"as written", good, false},
		{"empty", nil, true},
		{"cut short", good[:5], true},
		{"cut in the record", good[:len(good)-1], true},
		{"flipped byte", append(append([]byte{}, good[:10]...), append([]byte{good[10] ^ 1}, good[11:]...)...), true},
	} {
		if err := os.WriteFile(path, tc.content, 0o600); err != nil {
			t.Fatal(err)
		}
		err := checkRaftFlagFile(dir)
		if !tc.damaged && err != nil {
			t.Errorf("%s: %v", tc.name, err)
		}
		if tc.damaged && (err == nil || !strings.Contains(err.Error(), path+" is damaged")) {
			t.Errorf("%s: got %v, want the file named as damaged", tc.name, err)
		}
	}
}
