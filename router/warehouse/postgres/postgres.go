// Package postgres is the warehouse dialect of PostgreSQL (pgx v5): a
// batch's rows are copied (COPY, binary) into a temporary staging table
// per target table, then inserted where their id is absent (INSERT ...
// SELECT ... ON CONFLICT DO NOTHING), or, for users, merged (ON CONFLICT
// DO UPDATE); DDL runs in its own transaction under an advisory lock on
// the schema, so that processes sharing a warehouse do not race.
package postgres

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"net"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sluice-cdi/sluice/router/warehouse"
)

// Config configures the connections.
type Config struct {
	// DSN is a libpq connection string or postgres:// URL. Required.
	DSN string
	// PoolSize bounds the connections. Default 8.
	PoolSize int
}

// Dialect is PostgreSQL. Safe for concurrent use.
type Dialect struct {
	pool *pgxpool.Pool
}

// reserved are PostgreSQL's reserved key words beyond standard SQL's.
var reserved = []string{"analyse", "analyze", "array", "asymmetric", "authorization", "binary", "concurrently",
	"deferrable", "do", "freeze", "ilike", "initially", "isnull", "lateral", "localtime", "localtimestamp",
	"notnull", "offset", "only", "overlaps", "placing", "returning", "session_user", "similar", "some",
	"symmetric", "tablesample", "user", "variadic", "verbose", "window"}

var names = warehouse.Names{MaxLen: 63, Reserved: warehouse.ReservedSet(warehouse.SQLReserved, reserved)}

// New connects (lazily: the first load dials).
func New(ctx context.Context, cfg Config) (*Dialect, error) {
	pc, err := pgxpool.ParseConfig(cfg.DSN)
	if err != nil {
		return nil, fmt.Errorf("postgres: cannot parse the dsn: %w", err)
	}
	if cfg.PoolSize <= 0 {
		cfg.PoolSize = 8
	}
	pc.MaxConns = int32(cfg.PoolSize)
	pc.ConnConfig.RuntimeParams["timezone"] = "UTC"
	pool, err := pgxpool.NewWithConfig(ctx, pc)
	if err != nil {
		return nil, fmt.Errorf("postgres: cannot make the pool: %w", err)
	}
	return &Dialect{pool: pool}, nil
}

// Names are PostgreSQL's: 63 bytes, its reserved words.
func (d *Dialect) Names() warehouse.Names { return names }

// Close closes the pool.
func (d *Dialect) Close() error { d.pool.Close(); return nil }

// ReadSchema reads schema s's columns from information_schema.
func (d *Dialect) ReadSchema(ctx context.Context, s string) (warehouse.Schema, error) {
	rows, err := d.pool.Query(ctx, `SELECT table_name, column_name, data_type FROM information_schema.columns
		WHERE table_schema = $1`, s)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := warehouse.Schema{}
	for rows.Next() {
		var table, col, typ string
		if err := rows.Scan(&table, &col, &typ); err != nil {
			return nil, err
		}
		if out[table] == nil {
			out[table] = map[string]warehouse.Type{}
		}
		out[table][col] = kind(typ)
	}
	return out, rows.Err()
}

// kind maps an information_schema data_type to a Type.
func kind(t string) warehouse.Type {
	switch t {
	case "bigint", "integer", "smallint":
		return warehouse.TypeInt
	case "double precision", "real", "numeric":
		return warehouse.TypeFloat
	case "boolean":
		return warehouse.TypeBool
	case "timestamp with time zone", "timestamp without time zone":
		return warehouse.TypeDatetime
	case "text", "character varying", "character":
		return warehouse.TypeString
	case "json", "jsonb":
		return warehouse.TypeJSON
	}
	return warehouse.TypeUnknown
}

// sqlType is the column type created for t.
func sqlType(t warehouse.Type) string {
	switch t {
	case warehouse.TypeInt:
		return "bigint"
	case warehouse.TypeFloat:
		return "double precision"
	case warehouse.TypeBool:
		return "boolean"
	case warehouse.TypeDatetime:
		return "timestamptz"
	case warehouse.TypeJSON:
		return "jsonb"
	}
	return "text"
}

func ident(parts ...string) string { return pgx.Identifier(parts).Sanitize() }

