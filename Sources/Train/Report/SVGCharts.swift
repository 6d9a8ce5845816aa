// Small inline-SVG charts for the run report: lines (one or two y axes), stacked bars, bars per category and a
// heatmap. No script and no external resource: the report is one file that opens anywhere. Each plotted series keeps
// its numbers in data-x / data-y attributes (and hover titles), so a reader or a test can check what is drawn.

import Foundation

struct ChartSeries {
    var name: String
    var color: String
    var x: [Double]
    var y: [Double]
    /// Drawn as dots (sparse series such as validation loss) instead of a line.
    var dots = false
}

/// A vertical line at step `x` (a checkpoint, a restart).
struct ChartMarker {
    var x: Double
    var label: String
    var color: String
}

enum SVGChart {
    static let width = 560.0, height = 250.0
    static let left = 62.0, right = 24.0, top = 48.0, bottom = 36.0
    static let palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf"]

    static func escape(_ s: String) -> String {
        s.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;")
            .replacingOccurrences(of: ">", with: "&gt;").replacingOccurrences(of: "\"", with: "&quot;")
    }

    /// A number for labels: 3 significant digits (whole numbers up to 9999), k/M suffixes for large ones.
    static func label(_ v: Double) -> String {
        let a = abs(v)
        if a == 0 { return "0" }
        if a >= 1e6 { return String(format: "%.3gM", v / 1e6) }
        if a >= 1e4 { return String(format: "%.3gk", v / 1e3) }
        if a >= 1e3 { return String(format: "%.0f", v) }
        if a < 1e-4 { return String(format: "%.1e", v) }
        return String(format: "%.3g", v)
    }

    /// The numbers in a data attribute: full precision (%.9g), comma-separated.
    static func data(_ values: [Double]) -> String {
        values.map { $0.isFinite ? String(format: "%.9g", $0) : "nan" }.joined(separator: ",")
    }

    /// About `count` round tick values covering lo...hi.
    static func ticks(_ lo: Double, _ hi: Double, count: Int = 5) -> [Double] {
        guard hi > lo else { return [lo] }
        let raw = (hi - lo) / Double(count)
        let magnitude = pow(10, floor(log10(raw)))
        let step = [1.0, 2, 2.5, 5, 10].map { $0 * magnitude }.first { $0 >= raw } ?? raw
        var t = ceil(lo / step) * step, out: [Double] = []
        while t <= hi + step * 1e-9 { out.append(abs(t) < step * 1e-9 ? 0 : t); t += step }
        return out
    }

    /// lo...hi of the values with a little headroom; a flat series gets a band around it.
    static func range(_ values: [Double], includeZero: Bool = false) -> (Double, Double) {
        let finite = values.filter(\.isFinite)
        guard var lo = finite.min(), var hi = finite.max() else { return (0, 1) }
        if includeZero { lo = min(lo, 0); hi = max(hi, 0) }
        if hi == lo { let d = hi == 0 ? 1 : abs(hi) * 0.1; return (lo - d, hi + d) }
        let pad = (hi - lo) * 0.05
        return (includeZero && lo == 0 ? 0 : lo - pad, hi + pad)
    }

    struct Frame {
        var x0: Double, x1: Double, y0: Double, y1: Double
        func px(_ x: Double) -> Double {
            SVGChart.left + (x1 == x0 ? 0.5 : (x - x0) / (x1 - x0)) * (SVGChart.width - SVGChart.left - SVGChart.right)
        }
        func py(_ y: Double) -> Double {
            SVGChart.top + (1 - (y - y0) / (y1 - y0)) * (SVGChart.height - SVGChart.top - SVGChart.bottom)
        }
    }

    static func open(id: String, title: String) -> String {
        "<svg id=\"\(id)\" class=\"chart\" viewBox=\"0 0 \(Int(width)) \(Int(height))\" role=\"img\">"
            + "<title>\(escape(title))</title>"
            + "<text x=\"\(left)\" y=\"18\" class=\"ctitle\">\(escape(title))</text>"
    }

