package ingest

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"unicode/utf8"

	"github.com/valyala/fasthttp"

	"github.com/sluice-cdi/sluice/engine"
	"github.com/sluice-cdi/sluice/ingest/internal/jsonscan"
)

// transparentGIF is the 1x1 image the pixel endpoints always answer with.
var transparentGIF = []byte("GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;")

// pixel turns a GET's query into an event: either ?data=<base64 JSON> (as
// Segment's pixel API) or plain parameters (userId, anonymousId, event,
// name, messageId, timestamp at the top level; context.x and traits.x into
// those objects; everything else into properties). It always answers the
// GIF, whatever happened; failures are counted and logged.
func (s *Server) pixel(ctx *fasthttp.RequestCtx, typ []byte) {
	defer func() {
		ctx.ResetBody()
		ctx.SetStatusCode(fasthttp.StatusOK)
		ctx.SetContentType("image/gif")
		ctx.Response.Header.Set("Cache-Control", "no-store")
		ctx.SetBody(transparentGIF)
	}()
	if n := s.inFlight.Add(1); n > int64(s.opts.InFlightMax) {
		s.inFlight.Add(-1)
		s.metrics.reject("overloaded", 1)
		return
	}
	defer s.inFlight.Add(-1)
	st := s.states.Get().(*reqState)
	defer s.putState(st)
	st.b.reset()
	st.key = s.headerOrQueryKey(ctx, st.key[:0])
	st.body = pixelEvent(st.body[:0], ctx.QueryArgs())
	// Query values arrive percent-decoded and ?data= base64-decoded: either
	// may carry any bytes.
	if !utf8.Valid(st.body) {
		st.raw = s.repairUTF8(st.raw, st.body)
		st.body, st.raw = st.raw, st.body
	}
	if status, msg := s.parse(ctx, st, st.body, endpoint{name: "pixel", pathType: typ}); status != 0 {
		s.log.Debug("pixel event refused", "status", status, "err", msg)
		return
	}
	s.store(ctx, st)
}

func pixelEvent(dst []byte, args *fasthttp.Args) []byte {
	if data := args.Peek("data"); len(data) > 0 {
		for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.URLEncoding, base64.RawStdEncoding, base64.RawURLEncoding} {
			if dec, err := enc.AppendDecode(dst[:0], data); err == nil {
				return dec // the write key may also come from the query
			}
		}
	}
	var top, props, context, traits []byte
	member := func(obj, k, v []byte) []byte {
		if len(obj) > 0 {
			obj = append(obj, ',')
		}
		obj = jsonscan.AppendQuoted(obj, k)
		obj = append(obj, ':')
		return jsonscan.AppendQuoted(obj, v)
	}
	args.VisitAll(func(k, v []byte) {
		switch string(k) {
		case "writeKey", "data":
		case "userId", "anonymousId", "event", "name", "messageId", "timestamp", "originalTimestamp", "sentAt":
			top = member(top, k, v)
		default:
			switch {
			case bytes.HasPrefix(k, []byte("context.")):
				context = member(context, k[8:], v)
			case bytes.HasPrefix(k, []byte("traits.")):
				traits = member(traits, k[7:], v)
			case bytes.HasPrefix(k, []byte("properties.")):
				props = member(props, k[11:], v)
			default:
				props = member(props, k, v)
			}
		}
	})
	dst = append(dst[:0], '{')
	dst = append(dst, top...)
	for _, o := range []struct {
		name string
		body []byte
	}{{"properties", props}, {"context", context}, {"traits", traits}} {
		if len(o.body) == 0 {
			continue
		}
		if len(dst) > 1 {
			dst = append(dst, ',')
		}
		dst = append(dst, `"`+o.name+`":{`...)
		dst = append(dst, o.body...)
		dst = append(dst, '}')
	}
	return append(dst, '}')
}

// health answers 200 when the engine can take writes, 503 otherwise, with
// the engine's figures and each destination's backlog.
func (s *Server) health(ctx *fasthttp.RequestCtx) {
	type backlog struct {
		Destination      string  `json:"destination"`
		Events           uint64  `json:"events"`
		Bytes            int64   `json:"bytes"`
		OldestAgeSeconds float64 `json:"oldest_age_seconds"`
		Failed           int64   `json:"failed"`
		Aborted          int64   `json:"aborted"`
	}
	out := struct {
		Status string `json:"status"`
		Engine *struct {
			Healthy   bool   `json:"healthy"`
			Segments  int    `json:"segments"`
			DiskBytes int64  `json:"disk_bytes"`
			LastSeq   uint64 `json:"last_seq"`
		} `json:"engine,omitempty"`
		Backlog       []backlog `json:"backlog,omitempty"`
		UptimeSeconds float64   `json:"uptime_seconds"`
	}{Status: "ok", UptimeSeconds: s.opts.Now().Sub(s.started).Seconds()}
	if s.deps.Stats != nil {
		st := s.deps.Stats()
		out.Engine = &struct {
			Healthy   bool   `json:"healthy"`
			Segments  int    `json:"segments"`
			DiskBytes int64  `json:"disk_bytes"`
			LastSeq   uint64 `json:"last_seq"`
		}{st.Healthy, st.Segments, st.DiskBytes, st.LastSeq}
		for _, c := range st.Consumers {
			out.Backlog = append(out.Backlog, backlog{c.Name, c.BacklogEvents, c.BacklogBytes, c.OldestPendingAge.Seconds(), c.Failed, c.Aborted})
		}
		if !st.Healthy {
			out.Status = "degraded"
			ctx.SetStatusCode(fasthttp.StatusServiceUnavailable)
		}
	}
	ctx.SetContentType("application/json")
	b, _ := json.Marshal(out)
	ctx.SetBody(b)
}

