package mysqlfront

import (
	"context"
	"errors"
	"fmt"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/go-mysql-org/go-mysql/mysql"

	"github.com/flotilla-relay/flotilla/placement"
	"github.com/flotilla-relay/flotilla/statemachine"
)

// query answers the statements replicas, CDC tools and mariadb-binlog send. Flotilla
// is not a database: anything else gets error 1235 naming the statement.
func (ss *session) query(q string) (*mysql.Result, error) {
	stmt := normalizeQuery(q)
	switch {
	case hasPrefixFold(stmt, "SET "):
		as, err := parseSet(stmt[len("SET "):], ss.sysvar)
		if err != nil {
			// SET NAMES, SET SESSION x=..., SET autocommit=1 and friends carry no meaning here.
			if isHarmlessSet(stmt) {
				return okResult(), nil
			}
			return nil, mysql.NewError(mysql.ER_PARSE_ERROR, fmt.Sprintf("Flotilla cannot read this SET statement: %v", err))
		}
		if err := ss.checkVars(as); err != nil {
			return nil, err
		}
		for _, a := range as {
			if a.Null {
				ss.vars[a.Name] = nil
			} else {
				v := a.Value
				ss.vars[a.Name] = &v
			}
		}
		return okResult(), nil
	case hasPrefixFold(stmt, "SELECT "):
		return ss.selectExprs(stmt[len("SELECT "):])
	case isAnyFold(stmt, "SHOW BINARY LOGS", "SHOW MASTER LOGS"):
		return ss.showBinaryLogs()
	case isAnyFold(stmt, "SHOW MASTER STATUS", "SHOW BINLOG STATUS", "SHOW BINARY LOG STATUS"):
		return ss.showMasterStatus()
	case isAnyFold(stmt, "SHOW SLAVE HOSTS", "SHOW REPLICA HOSTS", "SHOW REPLICAS"):
		u, err := ss.upstream()
		if err != nil {
			return nil, err
		}
		return resultset([]string{"Server_id", "Host", "Port", "Master_id"}, ss.s.slaveHosts(u.GroupID, u.ServerID))
	case hasPrefixFold(stmt, "SHOW VARIABLES") || hasPrefixFold(stmt, "SHOW GLOBAL VARIABLES") || hasPrefixFold(stmt, "SHOW SESSION VARIABLES"):
		return ss.showVariables(stmt)
	case isAnyFold(stmt, "BEGIN", "COMMIT", "ROLLBACK") || hasPrefixFold(stmt, "USE "):
		return okResult(), nil
	}
	return nil, mysql.NewError(mysql.ER_NOT_SUPPORTED_YET, fmt.Sprintf("Flotilla is a binlog relay and does not run this statement: %.200s", strings.ToValidUTF8(stmt, "?")))
}

// isAnyFold reports whether s is one of the ASCII keywords, ignoring case.
func isAnyFold(s string, keywords ...string) bool {
	for _, k := range keywords {
		if equalFoldASCII(s, k) {
			return true
		}
	}
	return false
}

func isHarmlessSet(stmt string) bool {
	for _, p := range []string{"SET NAMES", "SET CHARACTER SET", "SET CHARSET", "SET SESSION", "SET AUTOCOMMIT", "SET SQL_MODE", "SET TIME_ZONE", "SET @@", "SET GLOBAL", "SET LOCAL", "SET TRANSACTION", "SET SQL_", "SET NET_", "SET WAIT_TIMEOUT", "SET INTERACTIVE_TIMEOUT"} {
		if hasPrefixFold(stmt, p) {
			return true
		}
	}
	return false
}

func okResult() *mysql.Result { return &mysql.Result{} }

func resultset(names []string, rows [][]any) (*mysql.Result, error) {
	// go-mysql encodes an empty string as NULL; an empty []byte stays empty, as
	// MySQL sends Binlog_Do_DB and the like.
	for _, row := range rows {
		for i, v := range row {
			if s, ok := v.(string); ok && s == "" {
				row[i] = []byte{}
			}
		}
	}
	rs, err := mysql.BuildSimpleTextResultset(names, rows)
	if err != nil {
		return nil, mysql.NewError(mysql.ER_UNKNOWN_ERROR, fmt.Sprintf("build result: %v", err))
	}
	return &mysql.Result{Resultset: rs}, nil
}

