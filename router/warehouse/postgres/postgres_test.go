package postgres

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sluice-cdi/sluice/router/warehouse"
	"github.com/sluice-cdi/sluice/router/warehouse/warehousetest"
)

// addr is the test server: SLUICE_TEST_PG_ADDR, default 127.0.0.1:5432
// (user postgres, trust auth, database test).
func addr() string {
	if a := os.Getenv("SLUICE_TEST_PG_ADDR"); a != "" {
		return a
	}
	return "127.0.0.1:5432"
}

func dsn(addr, user string) string {
	return fmt.Sprintf("postgres://%s@%s/test?sslmode=disable&connect_timeout=5", user, addr)
}

func admin(t testing.TB) *pgx.Conn {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, dsn(addr(), "postgres"))
	if err != nil {
		t.Fatalf("postgres at %s: %v", addr(), err)
	}
	t.Cleanup(func() { c.Close(context.Background()) })
	return c
}

func harness() warehousetest.Harness {
	open := func(t testing.TB, a string) warehouse.Dialect {
		d, err := New(context.Background(), Config{DSN: dsn(a, "postgres"), PoolSize: 8})
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	return warehousetest.Harness{
		Addr: addr(),
		Open: open,
		OpenRestricted: func(t testing.TB) warehouse.Dialect {
			role := fmt.Sprintf("sluice_ro_%08x", rand.Uint32())
			c := admin(t)
			exec(t, c, "CREATE ROLE "+role+" LOGIN")
			exec(t, c, "REVOKE CREATE ON DATABASE test FROM "+role)
			t.Cleanup(func() {
				exec(t, c, "DROP OWNED BY "+role)
				exec(t, c, "DROP ROLE "+role)
			})
			d, err := New(context.Background(), Config{DSN: dsn(addr(), role)})
			if err != nil {
				t.Fatal(err)
			}
			return d
		},
		Exec: func(t testing.TB, sql string) { exec(t, admin(t), sql) },
		Query: func(t testing.TB, sql string) [][]string {
			rows, err := admin(t).Query(context.Background(), sql)
			if err != nil {
				t.Fatalf("%s: %v", sql, err)
			}
			defer rows.Close()
			var out [][]string
			for rows.Next() {
				vals, err := rows.Values()
				if err != nil {
					t.Fatal(err)
				}
				var r []string
				for _, v := range vals {
					switch v.(type) {
					case nil:
						r = append(r, "NULL")
					case map[string]any, []any: // jsonb
						j, _ := json.Marshal(v)
						r = append(r, string(j))
					default:
						r = append(r, fmt.Sprint(v))
					}
				}
				out = append(out, r)
			}
			if err := rows.Err(); err != nil {
				t.Fatalf("%s: %v", sql, err)
			}
			return out
		},
		Drop: func(t testing.TB, schema string) {
			exec(t, admin(t), "DROP SCHEMA IF EXISTS "+ident(schema)+" CASCADE")
		},
		Table: func(schema, table string) string { return ident(schema, table) },
		CheckMaxLen: func(schema, table, col string, n int) string {
			return fmt.Sprintf("ALTER TABLE %s ADD CONSTRAINT %s CHECK (length(%s) <= %d)", ident(schema, table), ident(col+"_len"), ident(col), n)
		},
		AlterToText: func(schema, table, col string) string {
			return fmt.Sprintf("ALTER TABLE %s ALTER COLUMN %s TYPE text", ident(schema, table), ident(col))
		},
	}
}

func exec(t testing.TB, c *pgx.Conn, sql string) {
	if _, err := c.Exec(context.Background(), sql); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

func TestPostgres(t *testing.T) { warehousetest.Run(t, harness()) }

// BenchmarkLoad: events/s through the warehouse beside COPY of the same
// rows into the same tables, in one transaction per batch, doing nothing
// else (the ceiling).
func BenchmarkLoad(b *testing.B) {
	pool, err := pgxpool.New(context.Background(), dsn(addr(), "postgres"))
	if err != nil {
		b.Fatal(err)
	}
	defer pool.Close()
	warehousetest.Bench(b, harness(), func(ctx context.Context, loads []*warehouse.TableLoad) error {
		return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			for _, l := range loads {
				cols := make([]string, len(l.Columns))
				for i, c := range l.Columns {
					cols[i] = c.Name
				}
				if _, err := tx.CopyFrom(ctx, pgx.Identifier{l.Schema, l.Table}, cols, pgx.CopyFromRows(l.Rows)); err != nil {
					return err
				}
			}
			return nil
		})
	})
}
