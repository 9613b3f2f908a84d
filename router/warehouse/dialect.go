package warehouse

import "context"

// Dialect is what the loader needs of one database: its naming rules, its
// schema as information_schema tells it, idempotent DDL, and transactions
// that load tables. Implementations: router/warehouse/postgres and
// router/warehouse/mysql.
type Dialect interface {
	// Names are the database's identifier rules.
	Names() Names
	// ReadSchema returns the tables and columns of schema s, empty (not
	// nil) when it does not exist.
	ReadSchema(ctx context.Context, s string) (Schema, error)
	// Migrate applies m (creating the schema and table if needed, adding
	// columns, widening types), each step idempotent, serialized with
	// other processes migrating the same table.
	Migrate(ctx context.Context, m Migration) error
	// Begin starts a load transaction.
	Begin(ctx context.Context) (Tx, error)
	// Classify tells what an error of this database means.
	Classify(err error) Class
	// Close releases the connections.
	Close() error
}

// Tx is one load transaction.
type Tx interface {
	// Insert writes t's rows into its table where their key is absent (in
	// users, Upsert: merged into the present row, see TableLoad). On error
	// some rows may be in: the caller rolls back (to a savepoint).
	Insert(ctx context.Context, t *TableLoad) error
	// Savepoint, RollbackTo and Release manage one savepoint, named name.
	Savepoint(ctx context.Context, name string) error
	RollbackTo(ctx context.Context, name string) error
	Release(ctx context.Context, name string) error
	Commit(ctx context.Context) error
	// Rollback ends the transaction if it is still open; after Commit it
	// does nothing.
	Rollback(ctx context.Context) error
}

// InsertAller is a Tx that inserts several tables (each once) faster
// than one Insert each; on error, none is taken to be in.
type InsertAller interface {
	InsertAll(ctx context.Context, loads []*TableLoad) error
}

// Schema is a database schema as loaded: table -> column -> type.
type Schema map[string]map[string]Type

// Column is a column's name and type.
type Column struct {
	Name string
	Type Type
}

// Migration is the DDL one table needs before a load.
type Migration struct {
	Schema, Table string
	// Create: the table is absent; create it with Add as its columns and
	// Key as its primary key (and the schema, if absent).
	Create bool
	Key    []string
	// Add are columns to add (if absent).
	Add []Column
	// Widen are columns whose type becomes Type (int to float).
	Widen []Column
}

// Class is what an error means for the batch.
type Class uint8

const (
	// ClassOutage: the database cannot be reached or cannot work now
	// (connection refused or lost, timeout, too many connections, shutting
	// down): retry later, nothing charged.
	ClassOutage Class = iota
	// ClassRetry: a conflict with a concurrent transaction (serialization
	// failure, deadlock, lock timeout): retry at once.
	ClassRetry
	// ClassSchema: the schema is not what the cache said (a table or
	// column missing, a type changed): read it again and retry.
	ClassSchema
	// ClassRow: the database refuses a row for a reason of its own (a
	// CHECK constraint, a value too long, a value out of range).
	ClassRow
	// ClassPermission: the user may not create or alter or write: the
	// destination pauses until an operator acts.
	ClassPermission
	// ClassOther: anything else; retried.
	ClassOther
)

func (c Class) String() string {
	return [...]string{"outage", "retry", "schema", "row", "permission", "other"}[c]
}
