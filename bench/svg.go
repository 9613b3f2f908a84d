package bench

import (
	"fmt"
	"html"
	"math"
	"strings"
)

var palette = []string{"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22"}

// series is one line of a plot.
type series struct {
	label  string
	color  string
	dashed bool
	x, y   []float64
}

// PlotSVG draws a scenario's first run: latency by percentile (log-log:
// acknowledgement latency solid, delivery latency dashed) above throughput
// over time (events acknowledged per second solid, delivered per second
// dashed), one colour per phase.
func PlotSVG(res *Result) string {
	var lat, thr []series
	i := 0
	for _, p := range res.Phases {
		if p.Repeat != 0 {
			continue
		}
		color := palette[i%len(palette)]
		i++
		if s, ok := percentileSeries(p.Name+" ack", color, false, &p, false); ok {
			lat = append(lat, s)
		}
		if s, ok := percentileSeries(p.Name+" delivery", color, true, &p, true); ok {
			lat = append(lat, s)
		}
		if len(p.Series) > 0 {
			s := series{label: p.Name + " acked/s", color: color}
			for _, sec := range p.Series {
				s.x = append(s.x, float64(sec.T)+0.5)
				s.y = append(s.y, float64(sec.Events))
			}
			thr = append(thr, s)
		}
		if d := deliveredPerSecond(p.DeliveredSeries); len(d.x) > 0 {
			d.label, d.color, d.dashed = p.Name+" delivered/s", color, true
			thr = append(thr, d)
		}
	}
	const w, ph, top, gap = 960, 330, 40, 90
	legendLines := len(lat) + len(thr)
	h := top + 2*ph + gap + 40 + 16*legendLines
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n", w, h, w, h)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	title := fmt.Sprintf("%s — commit %s, %s, %d cores, load %s", res.Scenario, res.Env.Commit, res.Env.CPUModel, res.Env.Cores, res.Env.LoadAvg)
	fmt.Fprintf(&b, `<text x="10" y="20" font-size="14" font-weight="bold">%s</text>`+"\n", html.EscapeString(title))
	plotPercentiles(&b, lat, 70, top, w-100, ph)
	plotTime(&b, thr, 70, top+ph+gap, w-100, ph)
	y := top + 2*ph + gap + 40
	for _, s := range append(lat, thr...) {
		dash := ""
		if s.dashed {
			dash = ` stroke-dasharray="6,4"`
		}
		fmt.Fprintf(&b, `<line x1="70" y1="%d" x2="100" y2="%d" stroke="%s" stroke-width="2"%s/><text x="106" y="%d">%s</text>`+"\n",
			y-4, y-4, s.color, dash, y, html.EscapeString(s.label))
		y += 16
	}
	b.WriteString("</svg>\n")
	return b.String()
}

// percentileSeries maps a histogram to x = log10(1/(1-q)), y = latency ms.
func percentileSeries(label, color string, dashed bool, p *Phase, delivery bool) (series, bool) {
	h := p.hist
	if delivery {
		h = p.deliveryHist
	}
	if h == nil || h.TotalCount() == 0 {
		return series{}, false
	}
	s := series{label: label, color: color, dashed: dashed}
	for _, br := range h.CumulativeDistributionWithTicks(5) {
		q := br.Quantile / 100
		if q >= 1 {
			q = 1 - 1/float64(max(h.TotalCount(), 1))/2
		}
		x := math.Log10(1 / (1 - q))
		s.x = append(s.x, math.Min(x, 6))
		s.y = append(s.y, math.Max(float64(br.ValueAt)/1000, 0.001))
	}
	return s, true
}

// deliveredPerSecond turns samples of a cumulative count into per-second
// rates.
func deliveredPerSecond(pts []DeliveredPoint) series {
	var s series
	if len(pts) < 2 {
		return s
	}
	end := pts[len(pts)-1].T
	j := 0
	countAt := func(t float64) float64 { // last sample at or before t
		for j+1 < len(pts) && pts[j+1].T <= t {
			j++
		}
		return float64(pts[j].Unique)
	}
	prev := countAt(0)
	for t := 1.0; t <= math.Ceil(end); t++ {
		c := countAt(t)
		s.x = append(s.x, t-0.5)
		s.y = append(s.y, c-prev)
		prev = c
	}
	return s
}

func frame(b *strings.Builder, x, y, w, h int, title, xlabel, ylabel string) {
	fmt.Fprintf(b, `<rect x="%d" y="%d" width="%d" height="%d" fill="none" stroke="#444"/>`+"\n", x, y, w, h)
	fmt.Fprintf(b, `<text x="%d" y="%d" font-weight="bold">%s</text>`+"\n", x, y-8, html.EscapeString(title))
	fmt.Fprintf(b, `<text x="%d" y="%d" text-anchor="middle">%s</text>`+"\n", x+w/2, y+h+34, html.EscapeString(xlabel))
	fmt.Fprintf(b, `<text x="%d" y="%d" text-anchor="middle" transform="rotate(-90 %d %d)">%s</text>`+"\n", x-50, y+h/2, x-50, y+h/2, html.EscapeString(ylabel))
}

