#!/usr/bin/env node
// read.js reads row events from a MySQL/MariaDB binlog stream with
// @vlasky/zongji and prints one JSON line per row event, so a Go test can
// compare what zongji sees through Flotilla with what it sees directly
// from the master.
//
// Usage:
//   node read.js --host 127.0.0.1 --port P --user U --password PW \
//     --server-id N --count K \
//     [--filename F --position N | --gtid D-S-N[,...] or UUID:N-M[,...]] \
//     [--ctrl-host H --ctrl-port P --ctrl-user U --ctrl-password PW] \
//     [--include-schema db | db.tbl ...] [--timeout SECONDS] \
//     [--date-strings] [--timezone Z|local|+hh:mm] [--verbose]
//
// Without --filename/--gtid the dump starts at the first binlog the server
// has (zongji's startAtEnd is never used).
//
// Output, one line per row event (WRITE/UPDATE/DELETE_ROWS), on stdout:
//   {"table":"db.tbl","type":"write|update|delete","rows":[...],
//    "file":"mariadb-bin.000001","pos":1234,
//    "resume":{"file":"mariadb-bin.000001","pos":1100},
//    "gtid":"0-1-7","ts":1700000000000}
// rows: for write/delete one object per row ({column: value}); for update
// {"before":{...},"after":{...}} per row. Values are JSON-stable: Buffers as
// lowercase hex (no prefix), Dates as ISO-8601 strings (an invalid date, e.g.
// a zero date, as "invalid-date"), BigInt as decimal strings, non-finite
// floats as strings. zongji itself returns DECIMAL as strings and BIGINTs
// beyond 2^53 as strings.
// file: binlog file zongji tracks (from Rotate events); pos: the row event's
// own header end position (event.nextPosition; MariaDB may write 0 inside a
// transaction, so zongji says; MariaDB 10.11 writes real ones); resume: zongji's safe resume
// point (filename/position it would restart from: it never moves inside a
// transaction, so resuming there replays the whole transaction).
// gtid: the transaction's GTID when the server sends GTID events, else null.
//
// --ctrl-*: zongji opens two connections, a "ctrl" one for queries (server
// flavour, binlog_checksum, INFORMATION_SCHEMA column names, KILL at stop)
// and a binlog one for the dump. By default both go to --host/--port. With
// --ctrl-host (and optionally the other --ctrl-* flags) the ctrl connection
// goes elsewhere (e.g. the real master while the dump streams from a
// Flotilla node); the binlog connection then still runs
// "set @master_binlog_checksum=@@global.binlog_checksum" (or SELECT 1) and,
// on MariaDB, "SET @mariadb_slave_capability=4" against --host. In that mode
// stop() does not send KILL (the thread id belongs to the other server).
//
// Exit status: 0 after K row events; 1 on any error (message on stderr);
// 2 on bad usage; 3 on timeout.
import { parseArgs } from 'node:util';
import mysql from 'mysql2';
import ZongJi from '@vlasky/zongji';

const EXIT_ERROR = 1;
const EXIT_USAGE = 2;
const EXIT_TIMEOUT = 3;

function usage(msg, code = EXIT_USAGE) {
  const out = code === 0 ? process.stdout : process.stderr;
  out.write((msg ? `read.js: ${msg}\n` : '') +
    'usage: node read.js --host H --port P --user U --password PW ' +
    '--server-id N --count K [--filename F --position N | --gtid POS] ' +
    '[--ctrl-host H --ctrl-port P --ctrl-user U --ctrl-password PW] ' +
    '[--include-schema db[.tbl]]... [--timeout S] [--date-strings] ' +
    '[--timezone TZ] [--verbose]\n');
  process.exit(code);
}

