package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"time"

	gomysql "github.com/go-sql-driver/mysql"
	"github.com/jackc/pgx/v5"
	"gopkg.in/yaml.v3"

	"github.com/sluice-cdi/sluice/router"
	"github.com/sluice-cdi/sluice/router/warehouse"
	"github.com/sluice-cdi/sluice/router/warehouse/mysql"
	"github.com/sluice-cdi/sluice/router/warehouse/postgres"
)

// WarehouseConfig is the config block of a postgres or mysql destination.
type WarehouseConfig struct {
	// DSN (or URL) says where: postgres: a libpq string or postgres:// URL;
	// mysql: the driver's "user:pass@tcp(host:3306)/" or a mysql:// URL.
	DSN string `yaml:"dsn"`
	URL string `yaml:"url"`
	// Schema (postgres) or Database (mysql): the one schema every event
	// goes to; default: each source's own, its name in snake_case.
	Schema   string `yaml:"schema"`
	Database string `yaml:"database"`
	// BatchMaxEvents caps the rows of one transaction (default 10000).
	BatchMaxEvents int `yaml:"batch_max_events"`
	// BatchMaxWait is how long a load waits for concurrent batches to
	// join its transaction (default 0: none; the router's batches are the
	// micro-batches).
	BatchMaxWait    time.Duration `yaml:"batch_max_wait"`
	SkipUsersTable  bool          `yaml:"skip_users_table"`
	SkipTracksTable bool          `yaml:"skip_tracks_table"`
	// JSONColumns are event paths kept whole as one JSON column, such as
	// properties.items.
	JSONColumns []string `yaml:"json_columns"`
	// PoolSize bounds the connections (default 8).
	PoolSize int `yaml:"pool_size"`

	kind string // postgres or mysql
	dsn  string // the effective DSN
}

func completePostgres(k *checker, n *yaml.Node, p string, _ claims) destConfig {
	return completeWarehouse(k, n, p, "postgres")
}

func completeMySQL(k *checker, n *yaml.Node, p string, _ claims) destConfig {
	return completeWarehouse(k, n, p, "mysql")
}

// completeWarehouse checks and decodes a postgres or mysql config block.
func completeWarehouse(k *checker, n *yaml.Node, p, kind string) destConfig {
	w := WarehouseConfig{kind: kind}
	if !decodeBlock(k, n, p, &w) {
		return nil
	}
	switch {
	case w.DSN != "" && w.URL != "":
		k.failf(p+".url", "give dsn or url, not both")
	case w.DSN == "" && w.URL == "":
		k.failf(p+".dsn", "a %s destination needs a dsn (or url)", kind)
	}
	src, key := w.DSN, p+".dsn"
	if w.URL != "" {
		src, key = w.URL, p+".url"
	}
	switch kind {
	case "postgres":
		if w.Database != "" {
			k.failf(p+".database", "a postgres destination loads into a schema: use schema")
		}
		if src != "" {
			if _, err := pgx.ParseConfig(src); err != nil {
				k.failf(key, "not a PostgreSQL connection string or URL: %v", redact(err, src))
			}
			w.dsn = src
		}
	case "mysql":
		if w.Schema != "" && w.Database != "" {
			k.failf(p+".schema", "give database or schema (the same in MySQL), not both")
		}
		if w.Database != "" {
			w.Schema = w.Database
		}
		if src != "" {
			dsn, err := mysqlDSN(src, w.URL != "")
			if err != nil {
				k.failf(key, "%v", err)
			}
			w.dsn = dsn
		}
	}
	if w.Schema != "" && (strings.TrimSpace(w.Schema) != w.Schema || len(w.Schema) > 63 || strings.ContainsAny(w.Schema, "`\".\x00")) {
		k.failf(p+".schema", "want a plain schema name of at most 63 characters, got %q", w.Schema)
	}
	count(k, &w.BatchMaxEvents, p+".batch_max_events", 10_000)
	if w.BatchMaxWait < 0 {
		k.failf(p+".batch_max_wait", "must not be negative (got %s)", k.raw(p+".batch_max_wait"))
	}
	count(k, &w.PoolSize, p+".pool_size", 8)
	for i, path := range w.JSONColumns {
		parts := strings.Split(path, ".")
		if len(parts) < 2 || !jsonRoots[parts[0]] || strings.Contains(path, "..") || strings.HasSuffix(path, ".") {
			k.failf(fmt.Sprintf("%s.json_columns[%d]", p, i), "want a path in the event such as properties.items or context.traits.address, got %q", path)
		}
	}
	return &w
}

// jsonRoots are the event objects whose paths json_columns may name.
var jsonRoots = map[string]bool{"properties": true, "traits": true, "context": true}

// redact replaces the connection string (it may hold a password) in an
// error's text.
func redact(err error, secret string) string {
	s := err.Error()
	if secret != "" {
		s = strings.ReplaceAll(s, secret, "<dsn>")
	}
	return s
}

// mysqlDSN checks a MySQL DSN, or turns a mysql:// URL into one.
func mysqlDSN(src string, isURL bool) (string, error) {
	if isURL {
		u, err := url.Parse(src)
		if err != nil || u.Scheme != "mysql" || u.Host == "" {
			return "", fmt.Errorf("want a URL such as mysql://user:pass@host:3306/db")
		}
		c := gomysql.NewConfig()
		c.Net, c.Addr, c.DBName = "tcp", u.Host, strings.TrimPrefix(u.Path, "/")
		if u.Port() == "" {
			c.Addr += ":3306"
		}
		c.User = u.User.Username()
		c.Passwd, _ = u.User.Password()
		for k, v := range u.Query() {
			if c.Params == nil {
				c.Params = map[string]string{}
			}
			c.Params[k] = v[0]
		}
		src = c.FormatDSN()
	}
	if _, err := gomysql.ParseDSN(src); err != nil {
		return "", fmt.Errorf("not a MySQL DSN such as user:pass@tcp(host:3306)/db: %v", redact(err, src))
	}
	return src, nil
}

func (c *WarehouseConfig) build(d *Destination, log *slog.Logger) (router.Destination, error) {
	var dia warehouse.Dialect
	switch c.kind {
	case "postgres":
		pg, err := postgres.New(context.Background(), postgres.Config{DSN: c.dsn, PoolSize: c.PoolSize})
		if err != nil {
			return nil, err
		}
		dia = pg
	default:
		my, err := mysql.New(mysql.Config{DSN: c.dsn, PoolSize: c.PoolSize})
		if err != nil {
			return nil, err
		}
		dia = my
	}
	return warehouse.New(warehouse.Config{Dialect: dia, Schema: c.Schema, JSONColumns: c.JSONColumns,
		SkipTracks: c.SkipTracksTable, SkipUsers: c.SkipUsersTable, BatchMaxEvents: c.BatchMaxEvents,
		BatchMaxWait: c.BatchMaxWait, Logger: log.With("component", c.kind, "destination", d.Name)})
}
