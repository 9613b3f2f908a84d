// Package mysql is the warehouse dialect of MySQL and MariaDB
// (go-sql-driver/mysql): a schema is a database; a batch's rows go in
// multi-row INSERT ... ON DUPLICATE KEY UPDATE statements (a no-op update
// of the key for tables, a merge for users), interpolated on the client,
// inside one transaction; DDL runs outside it (MySQL commits DDL
// implicitly) under GET_LOCK on the database's name.
//
// Sessions run in strict mode (STRICT_ALL_TABLES), so that a value too
// long or out of range is refused rather than cut, and in UTC.
package mysql

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	gomysql "github.com/go-sql-driver/mysql"

	"github.com/sluice-cdi/sluice/router/warehouse"
)

// Config configures the connections.
type Config struct {
	// DSN is the driver's data source name, "user:pass@tcp(host:3306)/db"
	// (the database only for the connection; loads name theirs). Required.
	DSN string
	// PoolSize bounds the connections. Default 8.
	PoolSize int
}

// Dialect is MySQL or MariaDB. Safe for concurrent use.
type Dialect struct {
	db *sql.DB
}

// reserved are MySQL's reserved words beyond standard SQL's, the likely
// ones.
var reserved = []string{"accessible", "add", "analyze", "before", "change", "condition", "database", "databases",
	"dec", "declare", "delayed", "div", "dual", "explain", "fulltext", "generated", "groups", "ignore", "index",
	"interval", "key", "keys", "kill", "lead", "lag", "load", "lock", "long", "match", "mod", "modifies",
	"option", "optionally", "outfile", "partition", "range", "rank", "read", "regexp", "release", "rename",
	"repeat", "replace", "require", "return", "revoke", "rlike", "row", "rows", "schema", "schemas",
	"separator", "show", "signal", "spatial", "sql", "ssl", "starting", "status", "stored", "system",
	"terminated", "trigger", "undo", "unlock", "unsigned", "usage", "use", "utc_date", "utc_time",
	"utc_timestamp", "varying", "virtual", "while", "write", "xor", "year_month", "zerofill"}

var names = warehouse.Names{MaxLen: 64, Reserved: warehouse.ReservedSet(warehouse.SQLReserved, reserved)}

// New opens the pool (lazily: the first load dials).
func New(cfg Config) (*Dialect, error) {
	c, err := gomysql.ParseDSN(cfg.DSN)
	if err != nil {
		return nil, fmt.Errorf("mysql: cannot parse the dsn: %w", err)
	}
	c.ParseTime, c.Loc, c.InterpolateParams = true, time.UTC, true
	if c.Params == nil {
		c.Params = map[string]string{}
	}
	c.Params["time_zone"] = "'+00:00'"
	c.Params["sql_mode"] = "'STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION,NO_ZERO_DATE,ERROR_FOR_DIVISION_BY_ZERO'"
	c.Logger = quiet{} // its errors are returned, and classified
	if c.Timeout == 0 {
		c.Timeout = 10 * time.Second
	}
	conn, err := gomysql.NewConnector(c)
	if err != nil {
		return nil, fmt.Errorf("mysql: %w", err)
	}
	if cfg.PoolSize <= 0 {
		cfg.PoolSize = 8
	}
	db := sql.OpenDB(conn)
	db.SetMaxOpenConns(cfg.PoolSize)
	db.SetMaxIdleConns(cfg.PoolSize)
	db.SetConnMaxIdleTime(5 * time.Minute)
	return &Dialect{db: db}, nil
}

type quiet struct{}

func (quiet) Print(...any) {}

// Names are MySQL's: 64 characters, its reserved words.
func (d *Dialect) Names() warehouse.Names { return names }

// Close closes the pool.
func (d *Dialect) Close() error { return d.db.Close() }

// ReadSchema reads database s's columns from information_schema.
func (d *Dialect) ReadSchema(ctx context.Context, s string) (warehouse.Schema, error) {
	rows, err := d.db.QueryContext(ctx, `SELECT TABLE_NAME, COLUMN_NAME, DATA_TYPE, COLUMN_TYPE
		FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = ?`, s)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := warehouse.Schema{}
	for rows.Next() {
		var table, col, typ, full string
		if err := rows.Scan(&table, &col, &typ, &full); err != nil {
			return nil, err
		}
		if out[table] == nil {
			out[table] = map[string]warehouse.Type{}
		}
		out[table][col] = kind(strings.ToLower(typ), strings.ToLower(full))
	}
	return out, rows.Err()
}