func polyline(b *strings.Builder, s series, px, py func(float64) float64) {
	if len(s.x) == 0 {
		return
	}
	dash := ""
	if s.dashed {
		dash = ` stroke-dasharray="6,4"`
	}
	fmt.Fprintf(b, `<polyline fill="none" stroke="%s" stroke-width="1.5"%s points="`, s.color, dash)
	for i := range s.x {
		fmt.Fprintf(b, "%.1f,%.1f ", px(s.x[i]), py(s.y[i]))
	}
	b.WriteString("\"/>\n")
}

func plotPercentiles(b *strings.Builder, ss []series, x0, y0, w, h int) {
	frame(b, x0, y0, w, h, "Latency by percentile (solid: acknowledgement, dashed: delivery at the sink)", "percentile", "latency (ms, log scale)")
	if len(ss) == 0 {
		return
	}
	ymin, ymax := math.Inf(1), 0.0
	xmax := 2.0
	for _, s := range ss {
		for i := range s.y {
			ymin, ymax, xmax = math.Min(ymin, s.y[i]), math.Max(ymax, s.y[i]), math.Max(xmax, s.x[i])
		}
	}
	xmax = math.Ceil(xmax)
	lo, hi := math.Floor(math.Log10(ymin)), math.Ceil(math.Log10(ymax))
	if hi <= lo {
		hi = lo + 1
	}
	px := func(v float64) float64 { return float64(x0) + v/xmax*float64(w) }
	py := func(v float64) float64 {
		return float64(y0+h) - (math.Log10(math.Max(v, 1e-9))-lo)/(hi-lo)*float64(h)
	}
	for d := 0.0; d <= xmax; d++ {
		label := "0%"
		if d > 0 { // 90%, 99%, 99.9%, ...
			label = fmt.Sprintf("%.*f%%", int(max(0, d-2)), 100*(1-math.Pow(10, -d)))
		}
		X := px(d)
		fmt.Fprintf(b, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#ddd"/><text x="%.1f" y="%d" text-anchor="middle">%s</text>`+"\n",
			X, y0, X, y0+h, X, y0+h+16, label)
	}
	for e := lo; e <= hi; e++ {
		Y := py(math.Pow(10, e))
		fmt.Fprintf(b, `<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#ddd"/><text x="%d" y="%.1f" text-anchor="end">%s</text>`+"\n",
			x0, Y, x0+w, Y, x0-6, Y+4, fmtMs(math.Pow(10, e)))
	}
	for _, s := range ss {
		polyline(b, s, px, py)
	}
}

func plotTime(b *strings.Builder, ss []series, x0, y0, w, h int) {
	frame(b, x0, y0, w, h, "Throughput over time (solid: events acknowledged per second, dashed: delivered per second)", "seconds since the phase start", "events/s")
	if len(ss) == 0 {
		return
	}
	xmax, ymax := 1.0, 1.0
	for _, s := range ss {
		for i := range s.x {
			xmax, ymax = math.Max(xmax, s.x[i]), math.Max(ymax, s.y[i])
		}
	}
	ystep := niceStep(ymax / 5)
	ymax = math.Ceil(ymax/ystep) * ystep
	xstep := niceStep(xmax / 10)
	xmax = math.Ceil(xmax/xstep) * xstep
	px := func(v float64) float64 { return float64(x0) + v/xmax*float64(w) }
	py := func(v float64) float64 { return float64(y0+h) - v/ymax*float64(h) }
	for v := 0.0; v <= xmax+xstep/2; v += xstep {
		X := px(v)
		fmt.Fprintf(b, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#ddd"/><text x="%.1f" y="%d" text-anchor="middle">%g</text>`+"\n",
			X, y0, X, y0+h, X, y0+h+16, v)
	}
	for v := 0.0; v <= ymax+ystep/2; v += ystep {
		Y := py(v)
		fmt.Fprintf(b, `<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#ddd"/><text x="%d" y="%.1f" text-anchor="end">%s</text>`+"\n",
			x0, Y, x0+w, Y, x0-6, Y+4, fmtCount(v))
	}
	for _, s := range ss {
		polyline(b, s, px, py)
	}
}

func niceStep(v float64) float64 {
	if v <= 0 {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 5, 10} {
		if m*p >= v {
			return m * p
		}
	}
	return 10 * p
}

func fmtMs(v float64) string {
	if v < 1 {
		return fmt.Sprintf("%gms", v)
	}
	if v >= 1000 {
		return fmt.Sprintf("%gs", v/1000)
	}
	return fmt.Sprintf("%gms", v)
}

func fmtCount(v float64) string {
	switch {
	case v >= 1e6:
		return fmt.Sprintf("%gM", v/1e6)
	case v >= 1e3:
		return fmt.Sprintf("%gk", v/1e3)
	}
	return fmt.Sprintf("%g", v)
}
