package server

import (
	"strings"
	"testing"
	"time"
)

// Every key, one at a time: a good value lands in Config, a bad one is refused with
// the key named.
func TestParseConfigKeyByKey(t *testing.T) {
	cases := []struct {
		key, good, bad string
		check          func(Config) bool
	}{
		{"node_id", "7", "seven", func(c Config) bool { return c.NodeID == 7 }},
		{"data", "/d", "[1, 2]", func(c Config) bool { return c.DataDir == "/d" }},
		{"mysql_addr", "127.0.0.1:1", "{a: 1}", func(c Config) bool { return c.MySQLAddr.String() == "127.0.0.1:1" }},
		{"mysql_addr", "[127.0.0.1:1, 'mysql=127.0.0.1:2,version=8.4.3']", "{a: 1}", func(c Config) bool {
			return len(c.MySQLAddr) == 2 && c.MySQLAddr[1] == "mysql=127.0.0.1:2,version=8.4.3"
		}},
		{"admin_addr", "127.0.0.1:2", "{a: 1}", func(c Config) bool { return c.AdminAddr == "127.0.0.1:2" }},
		{"raft_addr", "127.0.0.1:3", "{a: 1}", func(c Config) bool { return c.RaftAddr == "127.0.0.1:3" }},
		{"admin_listen_addr", "127.0.0.1:5", "{a: 1}", func(c Config) bool { return c.AdminListenAddr == "127.0.0.1:5" }},
		{"raft_listen_addr", "127.0.0.1:6", "{a: 1}", func(c Config) bool { return c.RaftListenAddr == "127.0.0.1:6" }},
		{"metrics_addr", "127.0.0.1:4", "{a: 1}", func(c Config) bool { return c.MetricsAddr == "127.0.0.1:4" }},
		{"join", "[a:1, b:2]", "{a: 1}", func(c Config) bool { return len(c.Join) == 2 }},
		{"labels", "{zone: a}", "[x]", func(c Config) bool { return c.Labels["zone"] == "a" }},
		{"admin_token", "t", "{a: 1}", func(c Config) bool { return c.AdminToken == "t" }},
		{"retention_age", "48h", "two days", func(c Config) bool { return c.RetentionAge == 48*time.Hour }},
		{"retention_bytes", "1000", "-x", func(c Config) bool { return c.RetentionBytes == 1000 }},
		{"segment_size", "4K", "big", func(c Config) bool { return c.SegmentSize == 4096 }},
		{"served_file_size", "65536", "huge", func(c Config) bool { return c.ServedFileSize == 65536 }},
		{"record_cache", "16M", "big", func(c Config) bool { return c.RecordCache == 16<<20 }},
		{"memory_pretouch", "64M", "lots", func(c Config) bool { return c.MemoryPretouch == 64<<20 }},
		{"raft_payload_reserve", "1G", "some", func(c Config) bool { return c.RaftPayloadReserve == 1<<30 }},
		{"min_free_disk", "1G", "lots", func(c Config) bool { return c.MinFreeDisk == 1<<30 }},
		{"node_down_after", "30s", "soon", func(c Config) bool { return c.NodeDownAfter == 30*time.Second }},
		{"master_silence_probe", "3s", "soon", func(c Config) bool { return c.MasterSilenceProbe == 3*time.Second }},
		{"max_connections", "10", "many", func(c Config) bool { return c.MaxConnections == 10 }},
		{"max_user_connections", "3", "few", func(c Config) bool { return c.MaxUserConnections == 3 }},
		{"max_handshakes_per_host", "5", "few", func(c Config) bool { return c.MaxHandshakesPerHost == 5 }},
		{"admin_token_file", "/etc/t", "[x]", func(c Config) bool { return c.AdminTokenFile == "/etc/t" }},
		{"insecure_raft", "true", "maybe", func(c Config) bool { return c.InsecureRaft }},
		{"insecure_admin", "true", "maybe", func(c Config) bool { return c.InsecureAdmin }},
		{"max_allowed_packet", "64M", "1Q", func(c Config) bool { return c.MaxAllowedPacket == 64<<20 }},
		{"idle_timeout", "1h", "forever", func(c Config) bool { return c.IdleTimeout == time.Hour }},
		{"allow_ips", "10.0.0.0/8", "[x]", func(c Config) bool { return c.AllowIPs == "10.0.0.0/8" }},
		{"mysql_tls_cert", "c.pem", "[x]", func(c Config) bool { return c.MySQLTLSCert == "c.pem" }},
		{"mysql_tls_key", "k.pem", "[x]", func(c Config) bool { return c.MySQLTLSKey == "k.pem" }},
		{"tls.ca", "ca.pem", "[x]", func(c Config) bool { return c.TLS.CA == "ca.pem" }},
		{"tls.cert", "n.pem", "[x]", func(c Config) bool { return c.TLS.Cert == "n.pem" }},
		{"tls.key", "n-key.pem", "[x]", func(c Config) bool { return c.TLS.Key == "n-key.pem" }},
		{"log_level", "debug", "[x]", func(c Config) bool { return c.LogLevel == "debug" }},
		{"log_format", "json", "[x]", func(c Config) bool { return c.LogFormat == "json" }},
		{"debug_pprof", "true", "maybe", func(c Config) bool { return c.DebugPprof }},
		{"buffered_io", "true", "maybe", func(c Config) bool { return c.BufferedIO }},
	}
	seen := map[string]bool{}
	doc := func(key, v string) string {
		if parent, child, nested := strings.Cut(key, "."); nested {
			return parent + ":\n  " + child + ": " + v + "\n"
		}
		return key + ": " + v + "\n"
	}
	for _, tc := range cases {
		seen[tc.key] = true
		cfg, err := ParseConfig([]byte(doc(tc.key, tc.good)))
		if err != nil || !tc.check(cfg) {
			t.Errorf("%s: %s: %+v, %v", tc.key, tc.good, cfg, err)
		}
		if _, err := ParseConfig([]byte(doc(tc.key, tc.bad))); err == nil || !strings.Contains(err.Error(), "key "+tc.key) {
			t.Errorf("%s: bad value %s must be refused naming the key, got %v", tc.key, tc.bad, err)
		}
	}
	for _, k := range ConfigKeys() {
		if !seen[k] {
			t.Errorf("config key %s has no test case", k)
		}
	}
	_, err := ParseConfig([]byte("mysql_adr: 127.0.0.1:3307\n"))
	if err == nil || !strings.Contains(err.Error(), `unknown key "mysql_adr" (line 1)`) {
		t.Fatalf("a misspelt key must be refused, naming it: %v", err)
	}
	if _, err := ParseConfig([]byte("tls:\n  cafile: x\n")); err == nil || !strings.Contains(err.Error(), `"tls.cafile"`) {
		t.Fatalf("an unknown nested key must be refused: %v", err)
	}
	if _, err := ParseConfig([]byte("data: /a\ndata: /b\n")); err == nil || !strings.Contains(err.Error(), "data (line 2) is given twice") {
		t.Fatalf("a key given twice must be refused: %v", err)
	}
	if cfg, err := ParseConfig([]byte("retention_age: 0\n")); err != nil || !cfg.Explicit("retention_age") || cfg.Explicit("data") {
		t.Fatalf("retention_age: 0 must be recorded as set (keep everything): %v", err)
	}
}