// Migrate applies m in one transaction holding the schema's advisory lock.
func (d *Dialect) Migrate(ctx context.Context, m warehouse.Migration) error {
	tx, err := d.pool.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	h := fnv.New64a()
	h.Write([]byte("sluice warehouse " + m.Schema))
	stmts := []string{"SET LOCAL lock_timeout = '30s'", fmt.Sprintf("SELECT pg_advisory_xact_lock(%d)", int64(h.Sum64()))}
	target := ident(m.Schema, m.Table)
	if m.Create {
		var cols []string
		for _, c := range m.Add {
			cols = append(cols, ident(c.Name)+" "+sqlType(c.Type))
		}
		var key []string
		for _, k := range m.Key {
			key = append(key, ident(k))
		}
		stmts = append(stmts, "CREATE SCHEMA IF NOT EXISTS "+ident(m.Schema),
			fmt.Sprintf("CREATE TABLE IF NOT EXISTS %s (%s, PRIMARY KEY (%s))", target, strings.Join(cols, ", "), strings.Join(key, ", ")))
	}
	var alter []string
	for _, c := range m.Add {
		alter = append(alter, "ADD COLUMN IF NOT EXISTS "+ident(c.Name)+" "+sqlType(c.Type))
	}
	for _, c := range m.Widen {
		alter = append(alter, fmt.Sprintf("ALTER COLUMN %s TYPE %s", ident(c.Name), sqlType(c.Type)))
	}
	if len(alter) > 0 {
		stmts = append(stmts, "ALTER TABLE "+target+" "+strings.Join(alter, ", "))
	}
	for _, s := range stmts {
		if _, err := tx.Exec(ctx, s); err != nil {
			return fmt.Errorf("%s: %w", s, err)
		}
	}
	return tx.Commit(ctx)
}

// Begin starts a load transaction on a pooled connection.
func (d *Dialect) Begin(ctx context.Context) (warehouse.Tx, error) {
	tx, err := d.pool.Begin(ctx)
	if err != nil {
		return nil, err
	}
	return &loadTx{tx: tx}, nil
}

// loadTx is one load transaction.
type loadTx struct {
	tx pgx.Tx
}

// A staging table is a temporary table shaped like its target (LIKE, so
// the target's types apply, and its CHECK constraints at the insert):
// created once per connection and shape, emptied at every commit (ON
// COMMIT DELETE ROWS), so that a load adds nothing to the catalog. Its name
// carries the target and the columns' types as known (pgx caches the
// table's description by name): a table whose types changed gets another.
func stageName(l *warehouse.TableLoad) string {
	h := fnv.New64a()
	fmt.Fprint(h, l.Schema, ".", l.Table)
	for _, c := range l.Columns {
		fmt.Fprint(h, ",", c.Name, " ", c.Type)
	}
	return fmt.Sprintf("sluice_stage_%016x", h.Sum64())
}

func createStage(stage string, l *warehouse.TableLoad) string {
	return fmt.Sprintf("CREATE TEMP TABLE IF NOT EXISTS %s (LIKE %s INCLUDING DEFAULTS) ON COMMIT DELETE ROWS", stage, ident(l.Schema, l.Table))
}

// insertStaged is the statement that moves a staging table's rows into
// the target where their key is absent (users: merged).
func insertStaged(stage string, l *warehouse.TableLoad) string {
	quoted := make([]string, len(l.Columns))
	for i, c := range l.Columns {
		quoted[i] = ident(c.Name)
	}
	list := strings.Join(quoted, ", ")
	key := make([]string, len(l.Key))
	for i, k := range l.Key {
		key[i] = ident(k)
	}
	q := fmt.Sprintf("INSERT INTO %s AS t (%s) SELECT %s FROM %s ON CONFLICT (%s) ", ident(l.Schema, l.Table), list, list, stage, strings.Join(key, ", "))
	if l.Upsert {
		return q + "DO UPDATE SET " + mergeSet(l)
	}
	return q + "DO NOTHING"
}

func columnNames(l *warehouse.TableLoad) []string {
	cols := make([]string, len(l.Columns))
	for i, c := range l.Columns {
		cols[i] = c.Name
	}
	return cols
}

// Insert copies l's rows into its staging table (emptied first: a
// bisection inserts one table several times in a transaction), then
// inserts them where absent, or merges them (users).
func (t *loadTx) Insert(ctx context.Context, l *warehouse.TableLoad) error {
	stage := stageName(l)
	b := &pgx.Batch{}
	b.Queue(createStage(stage, l))
	b.Queue("TRUNCATE " + stage)
	if err := t.tx.SendBatch(ctx, b).Close(); err != nil {
		return err
	}
	if _, err := t.tx.CopyFrom(ctx, pgx.Identifier{stage}, columnNames(l), pgx.CopyFromRows(l.Rows)); err != nil {
		return err
	}
	_, err := t.tx.Exec(ctx, insertStaged(stage, l))
	return err
}