func (s *Server) writeMetrics(ctx *fasthttp.RequestCtx) {
	ctx.SetContentType("text/plain; version=0.0.4")
	s.metrics.write(ctx)
	fmt.Fprintf(ctx, "# HELP sluice_ingest_in_flight Requests being processed.\n# TYPE sluice_ingest_in_flight gauge\nsluice_ingest_in_flight %d\n", s.inFlight.Load())
	fmt.Fprintf(ctx, "# HELP sluice_ingest_body_bytes_reserved Request body bytes reserved from the body budget.\n# TYPE sluice_ingest_body_bytes_reserved gauge\nsluice_ingest_body_bytes_reserved %d\n", s.budget.used.Load())
	fmt.Fprintf(ctx, "# HELP sluice_ingest_body_bytes_budget The body budget (BodyBytesBudget).\n# TYPE sluice_ingest_body_bytes_budget gauge\nsluice_ingest_body_bytes_budget %d\n", s.budget.max)
	fmt.Fprintf(ctx, "# HELP sluice_ingest_connections Open ingest connections.\n# TYPE sluice_ingest_connections gauge\nsluice_ingest_connections %d\n", s.conns.Load())
	if s.deps.Stats != nil {
		writeEngineMetrics(ctx, s.deps.Stats())
	}
	for _, w := range s.deps.Metrics {
		w(ctx)
	}
}

// writeEngineMetrics renders engine.Stats in Prometheus text format.
func writeEngineMetrics(w fmtWriter, st engine.Stats) {
	g := func(kind, name, help string, v any) {
		fmt.Fprintf(w, "# HELP %s %s\n# TYPE %s %s\n%s %v\n", name, help, name, kind, name, v)
	}
	g("gauge", "sluice_engine_segments", "Segment files on disk.", st.Segments)
	g("gauge", "sluice_engine_segment_bytes", "Bytes in segment files.", st.SegmentBytes)
	g("gauge", "sluice_engine_index_bytes", "Bytes in the index: Pebble and the dedup runs.", st.IndexBytes)
	g("gauge", "sluice_engine_last_seq", "Durable high-water mark.", st.LastSeq)
	g("counter", "sluice_engine_group_commits_total", "Group commits (one write and fsync each).", st.Groups)
	g("counter", "sluice_engine_group_records_total", "Records committed in groups.", st.GroupRecords)
	g("counter", "sluice_engine_fsyncs_total", "Segment fsyncs.", st.Fsyncs)
	g("counter", "sluice_engine_bytes_written_total", "Segment bytes written.", st.BytesWritten)
	g("counter", "sluice_engine_write_errors_total", "Failed segment writes or syncs.", st.WriteErrors)
	g("counter", "sluice_engine_lost_records_total", "Records found unreadable.", st.LostRecords)
	g("counter", "sluice_engine_stragglers_moved_total", "Events copied out of reclaimed segments.", st.StragglersMoved)
	g("counter", "sluice_engine_segments_deleted_total", "Segments reclaimed.", st.SegmentsDeleted)
	g("counter", "sluice_engine_segments_recycled_total", "Segments started in a reclaimed segment's file.", st.SegmentsRecycled)
	g("gauge", "sluice_engine_index_write_amplification", "Pebble write amplification.", st.IndexWriteAmp)
	g("gauge", "sluice_engine_dedup_runs", "Dedup runs (sorted files of dedup keys) on disk.", st.DedupRuns)
	g("gauge", "sluice_engine_dedup_run_bytes", "Bytes in dedup runs (part of sluice_engine_index_bytes).", st.DedupRunBytes)
	g("gauge", "sluice_engine_dedup_write_amplification", "Bytes written into dedup runs (new and merged) over the bytes of the keys indexed.", st.DedupWriteAmp)
	healthy := 0
	if st.Healthy {
		healthy = 1
	}
	g("gauge", "sluice_engine_healthy", "1 while appends work.", healthy)
	diskLow := 0
	if st.DiskLow {
		diskLow = 1
	}
	g("gauge", "sluice_engine_disk_low", "1 while appends are refused for lack of free disk space.", diskLow)
	g("gauge", "sluice_engine_disk_avail_bytes", "Free bytes in the data directory's filesystem at the last check (-1: unknown).", st.DiskAvailBytes)
	fmt.Fprintf(w, "# HELP sluice_destination_backlog_events Events not yet settled, per destination.\n# TYPE sluice_destination_backlog_events gauge\n")
	for _, c := range st.Consumers {
		fmt.Fprintf(w, "sluice_destination_backlog_events{destination=%q} %d\n", c.Name, c.BacklogEvents)
	}
	fmt.Fprintf(w, "# HELP sluice_destination_oldest_pending_seconds Age of the oldest waiting event.\n# TYPE sluice_destination_oldest_pending_seconds gauge\n")
	for _, c := range st.Consumers {
		fmt.Fprintf(w, "sluice_destination_oldest_pending_seconds{destination=%q} %g\n", c.Name, c.OldestPendingAge.Seconds())
	}
	fmt.Fprintf(w, "# HELP sluice_destination_entries Stored exception entries per destination and state.\n# TYPE sluice_destination_entries gauge\n")
	for _, c := range st.Consumers {
		for _, kv := range []struct {
			state string
			n     int64
		}{{"failed", c.Failed}, {"skipped", c.Skipped}, {"aborted", c.Aborted}} {
			fmt.Fprintf(w, "sluice_destination_entries{destination=%q,state=%q} %d\n", c.Name, kv.state, kv.n)
		}
	}
}

type fmtWriter interface {
	Write([]byte) (int, error)
}