func TestValidate(t *testing.T) {
	ok := Config{}
	ok.Defaults()
	if err := ok.Validate(); err != nil {
		t.Fatalf("defaults must validate: %v", err)
	}
	for what, mod := range map[string]func(*Config){
		"mysql_addr":                    func(c *Config) { c.MySQLAddr = AddrList{"nope"} },
		"neither mariadb nor mysql":     func(c *Config) { c.MySQLAddr = AddrList{"oracle=127.0.0.1:1"} },
		"given twice":                   func(c *Config) { c.MySQLAddr = AddrList{"127.0.0.1:1", "mysql=127.0.0.1:1"} },
		"MAJOR.MINOR.PATCH":             func(c *Config) { c.MySQLAddr = AddrList{"mysql=127.0.0.1:1,version=eight"} },
		"allow_ips":                     func(c *Config) { c.AllowIPs = "10.0.0.0/99" },
		"log_format":                    func(c *Config) { c.LogFormat = "xml" },
		"not a loopback address":        func(c *Config) { c.AdminAddr = "0.0.0.0:7070" },
		"--mysql-tls-cert":              func(c *Config) { c.MySQLTLSCert = "c.pem" },
		"--tls-ca/--tls-cert/--tls-key": func(c *Config) { c.TLS.CA = "ca.pem" },
		"join":                          func(c *Config) { c.Join = []string{"host-without-port"} },
		"served_file_size":              func(c *Config) { c.ServedFileSize = 4 << 30 },
		"1 MiB":                         func(c *Config) { c.ServedFileSize = 1000 },
		"record_cache":                  func(c *Config) { c.RecordCache = 1000 },
		"memory_pretouch":               func(c *Config) { c.MemoryPretouch = 65 << 30 },
		"raft_payload_reserve":          func(c *Config) { c.RaftPayloadReserve = 65 << 30 },
		"68 MiB to 64 GiB":              func(c *Config) { c.RaftPayloadReserve = 64 << 20 },
		"master_silence_probe":          func(c *Config) { c.MasterSilenceProbe = time.Millisecond },
	} {
		c := ok
		mod(&c)
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), what) {
			t.Errorf("%s: want an error naming it, got %v", what, err)
		}
	}
}

// Sizes take MySQL's units, each a power of 1024; anything else names the units.
func TestParseSize(t *testing.T) {
	for in, want := range map[string]Size{"0": 0, "1024": 1024, "64M": 64 << 20, "64m": 64 << 20, "256MiB": 256 << 20,
		"1G": 1 << 30, "1 GB": 1 << 30, "3g": 3 << 30, "16KiB": 16 << 10, "2T": 2 << 40, "10B": 10} {
		if got, err := ParseSize(in); err != nil || got != want {
			t.Errorf("ParseSize(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "M", "64Q", "-1", "1.5G", "99999999999999T"} {
		if _, err := ParseSize(bad); err == nil {
			t.Errorf("ParseSize(%q) must fail", bad)
		}
	}
	if got := Size(256 << 20).String(); got != "256 MiB" {
		t.Errorf("String() = %q", got)
	}
}