    /// Axes, grid lines and tick labels; `rightFrame` adds a second y axis on the right.
    static func axes(_ f: Frame, xLabel: String, yLabel: String, rightFrame: Frame? = nil, rightLabel: String = "",
                     integerX: Bool = true) -> String {
        var s = ""
        let plotBottom = height - bottom, plotRight = width - right
        for t in ticks(f.y0, f.y1) {
            let y = f.py(t)
            s += "<line x1=\"\(left)\" y1=\"\(fmt(y))\" x2=\"\(plotRight)\" y2=\"\(fmt(y))\" class=\"grid\"/>"
            s += "<text x=\"\(left - 6)\" y=\"\(fmt(y + 4))\" class=\"tick\" text-anchor=\"end\">\(label(t))</text>"
        }
        if let r = rightFrame {
            for t in ticks(r.y0, r.y1) {
                s += "<text x=\"\(plotRight + 4)\" y=\"\(fmt(r.py(t) + 4))\" class=\"tick\">\(label(t))</text>"
            }
        }
        var xt = ticks(f.x0, f.x1, count: 6)
        if integerX { xt = Array(Set(xt.map { $0.rounded() })).sorted() }
        for t in xt where t >= f.x0 && t <= f.x1 {
            let x = f.px(t)
            s += "<line x1=\"\(fmt(x))\" y1=\"\(plotBottom)\" x2=\"\(fmt(x))\" y2=\"\(plotBottom + 4)\" class=\"axisline\"/>"
            s += "<text x=\"\(fmt(x))\" y=\"\(plotBottom + 16)\" class=\"tick\" text-anchor=\"middle\">\(label(t))</text>"
        }
        s += "<line x1=\"\(left)\" y1=\"\(plotBottom)\" x2=\"\(plotRight)\" y2=\"\(plotBottom)\" class=\"axisline\"/>"
        s += "<text x=\"\((left + plotRight) / 2)\" y=\"\(height - 4)\" class=\"axis\" text-anchor=\"middle\">\(escape(xLabel))</text>"
        s += "<text x=\"\(left - 4)\" y=\"\(top - 8)\" class=\"axis\" text-anchor=\"end\">\(escape(yLabel))</text>"
        return s
    }

    static func markers(_ markers: [ChartMarker], _ f: Frame) -> String {
        var s = ""
        for m in markers where m.x >= f.x0 && m.x <= f.x1 {
            let x = fmt(f.px(m.x))
            s += "<g class=\"marker\" data-step=\"\(Int(m.x))\"><title>\(escape(m.label)) (step \(Int(m.x)))</title>"
                + "<line x1=\"\(x)\" y1=\"\(top)\" x2=\"\(x)\" y2=\"\(height - bottom)\" stroke=\"\(m.color)\" stroke-dasharray=\"4 3\" stroke-width=\"1.2\"/></g>"
        }
        return s
    }

    static func legend(_ items: [(String, String)]) -> String {
        var s = "", x = width - right
        for (name, color) in items.reversed() {
            let w = Double(name.count) * 6.2 + 18
            x -= w
            s += "<rect x=\"\(fmt(x))\" y=\"25\" width=\"10\" height=\"10\" fill=\"\(color)\"/>"
                + "<text x=\"\(fmt(x + 13))\" y=\"34\" class=\"legend\">\(escape(name))</text>"
        }
        return s
    }

    static func path(_ series: ChartSeries, _ f: Frame, axis: String) -> String {
        let attrs = "data-name=\"\(escape(series.name))\" data-axis=\"\(axis)\" data-x=\"\(data(series.x))\" data-y=\"\(data(series.y))\""
        if series.dots || series.x.count == 1 {
            var s = "<g class=\"series\" \(attrs) fill=\"\(series.color)\">"
            for (x, y) in zip(series.x, series.y) where y.isFinite {
                s += "<circle cx=\"\(fmt(f.px(x)))\" cy=\"\(fmt(f.py(y)))\" r=\"3\"><title>step \(Int(x)): \(label(y))</title></circle>"
            }
            return s + "</g>"
        }
        // A line broken where a value is missing (NaN).
        var d = "", pen = false
        for (x, y) in zip(series.x, series.y) {
            if y.isFinite { d += (pen ? "L" : "M") + "\(fmt(f.px(x))) \(fmt(f.py(y)))"; pen = true } else { pen = false }
        }
        return "<path class=\"series\" \(attrs) d=\"\(d)\" fill=\"none\" stroke=\"\(series.color)\" stroke-width=\"1.6\"/>"
    }

