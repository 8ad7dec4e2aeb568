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

// The served-file check finds a transaction whose commit is missing, in
// mariadb-binlog's own output (its lines separate fields with tabs).
func TestIncompleteTxns(t *testing.T) {
	out := "#261204 23:58:31 server id 1  end_log_pos 25380 CRC32 0xb84c2e99 \tGTID 1-1-96 trans\n" +
		"START TRANSACTION\n#261204 23:58:31 server id 1  end_log_pos 25621 CRC32 0x1d62b92a \tWrite_rows: table id 18 flags: STMT_END_F\n" +
		"#261204 23:58:31 server id 1  end_log_pos 25652 CRC32 0x1 \tXid = 77\nCOMMIT/*!*/;\n" +
		"#261204 23:58:31 server id 1  end_log_pos 25694 CRC32 0xb1cfde17 \tGTID 1-1-97 trans\n" +
		"#261204 23:58:31 server id 1  end_log_pos 25936 CRC32 0x3e1f056a \tWrite_rows: table id 18 flags: STMT_END_F\n" +
		"#261204 23:58:31 server id 1  end_log_pos 25978 CRC32 0xd82f39be \tGTID 1-1-98 ddl\n" +
		"CREATE TABLE x (a INT)\n"
	if got := incompleteTxns(out); !reflect.DeepEqual(got, []string{"1-1-97"}) {
		t.Fatalf("incomplete transactions %v, want [1-1-97]", got)
	}
}
