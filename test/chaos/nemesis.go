package chaos

import (
	"fmt"
	"math/rand"
	"time"
)

// Kind is a fault the nemesis injects.
type Kind string

// The faults. Each is healed, and the cluster healthy again, before the next
// starts: faults meet each other's aftermath (a restarted node catching up, a
// replica reconnecting), never each other.
const (
	KillLeader     Kind = "kill-leader"      // SIGKILL the node leading an upstream's group, restart it
	KillFollower   Kind = "kill-follower"    // SIGKILL a node that follows that group, restart it
	KillMetaLeader Kind = "kill-meta-leader" // SIGKILL the metadata group's leader, restart it
	Pause          Kind = "pause"            // SIGSTOP a group leader longer than the election timeout, SIGCONT
	MasterRestart  Kind = "master-restart"   // restart a master (mariadbd stop and start)
	DiskFull       Kind = "disk-full"        // take the free space of one node's filesystem below its reserve, give it back
	MoveReplica    Kind = "move-replica"     // point a replica at another node
	// Network faults, through the proxies standing at every node's raft and admin
	// address and at every master's: a cut connection stalls (no reset) until
	// the fault heals, then resumes or is reset (Fault.Reset).
	Partition  Kind = "partition"   // isolate a group leader: raft both ways, its admin (relay) port
	OneWay     Kind = "one-way"     // nothing reaches a group leader; what it sends still arrives
	Flap       Kind = "flap"        // a group leader is isolated and rejoined every Fault.Period
	MasterLink Kind = "master-link" // the link to a master stalls (the leader's syncer must notice)
	// MasterFailover kills the semi-sync master (the last upstream) and promotes
	// its standby, a replica of Flotilla; Flotilla is repointed at it.
	MasterFailover Kind = "master-failover"
	// PowerCut freezes one node (SIGSTOP), kills it, cuts every file of its
	// segment store and raft log back to what its last fsync made durable
	// (internal/faultfs), and restarts it.
	PowerCut Kind = "power-cut"
	SlowDisk Kind = "slow-disk" // every fsync of one node (raft log and segments) waits Fault.Period (internal/faultfs)
)

// Kinds is every fault kind.
func Kinds() []Kind {
	return []Kind{KillLeader, KillFollower, KillMetaLeader, Pause, MasterRestart, DiskFull, MoveReplica, Partition, OneWay, Flap, MasterLink, SlowDisk, MasterFailover, PowerCut}
}

// Fault is one scheduled fault.
type Fault struct {
	Kind Kind `json:"kind"`
	// At is when it starts, from the run's start; Hold how long it lasts before
	// healing.
	At   time.Duration `json:"at"`
	Hold time.Duration `json:"hold"`
	// Upstream picks the group (or master, or replica) by index; the node with the
	// role is found at run time.
	Upstream int `json:"upstream"`
	Replica  int `json:"replica"`
	// Reset heals a network fault by resetting the stalled connections instead of
	// resuming them; Period is a flap's half-cycle, or a slow disk's fsync delay.
	Reset  bool          `json:"reset,omitempty"`
	Period time.Duration `json:"period,omitempty"`
}

// String is how logs and the summary name the fault.
func (f Fault) String() string {
	return fmt.Sprintf("%s at %s for %s (upstream %d)", f.Kind, f.At.Round(time.Second), f.Hold.Round(100*time.Millisecond), f.Upstream)
}

// Schedule is the faults of a run of length d with seed: every kind at least
// perKind times, in a shuffled order, spread over the run.
func Schedule(seed int64, d time.Duration, perKind, upstreams, replicas int) []Fault {
	r := rand.New(rand.NewSource(seed))
	var kinds []Kind
	for i := 0; i < perKind; i++ {
		kinds = append(kinds, Kinds()...)
	}
	r.Shuffle(len(kinds), func(i, j int) { kinds[i], kinds[j] = kinds[j], kinds[i] })
	slot := d / time.Duration(len(kinds)+1)
	out := make([]Fault, 0, len(kinds))
	for i, k := range kinds {
		f := Fault{Kind: k, At: time.Duration(i+1)*slot - slot/2 + time.Duration(r.Int63n(int64(slot/4)+1)),
			Upstream: r.Intn(upstreams), Replica: r.Intn(replicas)}
		switch k {
		case Pause:
			f.Hold = 2*time.Second + time.Duration(r.Int63n(int64(2*time.Second))) // election timeout: 1-2 s
		case DiskFull:
			f.Hold = 4*time.Second + time.Duration(r.Int63n(int64(4*time.Second)))
		case MoveReplica:
		case MasterFailover:
			f.Upstream = upstreams - 1
		case Partition, OneWay:
			f.Hold = 2*time.Second + time.Duration(r.Int63n(int64(3*time.Second)))
			f.Reset = r.Intn(2) == 0
		case Flap:
			f.Hold = 3*time.Second + time.Duration(r.Int63n(int64(3*time.Second)))
			f.Period = 150*time.Millisecond + time.Duration(r.Int63n(int64(450*time.Millisecond)))
			f.Reset = r.Intn(2) == 0
		case SlowDisk:
			f.Hold = 3*time.Second + time.Duration(r.Int63n(int64(3*time.Second)))
			f.Period = 50*time.Millisecond + time.Duration(r.Int63n(int64(350*time.Millisecond)))
		case MasterLink:
			f.Hold = 3*time.Second + time.Duration(r.Int63n(int64(5*time.Second)))
			f.Reset = r.Intn(2) == 0
		default:
			f.Hold = time.Duration(r.Int63n(int64(3 * time.Second)))
		}
		out = append(out, f)
	}
	return out
}