    /// Lines over steps; `rightSeries` use a second y axis (e.g. MFU beside tokens/s). `proportionalRight`: the right
    /// series is the first left one times a constant (MFU is tokens/s × FLOPs per token / peak), so one line is drawn
    /// and the right axis is labelled in its units; the right series' numbers stay in the data attributes.
    static func lines(id: String, title: String, yLabel: String, series: [ChartSeries], rightSeries: [ChartSeries] = [],
                      rightLabel: String = "", proportionalRight: Bool = false, markers ms: [ChartMarker] = [],
                      includeZero: Bool = false) -> String {
        let xs = (series + rightSeries).flatMap(\.x)
        let (y0, y1) = range(series.flatMap(\.y), includeZero: includeZero)
        let f = Frame(x0: xs.min() ?? 0, x1: xs.max() ?? 1, y0: y0, y1: y1)
        var rf: Frame?
        var scale: Double?
        if proportionalRight, let left = series.first, let right = rightSeries.first {
            let ratios = zip(right.y, left.y).map { $0 / $1 }.filter { $0.isFinite && $0 > 0 }.sorted()
            scale = ratios.isEmpty ? nil : ratios[ratios.count / 2]
        }
        if let scale {
            rf = Frame(x0: f.x0, x1: f.x1, y0: y0 * scale, y1: y1 * scale)
        } else if !rightSeries.isEmpty {
            let (r0, r1) = range(rightSeries.flatMap(\.y), includeZero: includeZero)
            rf = Frame(x0: f.x0, x1: f.x1, y0: r0, y1: r1)
        }
        var s = open(id: id, title: title) + axes(f, xLabel: "step", yLabel: yLabel, rightFrame: rf, rightLabel: rightLabel)
        s += markers(ms, f)
        for x in series { s += path(x, f, axis: "left") }
        if let rf {
            for x in rightSeries {
                s += scale == nil ? path(x, rf, axis: "right")
                    : "<g class=\"series\" data-name=\"\(escape(x.name))\" data-axis=\"right\" data-x=\"\(data(x.x))\" data-y=\"\(data(x.y))\"></g>"
            }
        }
        if scale != nil {
            s += "<text x=\"\(width - 2)\" y=\"\(top - 8)\" class=\"axis\" text-anchor=\"end\">\(escape(rightLabel))</text>"
        } else {
            let all = series + rightSeries
            if all.count > 1 { s += legend(all.map { ($0.name, $0.color) }) }
        }
        return s + "</svg>"
    }

    /// Stacked bars over steps (at most `maxBars` bars: consecutive steps are averaged into one).
    static func stackedBars(id: String, title: String, yLabel: String, steps: [Double],
                            layers: [(name: String, color: String, values: [Double])], markers ms: [ChartMarker] = [],
                            maxBars: Int = 160) -> String {
        let n = steps.count
        let per = max(1, (n + maxBars - 1) / maxBars)
        let bins = stride(from: 0, to: n, by: per).map { $0..<min($0 + per, n) }
        func mean(_ v: [Double], _ r: Range<Int>) -> Double { r.reduce(0) { $0 + (v[$1].isFinite ? v[$1] : 0) } / Double(r.count) }
        let totals = bins.map { b in layers.reduce(0) { $0 + mean($1.values, b) } }
        let f = Frame(x0: (steps.first ?? 0) - 0.5 * Double(per), x1: (steps.last ?? 1) + 0.5 * Double(per), y0: 0,
                      y1: (totals.max() ?? 1) * 1.08 + 1e-12)
        var s = open(id: id, title: title) + axes(f, xLabel: "step", yLabel: yLabel) + markers(ms, f)
        let barWidth = max(1, (f.px(f.x0 + Double(per)) - f.px(f.x0)) * 0.8)
        var base = [Double](repeating: 0, count: bins.count)
        for layer in layers {
            s += "<g class=\"series\" data-name=\"\(escape(layer.name))\" data-x=\"\(data(steps))\" data-y=\"\(data(layer.values))\" fill=\"\(layer.color)\">"
            for (i, b) in bins.enumerated() {
                let v = mean(layer.values, b)
                let mid = (steps[b.lowerBound] + steps[b.upperBound - 1]) / 2
                let yTop = f.py(base[i] + v), yBottom = f.py(base[i])
                let what = per == 1 ? "step \(Int(mid))" : "steps \(Int(steps[b.lowerBound]))-\(Int(steps[b.upperBound - 1]))"
                s += "<rect x=\"\(fmt(f.px(mid) - barWidth / 2))\" y=\"\(fmt(yTop))\" width=\"\(fmt(barWidth))\" height=\"\(fmt(max(0, yBottom - yTop)))\">"
                    + "<title>\(what): \(escape(layer.name)) \(label(v))</title></rect>"
                base[i] += v
            }
            s += "</g>"
        }
        return s + legend(layers.map { ($0.name, $0.color) }) + "</svg>"
    }

