package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// warehouseDoc is a config with one warehouse destination whose config
// block holds conf (indent 6).
// A conf that starts with "#<" marks the config: line instead.
func warehouseDoc(typ, conf string) string {
	mark := ""
	if c, ok := strings.CutPrefix(conf, "#<"); ok {
		mark, conf = " #<", c
	}
	return cfgHead + fmt.Sprintf(`destinations:
  - name: dw
    type: %s
    config:%s
%s`, typ, mark, conf)
}

func TestWarehouseConfigRefusesBadValues(t *testing.T) {
	for _, tc := range []struct{ name, typ, conf, key, msg string }{
		{"no dsn", "postgres", "#<      schema: s\n", "destinations[0].config.dsn", "needs a dsn (or url)"},
		{"dsn and url", "postgres", "      dsn: host=x\n      url: postgres://x/db #<\n", "destinations[0].config.url", "not both"},
		{"bad pg url", "postgres", "      url: 'postgres://x:notaport/db' #<\n", "destinations[0].config.url", "not a PostgreSQL connection string"},
		{"database in postgres", "postgres", "      dsn: host=x\n      database: d #<\n", "destinations[0].config.database", "use schema"},
		{"bad mysql dsn", "mysql", "      dsn: 'root@tcp(127.0.0.1:3306' #<\n", "destinations[0].config.dsn", "not a MySQL DSN"},
		{"bad mysql url", "mysql", "      url: 'http://h/db' #<\n", "destinations[0].config.url", "mysql://user:pass@host:3306/db"},
		{"schema and database", "mysql", "      dsn: 'root@tcp(h:3306)/'\n      schema: a #<\n      database: b\n", "destinations[0].config.schema", "not both"},
		{"schema with a dot", "postgres", "      dsn: host=x\n      schema: a.b #<\n", "destinations[0].config.schema", "plain schema name"},
		{"batch_max_events zero", "postgres", "      dsn: host=x\n      batch_max_events: 0 #<\n", "destinations[0].config.batch_max_events", "must be positive"},
		{"batch_max_wait negative", "mysql", "      dsn: 'root@tcp(h:3306)/'\n      batch_max_wait: -1s #<\n", "destinations[0].config.batch_max_wait", "must not be negative"},
		{"pool_size negative", "postgres", "      dsn: host=x\n      pool_size: -2 #<\n", "destinations[0].config.pool_size", "must be positive"},
		{"json column path", "postgres", "      dsn: host=x\n      json_columns: [items] #<\n", "destinations[0].config.json_columns[0]", "properties.items"},
		{"unknown key", "postgres", "      dsn: host=x\n      tabel: x #<\n", "destinations[0].config.tabel", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			doc := warehouseDoc(tc.typ, tc.conf)
			_, err := parseConfig([]byte(doc))
			if err == nil {
				t.Fatalf("accepted:\n%s", doc)
			}
			want := fmt.Sprintf("config line %d: %s", markedLine(t, doc), tc.key)
			if !strings.HasPrefix(err.Error(), want) || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("got  %v\nwant %s...%s", err, want, tc.msg)
			}
		})
	}
}

// TestWarehouseConfigDefaults: defaults as README.md documents them; a
// mysql:// URL becomes a driver DSN; a password never shows in an error.
func TestWarehouseConfigDefaults(t *testing.T) {
	cfg, err := parseConfig([]byte(warehouseDoc("mysql", "      url: mysql://sluice:pw@db.example:3307/wh?tls=false\n      database: shop\n")))
	if err != nil {
		t.Fatal(err)
	}
	d := cfg.Destinations[0]
	w := d.typed.(*WarehouseConfig)
	if d.BatchSize != 1000 || w.BatchMaxEvents != 10_000 || w.BatchMaxWait != 0 || w.PoolSize != 8 || w.Schema != "shop" {
		t.Errorf("defaults: batch %d, %+v", d.BatchSize, w)
	}
	if w.dsn != "sluice:pw@tcp(db.example:3307)/wh?tls=false" {
		t.Errorf("dsn %q", w.dsn)
	}
	cfg, err = parseConfig([]byte(warehouseDoc("postgres", "      dsn: postgres://u@h/db\n      batch_max_wait: 200ms\n      skip_users_table: true\n      json_columns: [properties.items, context.traits.address]\n")))
	if err != nil {
		t.Fatal(err)
	}
	w = cfg.Destinations[0].typed.(*WarehouseConfig)
	if w.BatchMaxWait != 200*time.Millisecond || !w.SkipUsersTable || len(w.JSONColumns) != 2 || w.Schema != "" {
		t.Errorf("postgres block %+v", w)
	}
	_, err = parseConfig([]byte(warehouseDoc("postgres", "      url: 'postgres://u:s3cret@h:notaport/db'\n")))
	if err == nil || strings.Contains(err.Error(), "s3cret") {
		t.Errorf("error %v shows the password", err)
	}
}

// TestWarehouseReadmeExample: README.md's warehouse block is a valid
// destination, with the defaults it shows.
func TestWarehouseReadmeExample(t *testing.T) {
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile(filepath.Join(root, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, section, _ := strings.Cut(string(readme), "\n### Warehouses\n")
	_, block, ok := strings.Cut(section, "```yaml\n")
	block, _, _ = strings.Cut(block, "```")
	if !ok || block == "" {
		t.Fatal("no yaml block under README.md's Warehouses")
	}
	cfg, err := parseConfig([]byte(cfgHead + "destinations:\n" + block))
	if err != nil {
		t.Fatalf("README.md's warehouse example: %v", err)
	}
	w := cfg.Destinations[0].typed.(*WarehouseConfig)
	if w.BatchMaxEvents != 10_000 || w.PoolSize != 8 || cfg.Destinations[0].BatchSize != 1000 {
		t.Errorf("README.md's example decodes to %+v", w)
	}
}
