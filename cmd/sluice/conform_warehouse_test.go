package main

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	_ "github.com/go-sql-driver/mysql" // the admin connection of the mysql target
	"github.com/jackc/pgx/v5"
)

// The conformance suite's warehouses: PostgreSQL and MariaDB on this
// machine, one throwaway schema (database) per run. The events land in the
// event's table (conformance_checked), which keeps no order; the poison is
// an operator's CHECK constraint on it, added after the deliver phase.
//
// warehouseTarget is either warehouse; the differences are its SQL.
type warehouseTarget struct {
	typ, addr string
	dsn       func(addr string) string
	q         func(schema, table string) string
	drop      func(schema string) string
	db        func(t *testing.T) queryer
}

// queryer is what the target needs of an admin connection.
type queryer interface {
	exec(sql string) error
	ids(sql string) ([]conformEvent, error)
	close()
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

func newPostgresTarget(t *testing.T) conformTarget {
	addr := envOr("SLUICE_TEST_PG_ADDR", "127.0.0.1:5432")
	return &warehouseTarget{typ: "postgres", addr: addr,
		dsn: func(a string) string { return fmt.Sprintf("postgres://postgres@%s/test?sslmode=disable", a) },
		q:   func(s, tb string) string { return pgx.Identifier{s, tb}.Sanitize() },
		drop: func(s string) string {
			return "DROP SCHEMA IF EXISTS " + pgx.Identifier{s}.Sanitize() + " CASCADE"
		},
		db: func(t *testing.T) queryer {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			c, err := pgx.Connect(ctx, fmt.Sprintf("postgres://postgres@%s/test?sslmode=disable", addr))
			if err != nil {
				t.Skipf("no PostgreSQL at %s: %v", addr, err)
			}
			return pgQueryer{c}
		}}
}

func newMySQLTarget(t *testing.T) conformTarget {
	addr := envOr("SLUICE_TEST_MYSQL_ADDR", "127.0.0.1:3306")
	return &warehouseTarget{typ: "mysql", addr: addr,
		dsn:  func(a string) string { return fmt.Sprintf("root@tcp(%s)/", a) },
		q:    func(s, tb string) string { return "`" + s + "`.`" + tb + "`" },
		drop: func(s string) string { return "DROP DATABASE IF EXISTS `" + s + "`" },
		db: func(t *testing.T) queryer {
			db, err := sql.Open("mysql", fmt.Sprintf("root@tcp(%s)/", addr))
			if err == nil {
				err = db.Ping()
			}
			if err != nil {
				t.Skipf("no MariaDB at %s: %v", addr, err)
			}
			return sqlQueryer{db}
		}}
}

func (w *warehouseTarget) upstream(*testing.T) string { return w.addr }

func (w *warehouseTarget) config(t *testing.T, id, addr string) string {
	db := w.db(t)
	t.Cleanup(func() {
		if err := db.exec(w.drop(id)); err != nil {
			t.Errorf("cannot drop %s: %v", id, err)
		}
		db.close()
	})
	return fmt.Sprintf("type: %s\nbatch_size: 100\nconfig:\n  dsn: '%s'\n  schema: %s\n  pool_size: 4\n", w.typ, w.dsn(addr), id)
}

func (w *warehouseTarget) received(t *testing.T, id string) ([]conformEvent, bool) {
	db := w.db(t)
	defer db.close()
	evs, err := db.ids("SELECT id, user_id FROM " + w.q(id, "conformance_checked"))
	if err != nil && !strings.Contains(err.Error(), "exist") { // before the first load
		t.Fatalf("%s: %v", w.typ, err)
	}
	return evs, false
}

// poison: an operator's constraint refuses a note of "poison".
func (w *warehouseTarget) poison(t *testing.T, id string) (conformPoison, string) {
	db := w.db(t)
	defer db.close()
	if err := db.exec("ALTER TABLE " + w.q(id, "conformance_checked") + " ADD CONSTRAINT conform_poison CHECK (note <> 'poison')"); err != nil {
		t.Fatalf("%s: cannot add the constraint: %v", w.typ, err)
	}
	return conformPoison{edit: func(ev map[string]any) { ev["properties"].(map[string]any)["note"] = "poison" }, says: "conform_poison"}, ""
}

type pgQueryer struct{ c *pgx.Conn }

func (p pgQueryer) exec(q string) error {
	_, err := p.c.Exec(context.Background(), q)
	return err
}

func (p pgQueryer) ids(q string) ([]conformEvent, error) {
	rows, err := p.c.Query(context.Background(), q)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []conformEvent
	for rows.Next() {
		var e conformEvent
		if err := rows.Scan(&e.ID, &e.User); err != nil {
			return nil, err
		}
		out = append(out, e)
	}
	return out, rows.Err()
}

func (p pgQueryer) close() { p.c.Close(context.Background()) }

type sqlQueryer struct{ db *sql.DB }

func (s sqlQueryer) exec(q string) error {
	_, err := s.db.Exec(q)
	return err
}

func (s sqlQueryer) ids(q string) ([]conformEvent, error) {
	rows, err := s.db.Query(q)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []conformEvent
	for rows.Next() {
		var e conformEvent
		if err := rows.Scan(&e.ID, &e.User); err != nil {
			return nil, err
		}
		out = append(out, e)
	}
	return out, rows.Err()
}

func (s sqlQueryer) close() { s.db.Close() }