// InsertAll is Insert of several tables (each once) in fewer round trips:
// the staging tables in one batch, a COPY each, the inserts in one batch.
func (t *loadTx) InsertAll(ctx context.Context, loads []*warehouse.TableLoad) error {
	stages := make([]string, len(loads))
	b := &pgx.Batch{}
	for i, l := range loads {
		stages[i] = stageName(l)
		b.Queue(createStage(stages[i], l))
	}
	if err := t.tx.SendBatch(ctx, b).Close(); err != nil {
		return err
	}
	b = &pgx.Batch{}
	for i, l := range loads {
		if _, err := t.tx.CopyFrom(ctx, pgx.Identifier{stages[i]}, columnNames(l), pgx.CopyFromRows(l.Rows)); err != nil {
			return fmt.Errorf("%s.%s: %w", l.Schema, l.Table, err)
		}
		b.Queue(insertStaged(stages[i], l))
	}
	return t.tx.SendBatch(ctx, b).Close()
}

// mergeSet is the SET of a users merge: a newer row (by received_at)
// replaces the columns it has; an older one only fills empty ones.
func mergeSet(l *warehouse.TableLoad) string {
	var set []string
	for _, c := range l.Columns {
		n := ident(c.Name)
		switch c.Name {
		case "id", "received_at":
			continue
		}
		set = append(set, fmt.Sprintf("%s = CASE WHEN t.received_at IS NULL OR EXCLUDED.received_at >= t.received_at "+
			"THEN COALESCE(EXCLUDED.%s, t.%s) ELSE COALESCE(t.%s, EXCLUDED.%s) END", n, n, n, n, n))
	}
	set = append(set, "received_at = GREATEST(t.received_at, EXCLUDED.received_at)")
	return strings.Join(set, ", ")
}

func (t *loadTx) Savepoint(ctx context.Context, name string) error {
	_, err := t.tx.Exec(ctx, "SAVEPOINT "+ident(name))
	return err
}

func (t *loadTx) RollbackTo(ctx context.Context, name string) error {
	_, err := t.tx.Exec(ctx, "ROLLBACK TO SAVEPOINT "+ident(name))
	return err
}

func (t *loadTx) Release(ctx context.Context, name string) error {
	_, err := t.tx.Exec(ctx, "RELEASE SAVEPOINT "+ident(name))
	return err
}

func (t *loadTx) Commit(ctx context.Context) error { return t.tx.Commit(ctx) }

func (t *loadTx) Rollback(ctx context.Context) error {
	err := t.tx.Rollback(ctx)
	if errors.Is(err, pgx.ErrTxClosed) {
		return nil
	}
	return err
}

// Classify reads PostgreSQL's SQLSTATE classes (Appendix A of its manual)
// and the driver's connection errors.
func (d *Dialect) Classify(err error) warehouse.Class {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		if pe.Code == "57014" && strings.HasPrefix(pe.Message, "COPY from stdin failed") {
			return warehouse.ClassOther // pgx could not encode a value: the schema changed
		}
		return classifyCode(pe.Code)
	}
	var ce *pgconn.ConnectError
	var ne net.Error
	switch {
	case errors.As(err, &ce), errors.As(err, &ne), pgconn.Timeout(err),
		errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, context.DeadlineExceeded),
		errors.Is(err, context.Canceled), errors.Is(err, net.ErrClosed):
		return warehouse.ClassOutage
	}
	if strings.Contains(err.Error(), "conn closed") || strings.Contains(err.Error(), "connection reset") {
		return warehouse.ClassOutage
	}
	return warehouse.ClassOther
}

func classifyCode(code string) warehouse.Class {
	switch code {
	case "40001", "40P01", "55P03", "42P07", "42701":
		return warehouse.ClassRetry
	case "42P01", "42703", "3F000", "42804", "0A000", "42P10":
		return warehouse.ClassSchema
	case "42501", "28000", "28P01":
		return warehouse.ClassPermission
	case "57P01", "57P02", "57P03", "57014":
		return warehouse.ClassOutage
	}
	switch code[:2] {
	case "08", "53", "58":
		return warehouse.ClassOutage
	case "22", "23":
		return warehouse.ClassRow
	}
	return warehouse.ClassOther
}