function parseCli() {
  let parsed;
  try {
    parsed = parseArgs({
      options: {
        host: { type: 'string', default: '127.0.0.1' },
        port: { type: 'string' },
        user: { type: 'string', default: 'root' },
        password: { type: 'string', default: '' },
        'server-id': { type: 'string' },
        count: { type: 'string' },
        filename: { type: 'string' },
        position: { type: 'string' },
        gtid: { type: 'string' },
        'ctrl-host': { type: 'string' },
        'ctrl-port': { type: 'string' },
        'ctrl-user': { type: 'string' },
        'ctrl-password': { type: 'string' },
        'include-schema': { type: 'string', multiple: true },
        timeout: { type: 'string', default: '60' },
        'connect-timeout': { type: 'string', default: '10' },
        'date-strings': { type: 'boolean', default: false },
        timezone: { type: 'string', default: 'Z' },
        verbose: { type: 'boolean', default: false },
        help: { type: 'boolean', short: 'h', default: false },
      },
      strict: true,
      allowPositionals: false,
    });
  } catch (err) {
    usage(err.message);
  }
  const v = parsed.values;
  if (v.help) usage('', 0);

  const intArg = (name, { min = 0, required = false } = {}) => {
    const raw = v[name];
    if (raw === undefined) {
      if (required) usage(`--${name} is required`);
      return undefined;
    }
    if (!/^\d+$/.test(raw) || Number(raw) < min ||
        !Number.isSafeInteger(Number(raw))) {
      usage(`--${name} must be an integer >= ${min}, got ${JSON.stringify(raw)}`);
    }
    return Number(raw);
  };

  const opts = {
    host: v.host,
    port: intArg('port', { min: 1, required: true }),
    user: v.user,
    password: v.password,
    serverId: intArg('server-id', { min: 1, required: true }),
    count: intArg('count', { min: 1, required: true }),
    filename: v.filename,
    position: intArg('position', { min: 4 }),
    gtid: v.gtid,
    timeoutMs: intArg('timeout', { min: 1 }) * 1000,
    connectTimeoutMs: intArg('connect-timeout', { min: 1 }) * 1000,
    dateStrings: v['date-strings'],
    timezone: v.timezone,
    verbose: v.verbose,
    includeSchema: undefined,
    ctrl: undefined,
  };
  if (opts.position !== undefined && opts.filename === undefined) {
    usage('--position needs --filename');
  }
  if (opts.gtid !== undefined &&
      (opts.filename !== undefined || opts.position !== undefined)) {
    usage('--gtid excludes --filename/--position');
  }
  if (v['include-schema']) {
    // {db: true} or {db: [tbl, ...]}, zongji's includeSchema shape
    const schema = {};
    for (const item of v['include-schema']) {
      const dot = item.indexOf('.');
      if (dot < 0) {
        schema[item] = true;
      } else {
        const db = item.slice(0, dot);
        const tbl = item.slice(dot + 1);
        if (schema[db] !== true) (schema[db] ||= []).push(tbl);
      }
    }
    opts.includeSchema = schema;
  }
  const ctrlGiven = ['ctrl-host', 'ctrl-port', 'ctrl-user', 'ctrl-password']
    .some(k => v[k] !== undefined);
  if (ctrlGiven) {
    opts.ctrl = {
      host: v['ctrl-host'] ?? opts.host,
      port: v['ctrl-port'] !== undefined ?
        intArg('ctrl-port', { min: 1 }) : opts.port,
      user: v['ctrl-user'] ?? opts.user,
      password: v['ctrl-password'] ?? opts.password,
    };
  }
  return opts;
}

// SplitZongJi is ZongJi with its ctrl connection optionally pointed at
// another server. ZongJi#_establishConnection (index.js) always derives the
// binlog connection from the ctrl connection's config, so it is replaced
// here; everything else (flavour detection, checksum, column lookups) runs
// unchanged over this.ctrlConnection.
class SplitZongJi extends ZongJi {
  constructor(binlogDsn, ctrlDsn) {
    super(binlogDsn);
    this._ctrlDsn = ctrlDsn;
  }

  _establishConnection(dsn) {
    if (!this._ctrlDsn) {
      super._establishConnection(dsn);
      return;
    }
    const open = (options) => {
      const conn = mysql.createConnection(options);
      conn.on('error', err => this.emit('error', err));
      return conn;
    };
    this.ctrlConnectionOwner = true;
    this.ctrlConnection = open(this._ctrlDsn);
    this.connection = open(dsn);
  }

  stop() {
    // ZongJi#stop sends "KILL <binlog thread id>" over the ctrl connection;
    // with the ctrl connection on another server that id names an
    // unrelated thread there, so skip the KILL (closing the socket ends
    // the dump on the binlog server).
    if (this._ctrlDsn && this.connection) {
      this.connection.threadId = null;
    }
    super.stop();
  }
}

// jsonValue makes a decoded column value JSON-stable.
function jsonValue(v) {
  if (v === null || v === undefined) return null;
  if (Buffer.isBuffer(v)) return v.toString('hex');
  if (v instanceof Date) {
    return Number.isNaN(v.getTime()) ? 'invalid-date' : v.toISOString();
  }
  switch (typeof v) {
    case 'bigint': return v.toString();
    case 'number': return Number.isFinite(v) ? v : String(v);
    case 'string':
    case 'boolean': return v;
    case 'object': {
      if (Array.isArray(v)) return v.map(jsonValue);
      if (v instanceof Uint8Array) return Buffer.from(v).toString('hex');
      const out = {};
      for (const [k, x] of Object.entries(v)) out[k] = jsonValue(x);
      return out;
    }
    default: return String(v);
  }
}

