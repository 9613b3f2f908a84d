package bench

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// The markers in BENCHMARKS.md between which Report writes.
const (
	MarkerBegin = "<!-- scenarios:begin -->"
	MarkerEnd   = "<!-- scenarios:end -->"
)

// ReplaceBetween returns doc with the text between the begin and end
// markers replaced by content (markers kept). Without markers it appends a
// section holding them. Text outside the markers is never touched.
func ReplaceBetween(doc, begin, end, content string) (string, error) {
	i := strings.Index(doc, begin)
	j := strings.Index(doc, end)
	switch {
	case i < 0 && j < 0:
		if doc != "" && !strings.HasSuffix(doc, "\n") {
			doc += "\n"
		}
		return doc + "\n" + begin + "\n" + content + end + "\n", nil
	case i < 0 || j < 0 || j < i:
		return "", fmt.Errorf("markers %q and %q are not both present in order", begin, end)
	case strings.Count(doc, begin) > 1 || strings.Count(doc, end) > 1:
		return "", fmt.Errorf("markers appear more than once")
	}
	if content != "" && !strings.HasSuffix(content, "\n") {
		content += "\n"
	}
	return doc[:i+len(begin)] + "\n" + content + doc[j:], nil
}

// LoadResults reads every outDir/*/result.json, in scenario order.
func LoadResults(outDir string) ([]*Result, error) {
	var out []*Result
	for _, s := range scenarios {
		r, err := ReadResult(filepath.Join(outDir, s.Name))
		if os.IsNotExist(err) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, nil
}

// WriteReport renders the results in outDir into mdPath between the
// markers.
func WriteReport(outDir, mdPath string) error {
	results, err := LoadResults(outDir)
	if err != nil {
		return err
	}
	if len(results) == 0 {
		return fmt.Errorf("no results in %s", outDir)
	}
	doc, err := os.ReadFile(mdPath)
	if err != nil && !os.IsNotExist(err) {
		return err
	}
	rel, _ := filepath.Rel(filepath.Dir(mdPath), outDir)
	out, err := ReplaceBetween(string(doc), MarkerBegin, MarkerEnd, RenderReport(results, filepath.ToSlash(rel)))
	if err != nil {
		return fmt.Errorf("%s: %w", mdPath, err)
	}
	return os.WriteFile(mdPath, []byte(out), 0o644)
}

func desc(name string) string {
	for _, s := range scenarios {
		if s.Name == name {
			return s.Desc
		}
	}
	return ""
}

func find(results []*Result, name string) *Result {
	for _, r := range results {
		if r.Scenario == name {
			return r
		}
	}
	return nil
}

// Target is one of the targets with its verdict.
type Target struct {
	What, Measured, Verdict string
}

// Targets evaluates the targets against the results.
func Targets(results []*Result) []Target {
	var out []Target
	get := func(scen, key string) (float64, *Result, bool) {
		r := find(results, scen)
		if r == nil {
			return 0, nil, false
		}
		v, ok := r.Summary[key]
		return v, r, ok
	}
	verdict := func(ok bool) string {
		if ok {
			return "**met**"
		}
		return "**missed**"
	}
	runs := func(r *Result, key string) string {
		if r == nil || len(r.SummaryRuns[key]) < 2 {
			return ""
		}
		vs := r.SummaryRuns[key]
		return fmt.Sprintf(" (median of %d; range %s-%s)", len(vs), num(slices.Min(vs)), num(slices.Max(vs)))
	}
	// context adds other figures of the same result to a measurement.
	context := func(scen string, parts ...string) string {
		r := find(results, scen)
		if r == nil {
			return ""
		}
		var out []string
		for i := 0; i+1 < len(parts); i += 2 {
			if v, ok := r.Summary[parts[i+1]]; ok {
				out = append(out, fmt.Sprintf(parts[i], num(v)))
			}
		}
		if len(out) == 0 {
			return ""
		}
		return "; " + strings.Join(out, ", ")
	}
	var extra string
	add := func(what string, scen, key string, format func(float64) string, ok func(float64) bool) {
		v, r, found := get(scen, key)
		if !found {
			out = append(out, Target{what, "not measured", "-"})
			return
		}
		out = append(out, Target{what, format(v) + runs(r, key) + extra, verdict(ok(v))})
		extra = ""
	}
	eps := func(v float64) string { return num(v) + " events/s" }
	extra = context("ingest-max", "fasthttp+file ceiling %s events/s", "file_ceiling_batch100_eps", "sluice CPU %s us/event", "sluice_cpu_us_per_event_batch100")
	add("ingest >= 200,000 events/s acknowledged durably (100-event batches, 64 senders)", "ingest-max", "sluice_batch100_eps", eps,
		func(v float64) bool { return v >= 200_000 })
	add("ingest >= 50% of the same-run fasthttp+file ceiling", "ingest-max", "sluice_over_file",
		func(v float64) string { return fmt.Sprintf("%.2f", v) }, func(v float64) bool { return v >= 0.5 })
	if r := find(results, "ingest-latency"); r != nil {
		if _, ok := r.Summary["rate100k_p99_ms"]; ok {
			add("ingest p99 <= 10 ms at half the 200,000 target (open loop at 100,000 events/s)", "ingest-latency", "rate100k_p99_ms",
				func(v float64) string { return fmt.Sprintf("%.1f ms", v) }, func(v float64) bool { return v <= 10 })
		}
		rate := r.Summary["rate50_eps"]
		extra = context("ingest-latency", "fasthttp+file ceiling at the same rate: p99 %s ms", "file_ceiling_rate50_p99_ms", "sluice at 25%%: p99 %s ms", "rate25_p99_ms")
		add(fmt.Sprintf("ingest p99 <= 10 ms at half the max (open loop at %s events/s)", num(rate)), "ingest-latency", "rate50_p99_ms",
			func(v float64) string { return fmt.Sprintf("%.1f ms", v) }, func(v float64) bool { return v <= 10 })
	} else {
		out = append(out, Target{"ingest p99 <= 10 ms at half the max", "not measured", "-"})
	}
	add("<= 2 allocations per event (ingest/bench_test.go, 100-event batches)", "ingest-allocs", "allocs_per_event_batch100",
		func(v float64) string { return fmt.Sprintf("%.2f", v) }, func(v float64) bool { return v <= 2 })
	extra = context("e2e-max", "delivery alone (after the load) %s events/s", "delivery_after_load_batch100_eps", "batch_size 1: %s events/s", "e2e_batch1_eps")
	add("end to end >= 100,000 events/s into a batching webhook sink (batch_size 100)", "e2e-max", "e2e_batch100_eps", eps,
		func(v float64) bool { return v >= 100_000 })
	if r := find(results, "e2e-latency"); r != nil {
		add(fmt.Sprintf("delivery p99 <= 100 ms at half the e2e max (%s events/s)", num(r.Summary["rate_eps"])), "e2e-latency", "delivery_p99_ms",
			func(v float64) string { return fmt.Sprintf("%.1f ms", v) }, func(v float64) bool { return v <= 100 })
	} else {
		out = append(out, Target{"delivery p99 <= 100 ms at half the e2e max", "not measured", "-"})
	}
	extra = context("poison-1pct", "healthy %s events/s", "healthy_eps", "with poison named by the sink %s events/s", "named_eps",
		"with batches refused whole %s events/s", "poison_eps", "refused whole: %s%% lower", "cost_pct")
	add("1% poison costs < 5% throughput (a sink naming the refused events)", "poison-1pct", "cost_named_pct",
		func(v float64) string { return fmt.Sprintf("%.1f%% lower", v) }, func(v float64) bool { return v < 5 })
	extra = context("outage", "%s events/s after the outage", "outage_drain_eps", "%s events/s after a pause", "healthy_drain_eps", "first delivery %s s after it ended", "resume_after_outage_s")
	add("drain after an outage >= 80% of the healthy rate", "outage", "drain_over_healthy",
		func(v float64) string { return fmt.Sprintf("%.2f of healthy", v) }, func(v float64) bool { return v >= 0.8 })
	return out
}

// num formats with thousands separators (no decimals at or above 100).
func num(v float64) string {
	if v < 100 && v > -100 && v != math.Trunc(v) {
		return fmt.Sprintf("%.2f", v)
	}
	s := fmt.Sprintf("%.0f", v)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

func ms(v float64) string {
	switch {
	case v == 0:
		return "-"
	case v < 10:
		return fmt.Sprintf("%.2f", v)
	case v < 1000:
		return fmt.Sprintf("%.1f", v)
	}
	return num(v)
}

// RenderReport renders the scenario tables (medians over repeats).
func RenderReport(results []*Result, outRel string) string {
	var b strings.Builder
	b.WriteString("<!-- generated by `go run ./cmd/sluice-bench report`; edits between the markers are overwritten -->\n\n")
	envs := map[string]bool{}
	for _, r := range results {
		e := r.Env
		dirty := ""
		if e.Dirty {
			dirty = " + uncommitted changes"
		}
		envs[fmt.Sprintf("commit `%s`%s, %s, %s, %d cores", e.Commit, dirty, e.GoVersion, e.CPUModel, e.Cores)] = true
	}
	var envList []string
	for e := range envs {
		envList = append(envList, e)
	}
	slices.Sort(envList)
	fmt.Fprintf(&b, "Measured on: %s. Raw results: `%s/<scenario>/result.json`, percentiles `*.hgrm`, plots `<scenario>.svg`.\n\n",
		strings.Join(envList, "; "), outRel)

	b.WriteString("### Targets\n\n| target | measured | verdict |\n|---|---|---|\n")
	for _, t := range Targets(results) {
		fmt.Fprintf(&b, "| %s | %s | %s |\n", t.What, t.Measured, t.Verdict)
	}
	b.WriteString("\n")

	for _, r := range results {
		quick := ""
		if r.Quick {
			quick = ", **quick run**"
		}
		status := "passed"
		if !r.Pass {
			status = "**FAILED**"
		}
		fmt.Fprintf(&b, "### %s\n\n%s. Checks %s; %d run(s)%s, load average at start %s, %.0f s.\n\n", r.Scenario, desc(r.Scenario),
			status, r.Repeats, quick, r.Env.LoadAvg, r.WallSeconds)
		if len(r.Phases) > 0 {
			b.WriteString("| phase | load | events/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | delivery p50 / p99 ms | e2e events/s | sluice CPU us/event | sluice VmHWM MiB | data dir B/event | log written B/event | harness CPU us/event | check |\n")
			b.WriteString("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|\n")
			for _, name := range r.PhaseNames() {
				med := func(f func(*Phase) float64) float64 { v, _ := r.PhaseMedian(name, f); return v }
				var first *Phase
				checks := "ok"
				for i := range r.Phases {
					p := &r.Phases[i]
					if p.Name != name {
						continue
					}
					if first == nil {
						first = p
					}
					if p.Check != nil && !p.Check.OK {
						checks = "**failed**"
					}
				}
				if first.Check == nil {
					checks = "-"
				}
				deliv := "-"
				if first.Delivery != nil {
					deliv = ms(med(func(p *Phase) float64 { return p.Delivery.P50 })) + " / " + ms(med(func(p *Phase) float64 { return p.Delivery.P99 }))
				}
				sl := func(f func(*SluiceStats) float64) string {
					if first.Sluice == nil {
						return "-"
					}
					return num(med(func(p *Phase) float64 {
						if p.Sluice == nil {
							return 0
						}
						return f(p.Sluice)
					}))
				}
				e2e := "-"
				if v := med(func(p *Phase) float64 { return p.DeliveredPerSec }); v > 0 {
					e2e = num(v)
				}
				fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n",
					name, loadDesc(first), num(med(func(p *Phase) float64 { return p.EventsPerSec })),
					ms(med(func(p *Phase) float64 { return p.Latency.P50 })), ms(med(func(p *Phase) float64 { return p.Latency.P90 })),
					ms(med(func(p *Phase) float64 { return p.Latency.P99 })), ms(med(func(p *Phase) float64 { return p.Latency.P999 })),
					ms(med(func(p *Phase) float64 { return p.Latency.Max })), deliv, e2e,
					sl(func(s *SluiceStats) float64 { return s.CPUMicrosPerEvent }),
					sl(func(s *SluiceStats) float64 { return float64(s.VmHWMBytes) / (1 << 20) }),
					sl(func(s *SluiceStats) float64 { return s.DiskBytesPerEvent }),
					sl(func(s *SluiceStats) float64 { return s.SegmentBytesPerEvent }),
					num(med(func(p *Phase) float64 { return p.LoadGenCPUUs })), checks)
			}
			b.WriteString("\n")
		}
		if len(r.Summary) > 0 {
			keys := make([]string, 0, len(r.Summary))
			for k := range r.Summary {
				keys = append(keys, k)
			}
			slices.Sort(keys)
			var parts []string
			for _, k := range keys {
				s := fmt.Sprintf("`%s` %s", k, num(r.Summary[k]))
				if vs := r.SummaryRuns[k]; len(vs) > 1 {
					s += fmt.Sprintf(" (%s-%s)", num(slices.Min(vs)), num(slices.Max(vs)))
				}
				parts = append(parts, s)
			}
			fmt.Fprintf(&b, "Figures (medians; range over runs in brackets): %s.\n\n", strings.Join(parts, ", "))
		}
		for _, n := range r.Notes {
			fmt.Fprintf(&b, "- %s\n", n)
		}
		for _, f := range r.Failures {
			fmt.Fprintf(&b, "- FAILURE: %s\n", strings.ReplaceAll(f, "\n", " "))
		}
		if len(r.Notes)+len(r.Failures) > 0 {
			b.WriteString("\n")
		}
	}
	return b.String()
}

func loadDesc(p *Phase) string {
	l := p.Load
	if l.Mode == "" {
		return "-"
	}
	var parts []string
	if l.Mode == "open" {
		parts = append(parts, fmt.Sprintf("open %s/s", num(l.Rate)))
	} else {
		parts = append(parts, "closed")
	}
	if l.Single {
		parts = append(parts, "single event")
	} else {
		parts = append(parts, fmt.Sprintf("batch %d", l.Batch))
	}
	parts = append(parts, fmt.Sprintf("%d senders", l.Senders), fmt.Sprintf("%s users", num(float64(l.Users))))
	if l.HotPercent > 0 {
		parts = append(parts, fmt.Sprintf("hot user %g%%", l.HotPercent))
	}
	if l.Gzip {
		parts = append(parts, "gzip")
	}
	if p.Target != "sluice" {
		parts = append(parts, "-> "+p.Target)
	}
	return strings.Join(parts, ", ")
}