// kind maps information_schema's DATA_TYPE (and COLUMN_TYPE, for
// tinyint(1): BOOLEAN) to a Type. MariaDB's JSON is a longtext: text.
func kind(t, full string) warehouse.Type {
	switch t {
	case "tinyint":
		if strings.HasPrefix(full, "tinyint(1)") {
			return warehouse.TypeBool
		}
		return warehouse.TypeInt
	case "bigint", "int", "mediumint", "smallint":
		return warehouse.TypeInt
	case "double", "float", "decimal":
		return warehouse.TypeFloat
	case "datetime", "timestamp":
		return warehouse.TypeDatetime
	case "varchar", "char", "text", "tinytext", "mediumtext", "longtext":
		return warehouse.TypeString
	case "json":
		return warehouse.TypeJSON
	}
	return warehouse.TypeUnknown
}

// sqlType is the column type created for c; key columns are VARCHAR(255)
// (a TEXT cannot be a key).
func sqlType(t warehouse.Type, key bool) string {
	switch t {
	case warehouse.TypeInt:
		return "BIGINT"
	case warehouse.TypeFloat:
		return "DOUBLE"
	case warehouse.TypeBool:
		return "BOOLEAN"
	case warehouse.TypeDatetime:
		return "DATETIME(6)"
	case warehouse.TypeJSON:
		return "JSON"
	}
	if key {
		return "VARCHAR(255)"
	}
	return "TEXT"
}

func ident(s string) string { return "`" + strings.ReplaceAll(s, "`", "``") + "`" }

func qualified(schema, table string) string { return ident(schema) + "." + ident(table) }

// Migrate applies m on one connection holding GET_LOCK on the database.
func (d *Dialect) Migrate(ctx context.Context, m warehouse.Migration) (err error) {
	conn, err := d.db.Conn(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	lock := "sluice warehouse " + m.Schema
	var got sql.NullInt64
	if err := conn.QueryRowContext(ctx, "SELECT GET_LOCK(?, 30)", lock).Scan(&got); err != nil {
		return err
	}
	if got.Int64 != 1 {
		return &gomysql.MySQLError{Number: 1205, Message: "GET_LOCK timed out for the schema's migration lock"}
	}
	defer conn.ExecContext(context.WithoutCancel(ctx), "SELECT RELEASE_LOCK(?)", lock)
	var stmts []string
	target := qualified(m.Schema, m.Table)
	isKey := func(c string) bool {
		for _, k := range m.Key {
			if k == c {
				return true
			}
		}
		return false
	}
	if m.Create {
		var cols, key []string
		for _, c := range m.Add {
			cols = append(cols, ident(c.Name)+" "+sqlType(c.Type, isKey(c.Name)))
		}
		for _, k := range m.Key {
			key = append(key, ident(k))
		}
		stmts = append(stmts, "CREATE DATABASE IF NOT EXISTS "+ident(m.Schema)+" CHARACTER SET utf8mb4",
			fmt.Sprintf("CREATE TABLE IF NOT EXISTS %s (%s, PRIMARY KEY (%s)) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 ROW_FORMAT=DYNAMIC",
				target, strings.Join(cols, ", "), strings.Join(key, ", ")))
	} else {
		var alter []string
		for _, c := range m.Add {
			alter = append(alter, "ADD COLUMN "+ident(c.Name)+" "+sqlType(c.Type, false))
		}
		for _, c := range m.Widen {
			alter = append(alter, "MODIFY COLUMN "+ident(c.Name)+" "+sqlType(c.Type, false))
		}
		if len(alter) > 0 {
			stmts = append(stmts, "ALTER TABLE "+target+" "+strings.Join(alter, ", "))
		}
	}
	for _, s := range stmts {
		if _, err := conn.ExecContext(ctx, s); err != nil {
			return fmt.Errorf("%s: %w", s, err)
		}
	}
	return nil
}

// Begin starts a load transaction.
func (d *Dialect) Begin(ctx context.Context) (warehouse.Tx, error) {
	tx, err := d.db.BeginTx(ctx, nil)
	if err != nil {
		return nil, err
	}
	return &loadTx{tx: tx}, nil
}

type loadTx struct{ tx *sql.Tx }

// Statement bounds: rows and bytes of one INSERT.
const (
	rowsPerStatementMax  = 1000
	bytesPerStatementMax = 4 << 20
)

// Insert writes l's rows in multi-row INSERTs (several when large): on
// error some may be in, and the caller rolls back (to a savepoint).
func (t *loadTx) Insert(ctx context.Context, l *warehouse.TableLoad) error {
	cols := make([]string, len(l.Columns))
	for i, c := range l.Columns {
		cols[i] = ident(c.Name)
	}
	head := fmt.Sprintf("INSERT INTO %s (%s) VALUES ", qualified(l.Schema, l.Table), strings.Join(cols, ", "))
	tail := " ON DUPLICATE KEY UPDATE " + ident(l.Key[0]) + " = " + ident(l.Key[0])
	if l.Upsert {
		tail = " ON DUPLICATE KEY UPDATE " + mergeSet(l)
	}
	one := "(" + strings.TrimSuffix(strings.Repeat("?, ", len(cols)), ", ") + ")"
	var q strings.Builder
	var args []any
	size := 0
	flush := func() error {
		if len(args) == 0 {
			return nil
		}
		q.WriteString(tail)
		_, err := t.tx.ExecContext(ctx, q.String(), args...)
		q.Reset()
		args, size = args[:0], 0
		return err
	}
	n := 0
	for _, r := range l.Rows {
		if len(args) == 0 {
			q.WriteString(head)
			n = 0
		} else {
			q.WriteString(", ")
		}
		q.WriteString(one)
		args = append(args, r...)
		n++
		for _, v := range r {
			if s, ok := v.(string); ok {
				size += len(s) * 2
			} else {
				size += 8
			}
		}
		if n >= rowsPerStatementMax || size >= bytesPerStatementMax {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	return flush()
}

// mergeSet is the users merge (see warehouse.TableLoad.Upsert): MySQL
// assigns left to right, so received_at goes last.
func mergeSet(l *warehouse.TableLoad) string {
	var set []string
	for _, c := range l.Columns {
		n := ident(c.Name)
		if c.Name == "id" || c.Name == "received_at" {
			continue
		}
		set = append(set, fmt.Sprintf("%s = IF(received_at IS NULL OR VALUES(received_at) >= received_at, "+
			"COALESCE(VALUES(%s), %s), COALESCE(%s, VALUES(%s)))", n, n, n, n, n))
	}
	set = append(set, "received_at = GREATEST(COALESCE(received_at, VALUES(received_at)), VALUES(received_at))")
	return strings.Join(set, ", ")
}

func (t *loadTx) Savepoint(ctx context.Context, name string) error {
	_, err := t.tx.ExecContext(ctx, "SAVEPOINT "+ident(name))
	return err
}

func (t *loadTx) RollbackTo(ctx context.Context, name string) error {
	_, err := t.tx.ExecContext(ctx, "ROLLBACK TO SAVEPOINT "+ident(name))
	return err
}

func (t *loadTx) Release(ctx context.Context, name string) error {
	_, err := t.tx.ExecContext(ctx, "RELEASE SAVEPOINT "+ident(name))
	return err
}

func (t *loadTx) Commit(context.Context) error { return t.tx.Commit() }

func (t *loadTx) Rollback(context.Context) error {
	if err := t.tx.Rollback(); err != nil && !errors.Is(err, sql.ErrTxDone) {
		return err
	}
	return nil
}

// Classify reads MySQL's and MariaDB's error numbers and the driver's
// connection errors.
func (d *Dialect) Classify(err error) warehouse.Class {
	var me *gomysql.MySQLError
	if errors.As(err, &me) {
		return classifyNumber(me.Number)
	}
	var ne net.Error
	switch {
	case errors.As(err, &ne), errors.Is(err, gomysql.ErrInvalidConn), errors.Is(err, driver.ErrBadConn),
		errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, context.DeadlineExceeded),
		errors.Is(err, context.Canceled), errors.Is(err, net.ErrClosed), errors.Is(err, sql.ErrConnDone):
		return warehouse.ClassOutage
	}
	return warehouse.ClassOther
}

func classifyNumber(n uint16) warehouse.Class {
	switch n {
	case 1040, 1053, 1077, 1078, 1079, 1080, 1152, 1153, 1154, 1155, 1156, 1157, 1158, 1159, 1160, 1161,
		1184, 1203, 1317, 1927, 1969, 3024, 1290, 1836, 1021, 1030:
		// too many connections, shutdown, aborted or killed connections,
		// packet errors, interrupted, read-only, disk full
		return warehouse.ClassOutage
	case 1205, 1213, 1060, 1050, 1412, 1684:
		// lock wait timeout, deadlock, a concurrent migration, table
		// definition changed
		return warehouse.ClassRetry
	case 1146, 1054, 1049:
		return warehouse.ClassSchema
	case 1044, 1045, 1142, 1143, 1227, 1370, 1698:
		return warehouse.ClassPermission
	case 3819, 4025, 1406, 1366, 1264, 1048, 1292, 1265, 1062, 1452, 1451, 3140, 4038, 1367, 1411, 1690:
		// check constraint, data too long, incorrect or out of range
		// value, not null, duplicate on another unique key, foreign key,
		// invalid JSON
		return warehouse.ClassRow
	}
	return warehouse.ClassOther
}