    /// One bar per category (e.g. per rank).
    static func bars(id: String, title: String, yLabel: String, categories: [String], values: [Double], color: String) -> String {
        let f = Frame(x0: -0.5, x1: Double(categories.count) - 0.5, y0: 0, y1: (values.max() ?? 1) * 1.15 + 1e-12)
        var s = open(id: id, title: title)
        for t in ticks(f.y0, f.y1) {
            s += "<line x1=\"\(left)\" y1=\"\(fmt(f.py(t)))\" x2=\"\(width - right)\" y2=\"\(fmt(f.py(t)))\" class=\"grid\"/>"
                + "<text x=\"\(left - 6)\" y=\"\(fmt(f.py(t) + 4))\" class=\"tick\" text-anchor=\"end\">\(label(t))</text>"
        }
        s += "<text x=\"\(left - 4)\" y=\"\(top - 8)\" class=\"axis\" text-anchor=\"end\">\(escape(yLabel))</text>"
        let w = (f.px(1) - f.px(0)) * 0.7
        s += "<g class=\"series\" data-name=\"\(escape(yLabel))\" data-x=\"\(categories.map(escape).joined(separator: ","))\" data-y=\"\(data(values))\" fill=\"\(color)\">"
        for (i, (c, v)) in zip(categories, values).enumerated() {
            let x = f.px(Double(i))
            s += "<rect x=\"\(fmt(x - w / 2))\" y=\"\(fmt(f.py(v)))\" width=\"\(fmt(w))\" height=\"\(fmt(f.py(0) - f.py(v)))\"><title>\(escape(c)): \(label(v))</title></rect>"
            if categories.count <= 16 {
                s += "<text x=\"\(fmt(x))\" y=\"\(fmt(f.py(v) - 4))\" class=\"tick\" text-anchor=\"middle\">\(label(v))</text>"
            }
            s += "<text x=\"\(fmt(x))\" y=\"\(height - bottom + 16)\" class=\"tick\" text-anchor=\"middle\">\(escape(c))</text>"
        }
        return s + "</g><line x1=\"\(left)\" y1=\"\(height - bottom)\" x2=\"\(width - right)\" y2=\"\(height - bottom)\" class=\"axisline\"/></svg>"
    }

