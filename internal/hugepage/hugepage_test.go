package hugepage

import (
	"os"
	"testing"
)

// requireMode returns the kernel's transparent huge page setting; a kernel without
// one skips the test outside CI and fails it in CI (which runs on Linux with it).
func requireMode(t *testing.T) string {
	t.Helper()
	m := Mode()
	if m == "" {
		if os.Getenv("CI") != "" {
			t.Fatal("cannot read the kernel's transparent huge page setting (/sys/kernel/mm/transparent_hugepage/enabled): CI runs on Linux with it")
		}
		t.Skip("this kernel has no transparent huge pages: nothing to advise")
	}
	return m
}

// TestAdviseMarksTheRange: where the kernel takes advice (madvise), an advised
// buffer's mapping carries the kernel's "hg" flag; where it says always or never,
// the advisor gives none; GODEBUG=disablethp turns it off whatever the kernel says.
func TestAdviseMarksTheRange(t *testing.T) {
	mode := requireMode(t)
	t.Setenv("GODEBUG", "")
	a := NewAdvisor()
	if want := mode == "madvise"; a.On() != want {
		t.Fatalf("transparent_hugepage %q: advisor on = %v, want %v", mode, a.On(), want)
	}
	b := make([]byte, 3*Size)
	if err := a.Advise(b, nil); err != nil {
		t.Fatal(err)
	}
	got, err := Advised(b)
	if err != nil {
		t.Fatal(err)
	}
	if got != a.On() {
		t.Fatalf("transparent_hugepage %q: the buffer's mapping advised = %v after Advise, want %v", mode, got, a.On())
	}
	for _, v := range []string{"disablethp=1", "madvdontneed=0,disablethp=2"} {
		t.Setenv("GODEBUG", v)
		if NewAdvisor().On() {
			t.Errorf("GODEBUG=%s: the advisor still gives advice", v)
		}
	}
	t.Setenv("GODEBUG", "disablethp=1,disablethp=0")
	if NewAdvisor().On() != a.On() {
		t.Error("GODEBUG=disablethp=1,disablethp=0 (the last value counts): the advisor's decision changed")
	}
}

// TestSysfsChoice: the bracketed value of a sysfs choice list.
func TestSysfsChoice(t *testing.T) {
	dir := t.TempDir()
	for in, want := range map[string]string{"always [madvise] never\n": "madvise", "[always] madvise never": "always", "never": "", "": ""} {
		p := dir + "/f"
		if err := os.WriteFile(p, []byte(in), 0o644); err != nil {
			t.Fatal(err)
		}
		if got := sysfsChoice(p); got != want {
			t.Errorf("sysfsChoice(%q) = %q, want %q", in, got, want)
		}
	}
	if got := sysfsChoice(dir + "/missing"); got != "" {
		t.Errorf("a missing file gave %q", got)
	}
}
