package chaos

import (
	"reflect"
	"testing"
	"time"
)

// The same seed replays the same schedule; every kind comes at least perKind times,
// in order of time, within the run.
func TestScheduleReplays(t *testing.T) {
	a := Schedule(7, 75*time.Second, 2, 2, 2)
	if b := Schedule(7, 75*time.Second, 2, 2, 2); !reflect.DeepEqual(a, b) {
		t.Fatal("the same seed gave two schedules")
	}
	if c := Schedule(8, 75*time.Second, 2, 2, 2); reflect.DeepEqual(a, c) {
		t.Fatal("two seeds gave the same schedule")
	}
	count := map[Kind]int{}
	for i, f := range a {
		count[f.Kind]++
		if f.At <= 0 || f.At >= 75*time.Second || i > 0 && f.At <= a[i-1].At {
			t.Fatalf("fault %d (%s) out of order or outside the run", i, f)
		}
	}
	for _, k := range Kinds() {
		if count[k] < 2 {
			t.Errorf("%s scheduled %d times, want 2", k, count[k])
		}
	}
}
