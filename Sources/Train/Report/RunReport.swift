// `titan report DUMP`: DUMP/report.html, one self-contained page (inline CSS and SVG; no script, font or any other
// resource from elsewhere) built from what the run folder holds: metrics.jsonl, config.json, run.json, the checkpoint
// folder. Rank 0 also writes it at the end of a run.

import Foundation

public enum RunReport {
    public enum ReportError: Error, CustomStringConvertible {
        case noMetrics(String)
        public var description: String {
            switch self {
            case .noMetrics(let path): return "no metrics rows in \(path) (is this a run folder? --job.dump_folder names it)"
            }
        }
    }

    /// Writes DUMP/report.html; returns its path.
    @discardableResult
    public static func write(dumpFolder: String) throws -> String {
        let html = try render(dumpFolder: dumpFolder)
        let path = dumpFolder + "/report.html"
        try Data(html.utf8).write(to: URL(fileURLWithPath: path), options: .atomic)
        return path
    }

    /// metrics.jsonl's rows, by step (a restarted run's file holds every step once; the last line of a step wins).
    static func rows(_ path: String) throws -> [[String: Any]] {
        let text = (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
        var byStep: [Int: [String: Any]] = [:]
        for line in text.split(separator: "\n") {
            guard let o = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
                  let step = (o["step"] as? NSNumber)?.intValue else { continue }
            byStep[step] = o
        }
        guard !byStep.isEmpty else { throw ReportError.noMetrics(path) }
        return byStep.keys.sorted().map { byStep[$0]! }
    }

    static func number(_ row: [String: Any], _ key: String) -> Double {
        (row[key] as? NSNumber)?.doubleValue ?? .nan
    }

    /// Checkpoints still in the checkpoint folder: (step, time saved).
    static func checkpoints(dumpFolder: String, config: [String: Any]) -> [(step: Int, time: Date?)] {
        var folder = ((config["checkpoint"] as? [String: Any])?["folder"] as? String) ?? "checkpoint"
        if !folder.hasPrefix("/") { folder = dumpFolder + "/" + folder }
        let names = (try? FileManager.default.contentsOfDirectory(atPath: folder)) ?? []
        return names.compactMap { name -> (Int, Date?)? in
            guard name.hasPrefix("step-"), let step = Int(name.dropFirst(5)) else { return nil }   // not step-N-hf
            let attrs = try? FileManager.default.attributesOfItem(atPath: folder + "/" + name + "/metadata.json")
            return (step, attrs?[.modificationDate] as? Date)
        }.sorted { $0.0 < $1.0 }
    }

    public static func render(dumpFolder: String) throws -> String {
        let rows = try rows(dumpFolder + "/metrics.jsonl")
        let config = (FileManager.default.contents(atPath: dumpFolder + "/config.json"))
            .flatMap { try? JSONSerialization.jsonObject(with: $0) as? [String: Any] } ?? [:]
        let info = RunInfo.read(dumpFolder: dumpFolder)
        let steps = rows.map { number($0, "step") }
        let col = { (key: String) in rows.map { number($0, key) } }
        let has = { (key: String) in rows.contains { $0[key] is NSNumber } }

        // Markers: checkpoints (green) and restarts (red, at the first step an attempt trained).
        let saved = checkpoints(dumpFolder: dumpFolder, config: config)
        var markers = saved.map { ChartMarker(x: Double($0.step), label: "checkpoint step-\($0.step)", color: "#2ca02c") }
        for a in info?.attempts ?? [] where a.attempt > 0 {
            markers.append(ChartMarker(x: Double(a.resumed_after_step + 1),
                                       label: "restart \(a.attempt): resumed after step \(a.resumed_after_step)", color: "#d62728"))
        }

        var charts: [String] = []
        var lossSeries = [ChartSeries(name: "loss", color: SVGChart.palette[0], x: steps, y: col("loss"))]
        if has("validation_loss") {
            let v = rows.filter { $0["validation_loss"] is NSNumber }
            lossSeries.append(ChartSeries(name: "validation loss", color: SVGChart.palette[1], x: v.map { number($0, "step") },
                                          y: v.map { number($0, "validation_loss") }, dots: v.count < 40))
        }
        charts.append(SVGChart.lines(id: "chart-loss", title: "Loss", yLabel: "loss", series: lossSeries, markers: markers))
        charts.append(SVGChart.lines(id: "chart-grad-norm", title: "Gradient norm (before clipping)", yLabel: "grad norm",
                                     series: [ChartSeries(name: "grad_norm", color: SVGChart.palette[4], x: steps, y: col("grad_norm"))],
                                     markers: markers, includeZero: true))
        charts.append(SVGChart.lines(id: "chart-lr", title: "Learning rate", yLabel: "lr",
                                     series: [ChartSeries(name: "lr", color: SVGChart.palette[2], x: steps, y: col("lr"))],
                                     markers: markers, includeZero: true))
        charts.append(SVGChart.lines(id: "chart-throughput", title: "Throughput (left) and MFU (right axis)", yLabel: "tokens/s",
                                     series: [ChartSeries(name: "tokens/s", color: SVGChart.palette[0], x: steps, y: col("tokens_per_sec"))],
                                     rightSeries: has("mfu") ? [ChartSeries(name: "MFU % (right axis)", color: SVGChart.palette[1], x: steps, y: col("mfu"))] : [],
                                     rightLabel: "MFU %", proportionalRight: true, markers: markers, includeZero: true))
        let stepTime = col("step_time_s"), wait = has("comm_wait_s") ? col("comm_wait_s") : stepTime.map { _ in 0 }
        charts.append(SVGChart.stackedBars(id: "chart-step-time", title: "Step time: compute and communication wait (rank 0)",
                                           yLabel: "seconds", steps: steps,
                                           layers: [("compute", SVGChart.palette[0], zip(stepTime, wait).map { max(0, $0 - $1) }),
                                                    ("comm wait", SVGChart.palette[3], wait)], markers: markers))
        let kinds = ["all_gather", "reduce_scatter", "all_reduce", "all_to_all"].filter { has("comm_sent_mb_" + $0) }
        if !kinds.isEmpty {
            charts.append(SVGChart.stackedBars(id: "chart-comm", title: "Payload sent per rank and step, by collective",
                                               yLabel: "MiB", steps: steps,
                                               layers: kinds.enumerated().map { (i, k) in (k, SVGChart.palette[[0, 1, 2, 4][i]], col("comm_sent_mb_" + k)) },
                                               markers: markers))
        }
        if has("comm_inter_host_mb") {
            charts.append(SVGChart.lines(id: "chart-inter-host", title: "Payload sent to other hosts per rank and step", yLabel: "MiB",
                                         series: [ChartSeries(name: "comm_inter_host_mb", color: SVGChart.palette[3], x: steps,
                                                              y: col("comm_inter_host_mb"))],
                                         markers: markers, includeZero: true))
        }
        if let perRank = rows.last?["max_rss_mb_per_rank"] as? [NSNumber] {
            charts.append(SVGChart.bars(id: "chart-memory", title: "Peak memory per rank (RSS at the last step)", yLabel: "MiB",
                                        categories: perRank.indices.map { "rank \($0)" }, values: perRank.map(\.doubleValue),
                                        color: SVGChart.palette[5]))
        } else if has("max_rss_mb") {
            charts.append(SVGChart.lines(id: "chart-memory", title: "Peak memory (rank 0)", yLabel: "MiB",
                                         series: [ChartSeries(name: "max_rss_mb", color: SVGChart.palette[5], x: steps, y: col("max_rss_mb"))],
                                         markers: markers, includeZero: true))
        }
        var heatmaps: [String] = []
        for layer in 0..<256 {
            let key = "expert_load_layer\(layer)"
            guard rows.contains(where: { $0[key] != nil }) else { if layer > 64 { break } else { continue } }
            let withLoad = rows.filter { $0[key] is [NSNumber] }
            heatmaps.append(SVGChart.heatmap(id: "chart-expert-load-layer\(layer)", title: "Expert load, layer \(layer): tokens per expert",
                                             steps: withLoad.map { number($0, "step") },
                                             counts: withLoad.map { ($0[key] as! [NSNumber]).map(\.doubleValue) }, markers: markers))
        }
        return page(dumpFolder: dumpFolder, rows: rows, config: config, info: info, checkpoints: saved,
                    charts: charts, heatmaps: heatmaps)
    }

    static func esc(_ s: String) -> String { SVGChart.escape(s) }

    static func page(dumpFolder: String, rows: [[String: Any]], config: [String: Any], info: RunInfo?,
                     checkpoints: [(step: Int, time: Date?)], charts: [String], heatmaps: [String]) -> String {
        let last = rows.last!
        let steady = Array(ConsoleProgress.steadyRows(rows))
        func mean(_ key: String) -> Double? {
            let v = steady.map { number($0, key) }.filter(\.isFinite)
            return v.isEmpty ? nil : v.reduce(0, +) / Double(v.count)
        }
        let training = config["training"] as? [String: Any] ?? [:], model = config["model"] as? [String: Any] ?? [:]
        let parallelism = config["parallelism"] as? [String: Any] ?? [:]
        func cfg(_ d: [String: Any], _ k: String) -> String { d[k].map { "\($0)" } ?? "?" }

        var summary: [(String, String)] = [
            ("steps", "\(Int(number(rows.first!, "step")))–\(Int(number(last, "step")))"),
            ("final loss", String(format: "%.4f", number(last, "loss"))),
        ]
        if last["validation_loss"] is NSNumber { summary.append(("validation loss", String(format: "%.4f", number(last, "validation_loss")))) }
        if let t = mean("tokens_per_sec") { summary.append(("tokens/s (steady)", String(format: "%.0f", t))) }
        if let m = mean("mfu") { summary.append(("MFU (steady)", String(format: "%.1f%%", m))) }
        if let w = mean("comm_wait_s"), let s = mean("step_time_s"), s > 0 { summary.append(("comm wait share", String(format: "%.0f%%", 100 * w / s))) }
        if let mem = (last["max_rss_mb_per_rank"] as? [NSNumber])?.map(\.doubleValue).max() ?? (last["max_rss_mb"] as? NSNumber)?.doubleValue {
            summary.append(("peak memory", String(format: "%.0f MiB", mem)))
        }
        summary.append(("restarts", "\(max(0, (info?.attempts.count ?? 1) - 1))"))
        summary.append(("checkpoints", checkpoints.isEmpty ? "none" : checkpoints.map { "\($0.step)" }.joined(separator: ", ")))

        var header: [(String, String)] = [
            ("model", info?.model ?? "\(cfg(model, "name"))/\(cfg(model, "flavor"))"),
            ("mesh", info?.attempts.last?.mesh ?? "shard \(cfg(parallelism, "data_parallel_shard_degree")), expert parallel \(cfg(parallelism, "expert_parallel_degree"))"),
            ("batch", "\(cfg(training, "local_batch_size")) sequences × \(cfg(training, "seq_len")) tokens per data-parallel rank"
                + ((training["global_batch_size"] as? Int ?? -1) > 0 ? ", global batch \(cfg(training, "global_batch_size")) sequences" : "")),
            ("precision", "params \(cfg(training, "mixed_precision_param")), reduce \(cfg(training, "mixed_precision_reduce"))"),
        ]
        if let info {
            header.append(("compute", info.compute))
            header.append(("MFU peak", String(format: "%.3f TFLOP/s", info.peak_tflops) + (info.peak_measured ? " (GEMMs timed at start)" : " (--metrics.peak_tflops)")
                           + String(format: "; %.4g model FLOPs/token", info.flops_per_token)))
            if let a = info.attempts.last { header.append(("topology", (a.topology_path ?? "local, \(a.world_size) ranks") + " on \(a.host)")) }
            for (k, v) in info.versions.sorted(by: { $0.key < $1.key }) { header.append((k, v)) }
        }

        let dateFormat = DateFormatter()
        dateFormat.dateFormat = "yyyy-MM-dd HH:mm:ss 'UTC'"
        dateFormat.timeZone = TimeZone(identifier: "UTC")
        var timeline: [(Double, String)] = []
        for a in info?.attempts ?? [] {
            timeline.append((a.started, a.attempt == 0 ? "attempt 1 started" + (a.resumed_after_step > 0 ? " (resumed after step \(a.resumed_after_step))" : "")
                             : "restart \(a.attempt): attempt \(a.attempt + 1) resumed after step \(a.resumed_after_step)"))
        }
        for c in checkpoints { if let t = c.time { timeline.append((t.timeIntervalSince1970, "checkpoint step-\(c.step) saved")) } }

        let topologyText = info?.attempts.last?.topology
        var h = """
            <!DOCTYPE html>
            <html lang="en"><head><meta charset="utf-8"><title>SwiftTitan run report: \(esc(dumpFolder))</title>
            <style>
            body { font: 14px/1.45 -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #222; margin: 24px auto; max-width: 1180px; padding: 0 16px; }
            h1 { font-size: 22px; margin: 0 0 2px; } h2 { font-size: 16px; margin: 26px 0 8px; border-bottom: 1px solid #e3e3e3; padding-bottom: 4px; }
            .sub { color: #666; margin-bottom: 14px; }
            .cards { display: flex; flex-wrap: wrap; gap: 10px; margin: 12px 0; }
            .card { border: 1px solid #e3e3e3; border-radius: 6px; padding: 8px 12px; min-width: 110px; background: #fafafa; }
            .card .k { color: #666; font-size: 12px; } .card .v { font-size: 18px; font-weight: 600; }
            table.kv { border-collapse: collapse; width: 100%; } table.kv td { padding: 3px 8px; vertical-align: top; border-bottom: 1px solid #f0f0f0; }
            table.kv td:first-child { color: #666; width: 130px; white-space: nowrap; }
            .grid { display: grid; grid-template-columns: 1fr 1fr; gap: 14px; }
            svg.chart { width: 100%; height: auto; border: 1px solid #ececec; border-radius: 6px; background: #fff; }
            svg .grid { stroke: #eee; } svg .axisline { stroke: #999; } svg .tick { font-size: 10px; fill: #555; }
            svg .axis { font-size: 11px; fill: #555; } svg .ctitle { font-size: 13px; font-weight: 600; fill: #222; } svg .legend { font-size: 11px; fill: #333; }
            .heat { display: grid; grid-template-columns: 1fr 1fr; gap: 14px; }
            .note { color: #666; font-size: 12px; } pre { background: #f6f6f6; padding: 8px; font-size: 12px; overflow: auto; }
            details { margin: 8px 0; }
            </style></head><body>
            <h1>SwiftTitan run report</h1>
            <div class="sub">\(esc(dumpFolder)) · \(rows.count) steps · written \(esc(dateFormat.string(from: Date())))</div>
            <div class="cards">
            """
        for (k, v) in summary { h += "<div class=\"card\"><div class=\"k\">\(esc(k))</div><div class=\"v\">\(esc(v))</div></div>\n" }
        h += "</div>\n<h2>Run</h2>\n<table class=\"kv\">\n"
        for (k, v) in header { h += "<tr><td>\(esc(k))</td><td>\(esc(v))</td></tr>\n" }
        h += "</table>\n"
        h += "<p class=\"note\">Steady: the means skip the first tenth of the steps. Dashed lines: <span style=\"color:#2ca02c\">checkpoints</span>, "
            + "<span style=\"color:#d62728\">restarts</span>. Hover a point or bar for its value.</p>\n"
        h += "<h2>Training</h2>\n<div class=\"grid\">\n" + charts.joined(separator: "\n") + "\n</div>\n"
        if !heatmaps.isEmpty {
            h += "<h2>Expert load</h2>\n<p class=\"note\">Tokens routed to each expert over the global batch, relative to a balanced "
                + "load: white is balanced, blue under-used, red overloaded.</p>\n<div class=\"heat\">\n" + heatmaps.joined(separator: "\n") + "\n</div>\n"
        }
        if !timeline.isEmpty {
            h += "<h2>Timeline</h2>\n<table class=\"kv\">\n"
            for (t, what) in timeline.sorted(by: { $0.0 < $1.0 }) {
                h += "<tr><td>\(esc(dateFormat.string(from: Date(timeIntervalSince1970: t))))</td><td>\(esc(what))</td></tr>\n"
            }
            h += "</table>\n"
        }
        if let topologyText { h += "<details><summary>Topology file</summary><pre>\(esc(topologyText))</pre></details>\n" }
        if let data = try? JSONSerialization.data(withJSONObject: config, options: [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]) {
            h += "<details><summary>Resolved config (config.json)</summary><pre>\(esc(String(decoding: data, as: UTF8.self)))</pre></details>\n"
        }
        return h + "</body></html>\n"
    }
}
