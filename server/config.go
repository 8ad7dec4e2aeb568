package server

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"io"
	"net"
	"reflect"
	"sort"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/flotilla-relay/flotilla/internal/secure"
	"github.com/flotilla-relay/flotilla/mysqlfront"
)

// ParseConfig reads a YAML configuration. Every key must be one Config knows, and
// every value must fit its key: an error names the key (and its line), so a typo is
// refused at start instead of silently ignored.
func ParseConfig(b []byte) (Config, error) {
	var cfg Config
	var doc yaml.Node
	if err := yaml.NewDecoder(bytes.NewReader(b)).Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return cfg, nil // an empty file
		}
		return cfg, fmt.Errorf("not valid YAML: %w", err)
	}
	if len(doc.Content) == 0 {
		return cfg, nil
	}
	cfg.explicit = map[string]bool{}
	if err := decodeStrict(doc.Content[0], reflect.ValueOf(&cfg).Elem(), "", cfg.explicit); err != nil {
		return cfg, err
	}
	return cfg, nil
}

// Explicit reports whether the configuration file set key (a value of 0 the file
// gives, such as retention_age: 0, is not replaced by a default).
func (c Config) Explicit(key string) bool { return c.explicit[key] }

// ConfigKeys lists every key of the YAML configuration, nested ones as "tls.ca".
func ConfigKeys() []string {
	var keys []string
	var walk func(t reflect.Type, prefix string)
	walk = func(t reflect.Type, prefix string) {
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			name := yamlName(f)
			if name == "" {
				continue
			}
			if f.Type.Kind() == reflect.Struct && f.Type != reflect.TypeOf(time.Duration(0)) {
				walk(f.Type, prefix+name+".")
				continue
			}
			keys = append(keys, prefix+name)
		}
	}
	walk(reflect.TypeOf(Config{}), "")
	sort.Strings(keys)
	return keys
}

func yamlName(f reflect.StructField) string {
	tag, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
	if tag == "-" || !f.IsExported() {
		return ""
	}
	return tag
}

// decodeStrict decodes mapping n into dst field by field, recording each key set.
func decodeStrict(n *yaml.Node, dst reflect.Value, prefix string, set map[string]bool) error {
	if n.Kind != yaml.MappingNode {
		if prefix == "" {
			return fmt.Errorf("line %d: the configuration must be a mapping of keys to values", n.Line)
		}
		return fmt.Errorf("key %s (line %d): expected a mapping", strings.TrimSuffix(prefix, "."), n.Line)
	}
	fields := map[string]reflect.Value{}
	t := dst.Type()
	for i := 0; i < t.NumField(); i++ {
		if name := yamlName(t.Field(i)); name != "" {
			fields[name] = dst.Field(i)
		}
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		key := prefix + k.Value
		if set[key] {
			return fmt.Errorf("key %s (line %d) is given twice", key, k.Line)
		}
		set[key] = true
		f, ok := fields[k.Value]
		if !ok {
			return fmt.Errorf("unknown key %q (line %d); the keys are: %s", key, k.Line, strings.Join(ConfigKeys(), ", "))
		}
		if f.Kind() == reflect.Struct && f.Type() != reflect.TypeOf(time.Duration(0)) {
			if err := decodeStrict(v, f, key+".", set); err != nil {
				return err
			}
			continue
		}
		if f.Type() == reflect.TypeOf(time.Duration(0)) && v.Kind == yaml.ScalarNode && v.Tag == "!!int" {
			if v.Value != "0" {
				return fmt.Errorf("key %s (line %d): %s has no unit: write it as a duration such as 30s, 15m or 168h", key, v.Line, v.Value)
			}
			f.SetInt(0)
			continue
		}
		if err := v.Decode(f.Addr().Interface()); err != nil {
			var te *yaml.TypeError
			msg := err.Error()
			if errors.As(err, &te) && len(te.Errors) > 0 {
				msg = strings.Join(te.Errors, "; ")
			}
			return fmt.Errorf("key %s (line %d): %s", key, v.Line, msg)
		}
	}
	return nil
}

