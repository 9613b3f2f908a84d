package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"text/tabwriter"
	"time"
)

// adminClient talks to a running sluice's admin API.
type adminClient struct {
	base  string
	token string
	http  *http.Client
}

// adminFlags adds --admin, --token and --config to fs and returns a
// constructor for the client once fs is parsed.
func adminFlags(fs *flag.FlagSet) func() (*adminClient, error) {
	addr := fs.String("admin", "", "admin API address (default: admin_listen of --config, else 127.0.0.1:8081)")
	token := fs.String("token", os.Getenv("SLUICE_ADMIN_TOKEN"), "admin bearer token (default $SLUICE_ADMIN_TOKEN, else admin_token of --config)")
	config := fs.String("config", "", "read the admin address and token from this config file")
	return func() (*adminClient, error) {
		a, t := *addr, *token
		if *config != "" {
			cfg, err := loadConfig(*config)
			if err != nil {
				return nil, err
			}
			if a == "" {
				a = cfg.AdminListen
			}
			if t == "" {
				t = cfg.AdminToken
			}
		}
		if a == "" {
			a = "127.0.0.1:8081"
		}
		if !strings.Contains(a, "://") {
			a = "http://" + a
		}
		return &adminClient{base: strings.TrimRight(a, "/"), token: t, http: &http.Client{Timeout: 30 * time.Second}}, nil
	}
}

func (c *adminClient) call(method, path string, body any, out any) error {
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, c.base+path, rd)
	if err != nil {
		return err
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("cannot reach admin API: %w", err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if resp.StatusCode != http.StatusOK {
		var e struct {
			Error string `json:"error"`
		}
		json.Unmarshal(data, &e)
		return fmt.Errorf("admin API: %s: %s", resp.Status, e.Error)
	}
	return json.Unmarshal(data, out)
}

// statusCmd prints each destination's state and backlog.
func statusCmd(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	fs.SetOutput(stderr)
	client := adminFlags(fs)
	asJSON := fs.Bool("json", false, "print JSON")
	if fs.Parse(args) != nil {
		return 2
	}
	c, err := client()
	if err != nil {
		fmt.Fprintf(stderr, "sluice status: %v\n", err)
		return 2
	}
	var dests []map[string]any
	if err := c.call("GET", "/v1/destinations", nil, &dests); err != nil {
		fmt.Fprintf(stderr, "sluice status: %v\n", err)
		return 1
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		enc.Encode(dests)
		return 0
	}
	tw := tabwriter.NewWriter(stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "DESTINATION\tSTATE\tBACKLOG\tOLDEST(s)\tFAILED\tSKIPPED\tABORTED\tCONCURRENCY\tDELIVERED")
	for _, d := range dests {
		counters, _ := d["counters"].(map[string]any)
		fmt.Fprintf(tw, "%v\t%v\t%v\t%.1f\t%v\t%v\t%v\t%v\t%v\n", d["destination"], d["state"], d["backlog_events"],
			d["oldest_pending_seconds"], d["failed_entries"], d["skipped_entries"], d["aborted_entries"], d["concurrency"], counters["Delivered"])
	}
	tw.Flush()
	// The destinations' own figures (a warehouse's rows per table, ...).
	for _, d := range dests {
		figs, _ := d["figures"].([]any)
		if len(figs) == 0 {
			continue
		}
		fmt.Fprintf(stdout, "\n%v:\n", d["destination"])
		for _, f := range figs {
			if m, ok := f.(map[string]any); ok {
				fmt.Fprintf(stdout, "  %v %v\n", m["series"], m["value"])
			}
		}
	}
	return 0
}

// dlqCmd lists, replays or purges a destination's dead letters.
func dlqCmd(args []string, stdout, stderr io.Writer) int {
	usage := "usage: sluice dlq list|replay|purge --destination NAME [--reason TEXT] [--message-id ID ...]"
	if len(args) == 0 {
		fmt.Fprintln(stderr, usage)
		return 2
	}
	sub := args[0]
	fs := flag.NewFlagSet("dlq "+sub, flag.ContinueOnError)
	fs.SetOutput(stderr)
	client := adminFlags(fs)
	dest := fs.String("destination", "", "destination name (required)")
	reason := fs.String("reason", "", "only dead letters whose reason contains this text")
	var ids multiFlag
	fs.Var(&ids, "message-id", "only this messageId (repeatable)")
	after := fs.Uint64("after", 0, "list: start after this seq (paging)")
	limit := fs.Int("limit", 100, "list: page size")
	if fs.Parse(args[1:]) != nil {
		return 2
	}
	if *dest == "" {
		fmt.Fprintln(stderr, usage)
		return 2
	}
	c, err := client()
	if err != nil {
		fmt.Fprintf(stderr, "sluice dlq: %v\n", err)
		return 2
	}
	path := "/v1/destinations/" + url.PathEscape(*dest) + "/dlq"
	switch sub {
	case "list":
		q := url.Values{"after": {fmt.Sprint(*after)}, "limit": {fmt.Sprint(*limit)}}
		if *reason != "" {
			q.Set("reason", *reason)
		}
		for _, id := range ids {
			q.Add("message_id", id)
		}
		var out []json.RawMessage
		if err := c.call("GET", path+"?"+q.Encode(), nil, &out); err != nil {
			fmt.Fprintf(stderr, "sluice dlq list: %v\n", err)
			return 1
		}
		for _, dl := range out { // one dead letter per line
			var line bytes.Buffer
			if json.Compact(&line, dl) != nil {
				line.Write(dl)
			}
			fmt.Fprintln(stdout, line.String())
		}
		return 0
	case "replay", "purge":
		var out struct {
			Count int `json:"count"`
		}
		body := map[string]any{"reason": *reason, "message_ids": []string(ids)}
		if err := c.call("POST", path+"/"+sub, body, &out); err != nil {
			fmt.Fprintf(stderr, "sluice dlq %s: %v\n", sub, err)
			return 1
		}
		fmt.Fprintf(stdout, "%s %d dead letters of %s\n", pastTense[sub], out.Count, *dest)
		return 0
	}
	fmt.Fprintln(stderr, usage)
	return 2
}

// pauseCmd pauses or resumes a destination.
func pauseCmd(verb string, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet(verb, flag.ContinueOnError)
	fs.SetOutput(stderr)
	client := adminFlags(fs)
	if fs.Parse(args) != nil || fs.NArg() != 1 {
		fmt.Fprintf(stderr, "usage: sluice %s [flags] DESTINATION\n", verb)
		return 2
	}
	c, err := client()
	if err != nil {
		fmt.Fprintf(stderr, "sluice %s: %v\n", verb, err)
		return 2
	}
	var out map[string]bool
	if err := c.call("POST", "/v1/destinations/"+url.PathEscape(fs.Arg(0))+"/"+verb, nil, &out); err != nil {
		fmt.Fprintf(stderr, "sluice %s: %v\n", verb, err)
		return 1
	}
	fmt.Fprintf(stdout, "%s: %s\n", fs.Arg(0), pastTense[verb])
	return 0
}

var pastTense = map[string]string{"replay": "replayed", "purge": "purged", "pause": "paused", "resume": "resumed"}

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }
