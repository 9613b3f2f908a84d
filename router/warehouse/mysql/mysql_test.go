package mysql

import (
	"context"
	"database/sql"
	"fmt"
	"math/rand/v2"
	"os"
	"strings"
	"testing"

	"github.com/sluice-cdi/sluice/router/warehouse"
	"github.com/sluice-cdi/sluice/router/warehouse/warehousetest"
)

// addr is the test server: SLUICE_TEST_MYSQL_ADDR, default 127.0.0.1:3306
// (root, no password).
func addr() string {
	if a := os.Getenv("SLUICE_TEST_MYSQL_ADDR"); a != "" {
		return a
	}
	return "127.0.0.1:3306"
}

func dsn(addr, user string) string { return fmt.Sprintf("%s@tcp(%s)/", user, addr) }

func admin(t testing.TB) *sql.DB {
	d, err := New(Config{DSN: dsn(addr(), "root"), PoolSize: 2})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d.db
}

func harness() warehousetest.Harness {
	return warehousetest.Harness{
		Addr: addr(),
		Open: func(t testing.TB, a string) warehouse.Dialect {
			d, err := New(Config{DSN: dsn(a, "root"), PoolSize: 8})
			if err != nil {
				t.Fatal(err)
			}
			return d
		},
		OpenRestricted: func(t testing.TB) warehouse.Dialect {
			user := fmt.Sprintf("sluice_ro_%08x", rand.Uint32())
			db := admin(t)
			exec(t, db, fmt.Sprintf("CREATE USER '%s'@'%%'", user))
			t.Cleanup(func() { exec(t, admin(t), fmt.Sprintf("DROP USER '%s'@'%%'", user)) })
			d, err := New(Config{DSN: dsn(addr(), user)})
			if err != nil {
				t.Fatal(err)
			}
			return d
		},
		Exec: func(t testing.TB, q string) { exec(t, admin(t), q) },
		Query: func(t testing.TB, q string) [][]string {
			rows, err := admin(t).Query(q)
			if err != nil {
				t.Fatalf("%s: %v", q, err)
			}
			defer rows.Close()
			cols, _ := rows.Columns()
			var out [][]string
			for rows.Next() {
				raw := make([]sql.RawBytes, len(cols))
				ptrs := make([]any, len(cols))
				for i := range raw {
					ptrs[i] = &raw[i]
				}
				if err := rows.Scan(ptrs...); err != nil {
					t.Fatal(err)
				}
				var r []string
				for _, b := range raw {
					if b == nil {
						r = append(r, "NULL")
					} else {
						r = append(r, string(b))
					}
				}
				out = append(out, r)
			}
			if err := rows.Err(); err != nil {
				t.Fatalf("%s: %v", q, err)
			}
			return out
		},
		Drop:  func(t testing.TB, schema string) { exec(t, admin(t), "DROP DATABASE IF EXISTS "+ident(schema)) },
		Table: qualified,
		CheckMaxLen: func(schema, table, col string, n int) string {
			return fmt.Sprintf("ALTER TABLE %s ADD CONSTRAINT %s CHECK (CHAR_LENGTH(%s) <= %d)", qualified(schema, table), ident(col+"_len"), ident(col), n)
		},
		AlterToText: func(schema, table, col string) string {
			return fmt.Sprintf("ALTER TABLE %s MODIFY COLUMN %s TEXT", qualified(schema, table), ident(col))
		},
	}
}

func exec(t testing.TB, db *sql.DB, q string) {
	if _, err := db.ExecContext(context.Background(), q); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
}

func TestMySQL(t *testing.T) { warehousetest.Run(t, harness()) }

// BenchmarkLoad: events/s through the warehouse beside multi-row INSERTs of
// the same rows into the same tables, in one transaction per batch, doing
// nothing else (the ceiling).
func BenchmarkLoad(b *testing.B) {
	d, err := New(Config{DSN: dsn(addr(), "root"), PoolSize: warehousetest.BenchSenders})
	if err != nil {
		b.Fatal(err)
	}
	defer d.Close()
	warehousetest.Bench(b, harness(), func(ctx context.Context, loads []*warehouse.TableLoad) error {
		tx, err := d.db.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		defer tx.Rollback()
		for _, l := range loads {
			cols := make([]string, len(l.Columns))
			for i, c := range l.Columns {
				cols[i] = ident(c.Name)
			}
			one := "(" + strings.TrimSuffix(strings.Repeat("?, ", len(cols)), ", ") + ")"
			for lo := 0; lo < len(l.Rows); lo += rowsPerStatementMax {
				rows := l.Rows[lo:min(lo+rowsPerStatementMax, len(l.Rows))]
				var args []any
				for _, r := range rows {
					args = append(args, r...)
				}
				q := fmt.Sprintf("INSERT INTO %s (%s) VALUES %s", qualified(l.Schema, l.Table), strings.Join(cols, ", "),
					strings.TrimSuffix(strings.Repeat(one+", ", len(rows)), ", "))
				if _, err := tx.ExecContext(ctx, q, args...); err != nil {
					return err
				}
			}
		}
		return tx.Commit()
	})
}
