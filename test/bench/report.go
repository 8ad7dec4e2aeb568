package bench

import (
	"fmt"
	"image"
	"image/color"
	"image/draw"
	"image/png"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/image/font"
	"golang.org/x/image/font/basicfont"
	"golang.org/x/image/math/fixed"

	"github.com/flotilla-relay/flotilla/test/flotillatest"
)

// envCount reads a positive count a benchmark's size is set by (def when unset or
// not a positive number).
func envCount(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// figure is one measurement beside its baseline from the same run.
type figure struct {
	what            string
	value, baseline float64
	unit            string
	goal            float64 // goal for the ratio value/baseline (0: none)
	higherIsBetter  bool
}

func (f figure) ratio() float64 {
	if f.baseline == 0 {
		return 0
	}
	return f.value / f.baseline
}

// relayReport collects a benchmark's figures and writes them as text, as benchmark
// metrics, and as a Markdown report with a PNG plot under results/.
type relayReport struct {
	figures []figure
	notes   []string
	// disk is the run's disk floor (see diskFloor), if measured.
	disk string
}

func (r *relayReport) add(what string, value, baseline float64, unit string, goal float64, higherIsBetter bool) {
	f := figure{what, value, baseline, unit, goal, higherIsBetter}
	r.figures = append(r.figures, f)
	fmt.Printf("%-40s %12.2f %-6s baseline %12.2f %-6s ratio %.2f%s\n", what, value, unit, baseline, unit, f.ratio(), goalText(f))
}

func (r *relayReport) note(s string) {
	r.notes = append(r.notes, s)
	fmt.Println("  " + s)
}

func goalText(f figure) string {
	if f.goal == 0 {
		return ""
	}
	met := f.ratio() >= f.goal
	if !f.higherIsBetter {
		met = f.ratio() <= f.goal
	}
	verdict := "met"
	if !met {
		verdict = "NOT met"
	}
	return fmt.Sprintf(" (goal %.2fx: %s)", f.goal, verdict)
}

func (r *relayReport) write(b *testing.B, name string) {
	b.Helper()
	for _, f := range r.figures {
		key := strings.NewReplacer(" ", "-", ",", "", "(", "", ")", "").Replace(f.what)
		b.ReportMetric(f.ratio(), key+"-ratio")
	}
	dir := "results"
	if err := os.MkdirAll(dir, 0o755); err != nil {
		b.Fatal(err)
	}
	stamp := time.Now().UTC().Format("20060102-150405")
	base := filepath.Join(dir, name+"-"+stamp)
	var md strings.Builder
	fmt.Fprintf(&md, "# Flotilla %s benchmark, %s\n\n", name, time.Now().UTC().Format(time.RFC3339))
	fmt.Fprintf(&md, "Machine: %d CPUs, %s/%s. Command: `go test -run '^$' -bench %s -benchtime 1x ./test/bench/` (part of `make bench`).\n\n", runtime.NumCPU(), runtime.GOOS, runtime.GOARCH, b.Name())
	if out, err := exec.Command(flotillatest.Binary(b), "--version").Output(); err == nil {
		fmt.Fprintf(&md, "Binary: %s\n\n", strings.TrimSpace(string(out)))
	}
	if r.disk != "" {
		fmt.Fprintf(&md, "The %s.\n\n", r.disk)
	}
	fmt.Fprintln(&md, "| figure | Flotilla | baseline (same run) | ratio | goal |")
	fmt.Fprintln(&md, "|---|---|---|---|---|")
	for _, f := range r.figures {
		goal := "-"
		if f.goal != 0 {
			goal = strings.TrimPrefix(goalText(f), " ")
		}
		fmt.Fprintf(&md, "| %s | %.2f %s | %.2f %s | %.2f | %s |\n", f.what, f.value, f.unit, f.baseline, f.unit, f.ratio(), goal)
	}
	if len(r.notes) > 0 {
		fmt.Fprintln(&md)
		for _, n := range r.notes {
			fmt.Fprintf(&md, "- %s\n", n)
		}
	}
	fmt.Fprintf(&md, "\n![ratios](%s)\n", filepath.Base(base)+".png")
	if err := os.WriteFile(base+".md", []byte(md.String()), 0o644); err != nil {
		b.Fatal(err)
	}
	if err := writePlot(base+".png", r.figures); err != nil {
		b.Fatal(err)
	}
	fmt.Printf("report: test/bench/%s.md (plot %s.png)\n", base, filepath.Base(base))
}

// writePlot draws each figure's ratio to its baseline as a horizontal bar, with a
// line at 1.0 (as fast as the baseline) and a tick at the goal.
func writePlot(path string, figs []figure) error {
	const w, rowH, left, top = 900, 28, 330, 40
	h := top + rowH*len(figs) + 30
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	draw.Draw(img, img.Bounds(), image.White, image.Point{}, draw.Src)
	maxRatio := 1.5
	for _, f := range figs {
		maxRatio = max(maxRatio, f.ratio()*1.1, f.goal*1.1)
	}
	scale := float64(w-left-60) / maxRatio
	text := func(x, y int, s string, c color.Color) {
		d := font.Drawer{Dst: img, Src: image.NewUniform(c), Face: basicfont.Face7x13, Dot: fixed.P(x, y)}
		d.DrawString(s)
	}
	text(10, 20, "Flotilla / baseline (same run); grey line: 1.0, red tick: goal", color.Black)
	for i, f := range figs {
		y := top + i*rowH
		text(10, y+16, f.what, color.Black)
		bw := int(f.ratio() * scale)
		c := color.RGBA{0x3b, 0x75, 0xaf, 0xff}
		draw.Draw(img, image.Rect(left, y+4, left+bw, y+rowH-6), image.NewUniform(c), image.Point{}, draw.Src)
		tx := left + bw + 5
		if f.goal > 0 {
			tx = max(tx, left+int(f.goal*scale)+6)
		}
		text(tx, y+16, fmt.Sprintf("%.2fx", f.ratio()), color.Black)
		if f.goal > 0 {
			gx := left + int(f.goal*scale)
			draw.Draw(img, image.Rect(gx-1, y+1, gx+2, y+rowH-3), image.NewUniform(color.RGBA{0xd0, 0x20, 0x20, 0xff}), image.Point{}, draw.Src)
		}
	}
	one := left + int(scale)
	draw.Draw(img, image.Rect(one, top-4, one+1, h-20), image.NewUniform(color.Gray{0x90}), image.Point{}, draw.Src)
	out, err := os.Create(path)
	if err != nil {
		return err
	}
	defer out.Close()
	return png.Encode(out, img)
}
