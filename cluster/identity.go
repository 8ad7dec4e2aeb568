package cluster

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"io/fs"
	"os"
	"path/filepath"
)

// IdentityFile is the name of the identity file in a node's data directory.
const IdentityFile = "cluster.json"

// LegacyDeploymentID is the raft deployment id of data directories made before
// clusters had identities; such a node keeps it so its raft data stays readable.
const LegacyDeploymentID = 1

// Identity is the cluster a node belongs to.
type Identity struct {
	// ClusterID names the cluster; it is shown to operators and is not secret.
	ClusterID string `json:"cluster_id"`
	// Secret authenticates node-to-node calls (binlog relays).
	Secret []byte `json:"secret"`
	// DeploymentID is dragonboat's: nodes with different ids drop each other's
	// messages.
	DeploymentID uint64 `json:"deployment_id"`
	// Joined: this node was admitted by a member (it did not bootstrap the cluster),
	// so it starts its metadata replica by joining, never as a new group.
	Joined bool `json:"joined,omitempty"`
	// MetaObserver: this node joined the metadata group as a non-voting member (it
	// starts its metadata replica as one; raft restores a promotion on restart).
	MetaObserver bool `json:"meta_observer,omitempty"`
	// NodeKeys sign node-to-node calls (see Keyring), following the metadata
	// group's rotations (`flotilla cluster rotate-secret`). Empty until the first
	// rotation: generation 0 is then derived from the secret.
	NodeKeys []NodeKey `json:"node_keys,omitempty"`
	// ActiveNodeKey is the generation that signs.
	ActiveNodeKey uint64 `json:"active_node_key,omitempty"`
}

// Keys returns the node keys: NodeKeys, or generation 0 derived from the secret
// (HMAC), so that the secret itself, which also keys the sealed passwords, never
// signs a call.
func (id Identity) Keys() []NodeKey {
	if len(id.NodeKeys) > 0 {
		return id.NodeKeys
	}
	m := hmac.New(sha256.New, id.Secret)
	m.Write([]byte("flotilla node-to-node v1"))
	return []NodeKey{{Gen: 0, Key: m.Sum(nil)}}
}

// SaveNodeKeys records the node keys held and the active generation in the
// identity in dataDir.
func SaveNodeKeys(dataDir string, keys []NodeKey, active uint64) error {
	id, err := LoadIdentity(dataDir)
	if err != nil {
		return err
	}
	id.NodeKeys, id.ActiveNodeKey = keys, active
	return SaveIdentity(dataDir, id)
}

// Key derives a key for one purpose from the secret, so that no use of a derived
// key exposes the secret or another purpose's key.
func (id Identity) Key(purpose string) []byte {
	m := hmac.New(sha256.New, id.Secret)
	m.Write([]byte("flotilla key: " + purpose))
	return m.Sum(nil)
}

// NewIdentity makes the identity of a new cluster.
func NewIdentity() (Identity, error) {
	var id [16]byte
	secret := make([]byte, 32)
	if _, err := rand.Read(id[:]); err != nil {
		return Identity{}, fmt.Errorf("generate cluster id: %w", err)
	}
	if _, err := rand.Read(secret); err != nil {
		return Identity{}, fmt.Errorf("generate cluster secret: %w", err)
	}
	cid := hex.EncodeToString(id[:])
	return Identity{ClusterID: cid, Secret: secret, DeploymentID: DeploymentID(cid)}, nil
}

// DeploymentID derives the raft deployment id from a cluster id (never 0, never the
// legacy id).
func DeploymentID(clusterID string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(clusterID))
	v := h.Sum64()
	if v <= LegacyDeploymentID {
		v += 2
	}
	return v
}

// ErrNoIdentity means the data directory belongs to no cluster yet.
var ErrNoIdentity = errors.New("no cluster identity")

// LoadIdentity reads the identity in dataDir, or returns ErrNoIdentity.
func LoadIdentity(dataDir string) (Identity, error) {
	b, err := os.ReadFile(filepath.Join(dataDir, IdentityFile))
	if errors.Is(err, fs.ErrNotExist) {
		return Identity{}, ErrNoIdentity
	}
	if err != nil {
		return Identity{}, fmt.Errorf("read cluster identity: %w", err)
	}
	var id Identity
	if err := json.Unmarshal(b, &id); err != nil || id.ClusterID == "" || id.DeploymentID == 0 {
		return Identity{}, fmt.Errorf("cluster identity %s is damaged (%v): restore it from a backup or from another node's copy", filepath.Join(dataDir, IdentityFile), err)
	}
	return id, nil
}

// SaveIdentity writes the identity durably (0600: it holds the cluster secret).
func SaveIdentity(dataDir string, id Identity) error {
	b, err := json.MarshalIndent(id, "", "  ")
	if err != nil {
		return fmt.Errorf("encode cluster identity: %w", err)
	}
	if err := WriteDurable(filepath.Join(dataDir, IdentityFile), b, 0o600); err != nil {
		return fmt.Errorf("write cluster identity: %w", err)
	}
	return nil
}

// WriteDurable replaces path with data so that a crash leaves the old file or the
// new one, never a torn one: a synced temporary file renamed over it, then the
// directory synced.
func WriteDurable(path string, data []byte, perm os.FileMode) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, perm)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("sync %s: %w", tmp, err)
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	d, err := os.Open(filepath.Dir(path))
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync directory %s: %w", filepath.Dir(path), err)
	}
	return nil
}