// sessionUpstream is the upstream variables describe; before the user is tied to one
// upstream (shared users), the first one stands in.
func (ss *session) sessionUpstream() *placement.Upstream {
	if len(ss.ups) > 0 {
		return ss.ups[0]
	}
	return &placement.Upstream{}
}

// files asks the session's source what the served group holds; sysvar has no
// context of its own, so the lookup is bounded here.
func (ss *session) files() (FileList, error) {
	u, err := ss.upstream()
	if err != nil {
		return FileList{}, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	src, err := ss.s.router.Source(ctx, u)
	if err != nil {
		return FileList{}, errDump("%v", err)
	}
	return src.Files(ctx)
}

// sysvar answers @@variables as the upstream master would, for the ones replicas and
// tools read; Flotilla's own values where the master's would mislead. An unknown
// variable is MySQL error 1193; the GTID state fails with the reason when no node
// can tell it right now, never answering an empty position a CDC tool could start
// from.
func (ss *session) sysvar(name string) (string, error) {
	u := ss.sessionUpstream()
	if v, ok, err := flavorOf(u).variable(u, name); ok {
		return v, err
	}
	switch name {
	case "gtid_binlog_pos", "gtid_current_pos", "gtid_binlog_state", "gtid_executed", "gtid_purged":
		fl, err := ss.files()
		if err != nil {
			return "", err
		}
		if name == "gtid_purged" {
			return fl.Purged, nil
		}
		return fl.GTIDs, nil
	}
	if v, ok := ss.staticVar(name); ok {
		return v, nil
	}
	return "", errUnknownVar(name)
}

// errUnknownVar is MySQL's answer for a variable it does not have (1193), which
// replicas treat as "this master does not have the feature".
func errUnknownVar(name string) error {
	return mysql.NewError(mysql.ER_UNKNOWN_SYSTEM_VARIABLE, fmt.Sprintf("Unknown system variable '%s'", name))
}

// staticVar answers the variables that need no lookup.
func (ss *session) staticVar(name string) (string, bool) {
	u := ss.sessionUpstream()
	switch name {
	case "server_id":
		return strconv.FormatUint(uint64(u.ServerID), 10), true
	case "gtid_domain_id":
		return strconv.FormatUint(uint64(u.DomainID), 10), true
	case "binlog_checksum":
		if u.BinlogChecksum == "" {
			return "CRC32", true
		}
		return u.BinlogChecksum, true
	case "version":
		return ss.face.version(u), true
	case "version_comment":
		return ss.face.comment(), true
	case "log_bin":
		return "1", true
	case "binlog_format":
		return "ROW", true
	case "server_uuid":
		return u.ServerUUID, true
	case "gtid_strict_mode":
		return "1", true
	case "max_allowed_packet", "slave_max_allowed_packet":
		return "1073741824", true
	case "hostname":
		return "flotilla", true
	case "lower_case_table_names", "rpl_semi_sync_slave_enabled":
		return "0", true
	case "rpl_semi_sync_master_enabled":
		// Replicas may be semi-sync replicas (semisync.go): they get ACK requests.
		return "ON", true
	case "time_zone":
		return "SYSTEM", true
	case "system_time_zone":
		return "UTC", true
	case "character_set_server", "character_set_client", "character_set_connection", "character_set_results", "character_set_database":
		return "utf8mb4", true
	case "collation_server", "collation_connection", "collation_database":
		return "utf8mb4_general_ci", true
	case "auto_increment_increment", "auto_increment_offset":
		return "1", true
	case "sql_mode":
		return "", true
	case "tx_isolation", "transaction_isolation":
		return "REPEATABLE-READ", true
	case "log_bin_basename":
		return statemachine.BaseName, true
	case "binlog_row_image":
		return "FULL", true
	}
	return "", false
}

// showVarsWhere is the WHERE clause of SHOW VARIABLES that tools send (go-mysql's
// semi-sync probe): a list of names or one name.
var showVarsWhere = regexp.MustCompile(`(?i)\sWHERE\s+Variable_name\s*(?:IN\s*\(([^)]*)\)|=\s*('[^']*'))\s*;?\s*$`)

// knownVars lists the variables SHOW VARIABLES can report.
var knownVars = []string{
	"auto_increment_increment", "auto_increment_offset", "binlog_checksum", "binlog_format", "binlog_row_image",
	"binlog_transaction_compression", "enforce_gtid_consistency", "gtid_executed", "gtid_mode", "gtid_purged",
	"character_set_server", "collation_server", "gtid_binlog_pos", "gtid_binlog_state", "gtid_current_pos",
	"gtid_domain_id", "gtid_strict_mode", "hostname", "log_bin", "log_bin_basename", "lower_case_table_names",
	"max_allowed_packet", "rpl_semi_sync_master_enabled", "rpl_semi_sync_source_enabled", "server_id", "server_uuid", "sql_mode",
	"system_time_zone", "time_zone", "version", "version_comment",
}

func (ss *session) showVariables(stmt string) (*mysql.Result, error) {
	pattern := "%"
	if i := indexFold(stmt, " LIKE "); i >= 0 {
		p, _, _, err := parseValue(strings.TrimSpace(stmt[i+6:]), ss.sysvar)
		if err != nil {
			return nil, mysql.NewError(mysql.ER_PARSE_ERROR, fmt.Sprintf("SHOW VARIABLES LIKE: %v", err))
		}
		pattern = p
	}
	glob := strings.NewReplacer("%", "*", "_", "?").Replace(strings.ToLower(pattern))
	var only []string // SHOW VARIABLES WHERE Variable_name IN (...) or = '...'
	if m := showVarsWhere.FindStringSubmatch(stmt); m != nil {
		list := m[1] + m[2]
		for _, n := range strings.Split(list, ",") {
			only = append(only, strings.ToLower(strings.Trim(strings.TrimSpace(n), "'\"`")))
		}
	} else if indexFold(stmt, " WHERE ") >= 0 {
		return nil, mysql.NewError(mysql.ER_PARSE_ERROR, "Flotilla reads SHOW VARIABLES WHERE Variable_name IN (...) or = '...' only")
	}
	var rows [][]any
	for _, name := range knownVars {
		if ok, _ := path.Match(glob, name); ok && (only == nil || slices.Contains(only, name)) {
			v, err := ss.sysvar(name)
			var me *mysql.MyError
			if errors.As(err, &me) && me.Code == mysql.ER_UNKNOWN_SYSTEM_VARIABLE {
				continue // the upstream's flavor has no such variable
			}
			if err != nil {
				return nil, err
			}
			rows = append(rows, []any{name, v})
		}
	}
	return resultset([]string{"Variable_name", "Value"}, rows)
}

// selectExprs evaluates a SELECT of variables and simple functions.
func (ss *session) selectExprs(list string) (*mysql.Result, error) {
	list = strings.TrimSpace(list)
	if hasSuffixFold(list, " LIMIT 1") {
		list = strings.TrimSpace(list[:len(list)-len(" LIMIT 1")])
	}
	exprs := splitTopLevel(list)
	names := make([]string, 0, len(exprs))
	row := make([]any, 0, len(exprs))
	for _, e := range exprs {
		expr, alias := e, e
		if i := indexFold(e, " AS "); i >= 0 {
			expr, alias = strings.TrimSpace(e[:i]), strings.Trim(strings.TrimSpace(e[i+4:]), "`'\"")
		}
		v, err := ss.eval(expr)
		if err != nil {
			return nil, err
		}
		names = append(names, alias)
		row = append(row, v)
	}
	return resultset(names, [][]any{row})
}

func (ss *session) eval(expr string) (any, error) {
	fn := strings.ReplaceAll(expr, " ", "")
	switch {
	case strings.HasPrefix(expr, "@@"):
		name := strings.ToLower(expr[2:])
		name = strings.TrimPrefix(strings.TrimPrefix(name, "global."), "session.")
		return ss.sysvar(name)
	case strings.HasPrefix(expr, "@"):
		v := ss.vars[strings.ToLower(strings.Trim(expr[1:], "`"))]
		if v == nil {
			return nil, nil
		}
		return *v, nil
	case isAnyFold(fn, "UNIX_TIMESTAMP()"):
		return time.Now().Unix(), nil
	case isAnyFold(fn, "NOW()", "CURRENT_TIMESTAMP()", "CURRENT_TIMESTAMP"):
		return time.Now().Format("2006-01-02 15:04:05"), nil
	case isAnyFold(fn, "VERSION()"):
		return ss.sysvar("version")
	case isAnyFold(fn, "DATABASE()", "SCHEMA()"):
		return nil, nil
	case isAnyFold(fn, "USER()", "CURRENT_USER()", "CURRENT_USER"):
		return ss.user + "@%", nil
	case isAnyFold(fn, "CONNECTION_ID()"):
		return ss.id, nil
	}
	if n, err := strconv.ParseInt(expr, 10, 64); err == nil {
		return n, nil
	}
	if len(expr) >= 2 && (expr[0] == '\'' || expr[0] == '"') {
		v, rest, _, err := parseValue(expr, ss.sysvar)
		if err == nil && strings.TrimSpace(rest) == "" {
			return v, nil
		}
	}
	return nil, mysql.NewError(mysql.ER_NOT_SUPPORTED_YET, fmt.Sprintf("Flotilla is a binlog relay and cannot evaluate %.100s", strings.ToValidUTF8(expr, "?")))
}

// splitTopLevel splits on commas outside parentheses and quotes.
func splitTopLevel(s string) []string {
	var out []string
	depth, start := 0, 0
	var quote byte
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case quote != 0:
			if c == quote {
				quote = 0
			}
		case c == '\'' || c == '"' || c == '`':
			quote = c
		case c == '(':
			depth++
		case c == ')':
			depth--
		case c == ',' && depth == 0:
			out = append(out, strings.TrimSpace(s[start:i]))
			start = i + 1
		}
	}
	return append(out, strings.TrimSpace(s[start:]))
}