    /// Tokens per expert (rows) over steps (columns; at most `maxColumns`, consecutive steps averaged), coloured by
    /// load relative to a perfectly balanced expert: white at 1×, blue below, red above (2× and more: full red).
    static func heatmap(id: String, title: String, steps: [Double], counts: [[Double]], maxColumns: Int = 200,
                        markers ms: [ChartMarker] = []) -> String {
        let experts = counts.first?.count ?? 0
        let n = steps.count
        let per = max(1, (n + maxColumns - 1) / maxColumns)
        let bins = stride(from: 0, to: n, by: per).map { $0..<min($0 + per, n) }
        let h = max(height, top + bottom + Double(experts) * 12)
        let f = Frame(x0: (steps.first ?? 0) - 0.5 * Double(per), x1: (steps.last ?? 1) + 0.5 * Double(per), y0: 0, y1: 1)
        let cellW = f.px(f.x0 + Double(per)) - f.px(f.x0), cellH = (h - top - bottom) / Double(max(experts, 1))
        var s = "<svg id=\"\(id)\" class=\"chart wide\" viewBox=\"0 0 \(Int(width)) \(Int(h))\" role=\"img\">"
            + "<title>\(escape(title))</title><text x=\"\(left)\" y=\"18\" class=\"ctitle\">\(escape(title))</text>"
        s += "<g class=\"series\" data-name=\"tokens per expert\" data-x=\"\(data(steps))\" data-y=\"\(data(counts.flatMap { $0 }))\" data-experts=\"\(experts)\">"
        for b in bins {
            let mid = (steps[b.lowerBound] + steps[b.upperBound - 1]) / 2
            for e in 0..<experts {
                let v = b.reduce(0) { $0 + counts[$1][e] } / Double(b.count)
                let mean = b.reduce(0) { $0 + counts[$1].reduce(0, +) } / Double(b.count * experts)
                let ratio = mean > 0 ? v / mean : 1
                s += "<rect x=\"\(fmt(f.px(mid) - cellW / 2))\" y=\"\(fmt(top + Double(e) * cellH))\" width=\"\(fmt(cellW + 0.3))\" height=\"\(fmt(cellH + 0.3))\" fill=\"\(loadColor(ratio))\">"
                    + "<title>step \(Int(mid)), expert \(e): \(label(v)) tokens (\(String(format: "%.2f", ratio))× balanced)</title></rect>"
            }
        }
        s += "</g>"
        for e in 0..<experts where experts <= 16 || e % (experts / 8) == 0 {
            s += "<text x=\"\(left - 6)\" y=\"\(fmt(top + (Double(e) + 0.5) * cellH + 4))\" class=\"tick\" text-anchor=\"end\">e\(e)</text>"
        }
        var xt = ticks(steps.first ?? 0, steps.last ?? 1, count: 6).map { $0.rounded() }
        xt = Array(Set(xt)).sorted()
        for t in xt where t >= (steps.first ?? 0) && t <= (steps.last ?? 0) {
            s += "<text x=\"\(fmt(f.px(t)))\" y=\"\(fmt(h - bottom + 16))\" class=\"tick\" text-anchor=\"middle\">\(label(t))</text>"
        }
        for m in ms where m.x >= f.x0 && m.x <= f.x1 {
            s += "<line x1=\"\(fmt(f.px(m.x)))\" y1=\"\(top)\" x2=\"\(fmt(f.px(m.x)))\" y2=\"\(fmt(h - bottom))\" stroke=\"\(m.color)\" stroke-dasharray=\"4 3\"><title>\(escape(m.label))</title></line>"
        }
        s += "<text x=\"\((left + width - right) / 2)\" y=\"\(fmt(h - 4))\" class=\"axis\" text-anchor=\"middle\">step</text>"
        // Colour key.
        let keyX = width - right - 150
        for (i, r) in [0.0, 0.5, 1.0, 1.5, 2.0].enumerated() {
            s += "<rect x=\"\(fmt(keyX + Double(i) * 30))\" y=\"8\" width=\"30\" height=\"10\" fill=\"\(loadColor(r))\" stroke=\"#ccc\" stroke-width=\"0.5\"/>"
                + "<text x=\"\(fmt(keyX + Double(i) * 30 + 15))\" y=\"28\" class=\"tick\" text-anchor=\"middle\">\(r == 2 ? "≥2×" : String(format: "%.1f×", r))</text>"
        }
        return s + "</svg>"
    }

    /// White at a balanced load (1), towards blue for idle experts (0), towards red for hot ones (2 and more).
    static func loadColor(_ ratio: Double) -> String {
        let t = max(-1, min(1, ratio - 1))
        let (r, g, b): (Double, Double, Double) = t < 0
            ? (255 + t * (255 - 49), 255 + t * (255 - 104), 255 + t * (255 - 176))
            : (255 - t * (255 - 200), 255 - t * (255 - 40), 255 - t * (255 - 40))
        return String(format: "#%02x%02x%02x", Int(r.rounded()), Int(g.rounded()), Int(b.rounded()))
    }

    static func fmt(_ v: Double) -> String { String(format: "%.1f", v) }
}