const ROW_TYPES = {
  WriteRows: 'write',
  UpdateRows: 'update',
  DeleteRows: 'delete',
};

function main() {
  const opts = parseCli();
  const dsn = {
    host: opts.host,
    port: opts.port,
    user: opts.user,
    password: opts.password,
    connectTimeout: opts.connectTimeoutMs,
    dateStrings: opts.dateStrings,
    timezone: opts.timezone,
  };
  const ctrlDsn = opts.ctrl ? {
    ...opts.ctrl,
    connectTimeout: opts.connectTimeoutMs,
  } : undefined;

  const zongji = new SplitZongJi(dsn, ctrlDsn);
  let printed = 0;
  let finishing = false;

  const finish = (code, msg) => {
    if (finishing) return;
    finishing = true;
    clearTimeout(timer);
    if (msg) process.stderr.write(`read.js: ${msg}\n`);
    // Exit once stop() has closed both connections, but never hang on it
    const hardExit = setTimeout(() => process.exit(code), 3000);
    hardExit.unref();
    zongji.once('stopped', () => {
      // stdout is a pipe or file: writes are synchronous on Linux, but
      // wait for the last one anyway before exiting
      process.stdout.write('', () => process.exit(code));
    });
    try {
      zongji.stop();
    } catch (err) {
      process.stderr.write(`read.js: stop: ${err.message}\n`);
      process.exit(code || EXIT_ERROR);
    }
  };

  const describe = (err) => {
    const parts = [];
    if (err.code) parts.push(err.code);
    if (err.errno && typeof err.errno === 'number') parts.push(`errno ${err.errno}`);
    const msg = String(err.message || err);
    const where = err.address && !msg.includes(`${err.address}:${err.port}`) ?
      ` (${err.address}:${err.port})` : '';
    return `${parts.length ? `[${parts.join(' ')}] ` : ''}${msg}${where}`;
  };

  const timer = setTimeout(() => {
    finish(EXIT_TIMEOUT, `timeout: got ${printed} of ${opts.count} row ` +
      `events after ${opts.timeoutMs / 1000}s`);
  }, opts.timeoutMs);

  zongji.on('error', (err) => {
    if (finishing) return;
    finish(EXIT_ERROR, `error: ${describe(err)}`);
  });

  zongji.on('ready', () => {
    if (opts.verbose) {
      process.stderr.write(`read.js: ready: version=${zongji.serverVersion} ` +
        `mariadb=${zongji.isMariaDb} checksum=${zongji.useChecksum} ` +
        `start=${JSON.stringify(zongji.get(['filename', 'position', 'gtidSet']))}\n`);
    }
  });

  zongji.on('binlog', (event) => {
    if (finishing) return;
    const typeName = event.getTypeName();
    if (opts.verbose && !(typeName in ROW_TYPES)) {
      process.stderr.write(`read.js: event ${typeName} next=${event.nextPosition}` +
        (typeName === 'Rotate' ? ` -> ${event.binlogName}:${event.position}` : '') + '\n');
    }
    const type = ROW_TYPES[typeName];
    if (!type) return;
    const table = event.tableMap[event.tableId];
    const line = {
      table: table ? `${table.parentSchema}.${table.tableName}` : null,
      type,
      rows: jsonValue(event.rows || []),
      file: zongji.get('filename') ?? null,
      pos: event.nextPosition,
      resume: {
        file: zongji.get('filename') ?? null,
        pos: zongji.get('position') ?? null,
      },
      gtid: event.gtid ?? null,
      ts: event.timestamp,
    };
    process.stdout.write(JSON.stringify(line) + '\n');
    printed++;
    if (printed >= opts.count) finish(0);
  });

  process.on('uncaughtException', (err) => {
    if (finishing) {
      process.stderr.write(`read.js: during shutdown: ${describe(err)}\n`);
      return;
    }
    finish(EXIT_ERROR, `error: ${describe(err)}`);
  });

  const startOpts = {
    serverId: opts.serverId,
    startAtEnd: false,
    includeEvents: ['tablemap', 'writerows', 'updaterows', 'deleterows', 'rotate'],
  };
  if (opts.verbose) {
    // See everything that reaches the 'binlog' handler
    delete startOpts.includeEvents;
  }
  if (opts.filename !== undefined) {
    startOpts.filename = opts.filename;
    startOpts.position = opts.position ?? 4;
  }
  if (opts.gtid !== undefined) startOpts.gtidSet = opts.gtid;
  if (opts.includeSchema) startOpts.includeSchema = opts.includeSchema;
  zongji.start(startOpts);
}

main();