func (ss *session) showBinaryLogs() (*mysql.Result, error) {
	fl, err := ss.files()
	if err != nil {
		return nil, err
	}
	var rows [][]any
	for _, f := range fl.Files {
		rows = append(rows, []any{f.Name, f.Size})
	}
	return resultset([]string{"Log_name", "File_size"}, rows)
}

func (ss *session) showMasterStatus() (*mysql.Result, error) {
	fl, err := ss.files()
	if err != nil {
		return nil, err
	}
	cols := []string{"File", "Position", "Binlog_Do_DB", "Binlog_Ignore_DB"}
	row := []any{statemachine.FileName(fl.File), fl.Size, "", ""}
	if flavorOf(ss.sessionUpstream()).statusGTIDs() {
		cols, row = append(cols, "Executed_Gtid_Set"), append(row, fl.GTIDs)
	}
	if fl.File == 0 {
		return resultset(cols, nil)
	}
	return resultset(cols, [][]any{row})
}

// Per-session bounds on user variables: a replica sets a handful of short ones; a
// logged-in client must not grow a session without bound by setting more.
const (
	maxUserVars      = 64
	maxUserVarName   = 64
	maxUserVarsBytes = 256 << 10
)

// checkVars refuses a SET that would take the session's user variables past the
// bounds; nothing of it is applied then.
func (ss *session) checkVars(as []assignment) error {
	next := make(map[string]int, len(ss.vars)+len(as))
	for name, v := range ss.vars {
		if v != nil {
			next[name] = len(*v)
		} else {
			next[name] = 0
		}
	}
	for _, a := range as {
		if len(a.Name) > maxUserVarName {
			return mysql.NewError(mysql.ER_TOO_LONG_IDENT, fmt.Sprintf("User variable name '%s' is too long (at most %d characters)", clip(a.Name), maxUserVarName))
		}
		next[a.Name] = len(a.Value)
	}
	total := 0
	for name, n := range next {
		total += len(name) + n
	}
	if len(next) > maxUserVars || total > maxUserVarsBytes {
		return mysql.NewError(mysql.ER_WRONG_VALUE_FOR_VAR, fmt.Sprintf("Flotilla keeps at most %d user variables of %d KiB in all per session", maxUserVars, maxUserVarsBytes>>10))
	}
	return nil
}
