package warehouse

import (
	"fmt"
	"hash/fnv"
	"strings"
	"unicode"
)

// Names are a dialect's rules for identifiers: how long one may be and
// which words must not stand alone. Every name Sluice creates is
// snake_case ASCII ([a-z0-9_]), so that analysts can write it unquoted.
type Names struct {
	// MaxLen is the longest identifier in bytes (Postgres 63, MySQL 64).
	MaxLen int
	// Reserved holds the dialect's reserved words, lower case. A name
	// equal to one gets a leading underscore.
	Reserved map[string]bool
}

// SnakeCase turns a key such as "userId", "Product Viewed" or
// "HTTPStatus" into "user_id", "product_viewed", "http_status": lower case
// ASCII letters and digits, words joined by one underscore; every other
// character separates words (letters outside ASCII are dropped to an
// underscore, so that names stay ASCII).
func SnakeCase(s string) string {
	var b strings.Builder
	rs := []rune(s)
	pendingSep := false
	for i, r := range rs {
		isUpper := r >= 'A' && r <= 'Z'
		isLower := r >= 'a' && r <= 'z'
		isDigit := r >= '0' && r <= '9'
		if !isUpper && !isLower && !isDigit {
			pendingSep = b.Len() > 0
			continue
		}
		if isUpper && b.Len() > 0 && i > 0 {
			prev := rs[i-1]
			nextLower := i+1 < len(rs) && rs[i+1] >= 'a' && rs[i+1] <= 'z'
			// a word starts at an upper case letter after a lower case
			// letter or digit, or at the last capital of an acronym
			// followed by lower case ("HTTPStatus" -> http_status).
			if unicode.IsLower(prev) || unicode.IsDigit(prev) || (unicode.IsUpper(prev) && nextLower) {
				pendingSep = true
			}
		}
		if pendingSep {
			b.WriteByte('_')
			pendingSep = false
		}
		b.WriteRune(unicode.ToLower(r))
	}
	return b.String()
}

// Column turns a path of keys (["address", "streetName"]) into a column
// name (address_street_name), sanitized: see Sanitize.
func (n Names) Column(path ...string) string {
	parts := make([]string, 0, len(path))
	for _, p := range path {
		if s := SnakeCase(p); s != "" {
			parts = append(parts, s)
		}
	}
	return n.Sanitize(strings.Join(parts, "_"))
}

// Sanitize makes a snake_case name safe: an empty name becomes "_", a
// name starting with a digit or equal to a reserved word gets a leading
// underscore, and a name longer than MaxLen is cut to it.
func (n Names) Sanitize(s string) string {
	if s == "" {
		s = "_"
	}
	if s[0] >= '0' && s[0] <= '9' || n.Reserved[s] {
		s = "_" + s
	}
	if n.MaxLen > 0 && len(s) > n.MaxLen {
		s = s[:n.MaxLen]
	}
	return s
}

// Suffixed is name with a suffix that is a hash of raw (the key it came
// from), cut so that the whole fits MaxLen: how a key whose name another
// key already took gets a name of its own, the same one every time.
func (n Names) Suffixed(name, raw string) string {
	h := fnv.New32a()
	h.Write([]byte(raw))
	suffix := fmt.Sprintf("_%06x", h.Sum32()&0xffffff)
	if n.MaxLen > 0 && len(name)+len(suffix) > n.MaxLen {
		name = name[:n.MaxLen-len(suffix)]
	}
	return name + suffix
}

// Table is the table of a track event name: its snake_case name, with an
// underscore before it when it would be one of the fixed tables
// (tracks, users, ...), as RudderStack does.
func (n Names) Table(event string) string {
	t := n.Column(event)
	if fixedTables[t] {
		t = n.Sanitize("_" + t)
	}
	return t
}

// The fixed tables of the warehouse schema.
const (
	TableTracks     = "tracks"
	TableIdentifies = "identifies"
	TableUsers      = "users"
	TablePages      = "pages"
	TableScreens    = "screens"
	TableGroups     = "groups"
	TableAliases    = "aliases"
	TableDiscards   = "rudder_discards"
)

var fixedTables = map[string]bool{
	TableTracks: true, TableIdentifies: true, TableUsers: true, TablePages: true, TableScreens: true,
	TableGroups: true, TableAliases: true, TableDiscards: true,
}

// SQLReserved are words reserved in both Postgres and MySQL (and in
// standard SQL) that a property could plausibly be named; dialects add
// their own.
var SQLReserved = []string{
	"all", "alter", "and", "any", "as", "asc", "between", "both", "by", "case", "cast", "check", "collate",
	"column", "constraint", "create", "cross", "current_date", "current_time", "current_timestamp",
	"current_user", "default", "delete", "desc", "distinct", "drop", "else", "end", "except", "exists",
	"false", "fetch", "for", "foreign", "from", "grant", "group", "having", "in", "inner", "insert",
	"intersect", "into", "is", "join", "leading", "left", "like", "limit", "natural", "not", "null", "on",
	"or", "order", "outer", "primary", "references", "right", "select", "table", "then", "to", "trailing",
	"true", "union", "unique", "update", "using", "values", "when", "where", "with",
}

// ReservedSet builds a Reserved map from word lists.
func ReservedSet(lists ...[]string) map[string]bool {
	m := map[string]bool{}
	for _, l := range lists {
		for _, w := range l {
			m[w] = true
		}
	}
	return m
}