// Validate checks a configuration (after Defaults) as far as it can without
// starting: addresses, certificates, lists, log settings and the admin API's
// exposure. Each error names the setting.
func (c Config) Validate() error {
	if c.NodeID == 0 {
		return errors.New("node_id (--node-id) must be positive")
	}
	if _, err := c.listeners(); err != nil {
		return fmt.Errorf("mysql_addr: %w", err)
	}
	for key, addr := range map[string]string{"admin_addr": c.AdminAddr, "raft_addr": c.RaftAddr, "metrics_addr": c.MetricsAddr,
		"admin_listen_addr": c.AdminListenAddr, "raft_listen_addr": c.RaftListenAddr} {
		if addr == "" && (key == "metrics_addr" || strings.HasSuffix(key, "_listen_addr")) {
			continue
		}
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return fmt.Errorf("%s %q is not HOST:PORT", key, addr)
		}
	}
	for _, j := range c.Join {
		if _, _, err := net.SplitHostPort(j); err != nil {
			return fmt.Errorf("join: %q is not HOST:PORT of a member's admin API", j)
		}
	}
	for key, v := range map[string]int64{"max_connections": int64(c.MaxConnections), "max_user_connections": int64(c.MaxUserConnections), "max_handshakes_per_host": int64(c.MaxHandshakesPerHost),
		"max_allowed_packet": int64(min(c.MaxAllowedPacket, 1<<62)), "retention_age": int64(c.RetentionAge), "node_down_after": int64(c.NodeDownAfter), "idle_timeout": int64(c.IdleTimeout)} {
		if v < 0 {
			return fmt.Errorf("%s must not be negative", key)
		}
	}
	if p := c.MasterSilenceProbe; p != 0 && (p < time.Second || p > 2*time.Minute) {
		return fmt.Errorf("master_silence_probe %v is outside 1s to 2m: shorter probes load the master, longer ones leave a dead link unnoticed for two of them (and pass the 5 minutes after which an undecidable silence ends the stream)", p)
	}
	if c.ServedFileSize > 3<<30 || c.ServedFileSize > 0 && c.ServedFileSize < 1<<20 {
		return fmt.Errorf("served_file_size %v is outside 1 MiB to 3 GiB: served binlog positions are 32-bit, a file must close well before 4 GiB, and tiny files only multiply them", c.ServedFileSize)
	}
	if c.MemoryPretouch > 64<<30 {
		return fmt.Errorf("memory_pretouch %v is over 64 GiB: it is the heap a node uses under load (256 MiB by default), 0 for none", c.MemoryPretouch)
	}
	if c.RecordCache > 64<<30 || c.RecordCache > 0 && c.RecordCache < 1<<20 {
		return fmt.Errorf("record_cache %v is outside 1 MiB to 64 GiB (0 for the default, 128 MiB): it holds served records of 256 KiB to 8 MiB", c.RecordCache)
	}
	if c.AllowIPs != "" {
		if _, err := mysqlfront.ParseAllowList(c.AllowIPs); err != nil {
			return fmt.Errorf("allow_ips: %w", err)
		}
	}
	if _, err := c.transport(); err != nil {
		return err
	}
	if _, err := NewLogger(io.Discard, c.LogFormat, c.LogLevel); err != nil {
		return fmt.Errorf("log_format/log_level: %w", err)
	}
	return c.checkExposure(secure.Admin{Token: c.AdminToken, Certificates: c.TLS.Enabled()})
}

// checkExposure applies the exposure checks to the bound addresses and to the
// advertised ones: a loopback bind behind a port forward is reachable from the
// network all the same.
func (c Config) checkExposure(admin secure.Admin) error {
	for _, a := range []string{c.raftListen(), c.RaftAddr} {
		if err := secure.CheckRaftExposure(a, c.TLS.Enabled(), c.InsecureRaft); err != nil {
			return err
		}
	}
	for _, a := range []string{c.adminListen(), c.AdminAddr} {
		if err := secure.CheckAdminExposure(a, admin, c.InsecureAdmin); err != nil {
			return err
		}
	}
	return nil
}

// offLoopback reports whether the bound or the advertised address of a port is
// off the loopback.
func offLoopback(bound, advertised string) bool {
	lb, _ := secure.Loopback(bound)
	la, _ := secure.Loopback(advertised)
	return !lb || !la
}

// adminListen and raftListen are the addresses the node binds.
func (c Config) adminListen() string { return cmp.Or(c.AdminListenAddr, c.AdminAddr) }
func (c Config) raftListen() string  { return cmp.Or(c.RaftListenAddr, c.RaftAddr) }
