package mysqlauth

import (
	"testing"

	"github.com/go-mysql-org/go-mysql/mysql"
)

func TestScrambleAgainstStoredHash(t *testing.T) {
	nonce := []byte("abcdefghij0123456789")
	for _, plugin := range []string{Native, CachingSHA2} {
		h, err := Hash(plugin, "s3cret")
		if err != nil {
			t.Fatal(err)
		}
		if !CheckScramble(plugin, h, nonce, Scramble(plugin, "s3cret", nonce)) {
			t.Errorf("%s: the right password is refused", plugin)
		}
		if CheckScramble(plugin, h, nonce, Scramble(plugin, "s3cret!", nonce)) {
			t.Errorf("%s: a wrong password is accepted", plugin)
		}
		if CheckScramble(plugin, h, []byte("another-nonce-000000"), Scramble(plugin, "s3cret", nonce)) {
			t.Errorf("%s: a replayed scramble is accepted", plugin)
		}
		if CheckScramble(plugin, h, nonce, nil) || CheckScramble(plugin, "zz", nonce, Scramble(plugin, "s3cret", nonce)) {
			t.Errorf("%s: empty scramble or bad hash accepted", plugin)
		}
		if !CheckClear(plugin, h, "s3cret") || CheckClear(plugin, h, "other") {
			t.Errorf("%s: cleartext check wrong", plugin)
		}
	}
}

// The scrambles are the ones real clients compute: go-mysql's client implementation
// is an independent reference.
func TestScrambleMatchesClientLibrary(t *testing.T) {
	nonce := []byte("abcdefghij0123456789")
	if got, want := Scramble(Native, "pw", nonce), mysql.CalcNativePassword(nonce, []byte("pw")); string(got) != string(want) {
		t.Errorf("native scramble differs from go-mysql's client")
	}
	if got, want := Scramble(CachingSHA2, "pw", nonce), mysql.CalcCachingSha2Password(nonce, []byte("pw")); string(got) != string(want) {
		t.Errorf("caching_sha2 scramble differs from go-mysql's client")
	}
	if _, err := Hash("mysql_old_password", "x"); err == nil {
		t.Error("an unknown plugin must be refused")
	}
}
