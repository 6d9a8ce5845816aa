// Per-step metrics: DUMP/metrics.jsonl (one JSON object per line, written by rank 0) and a
// short console line. Keys come out in a fixed order so runs diff cleanly.

import Config
import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

public struct StepMetrics {
    public var step: Int
    public var loss: Double
    public var grad_norm: Double
    public var lr: Double
    public var tokens_per_sec: Double
    public var step_time_s: Double
    /// Extra numbers, written after the required keys in this order (e.g. max_rss_mb).
    public var extra: [(key: String, value: Double)] = []
    /// Extra arrays, e.g. ("expert_load_layer0", tokens per expert).
    public var extraArrays: [(key: String, values: [Double])] = []

    public init(step: Int, loss: Double, grad_norm: Double, lr: Double, tokens_per_sec: Double, step_time_s: Double,
                extra: [(key: String, value: Double)] = [], extraArrays: [(key: String, values: [Double])] = []) {
        self.step = step; self.loss = loss; self.grad_norm = grad_norm; self.lr = lr
        self.tokens_per_sec = tokens_per_sec; self.step_time_s = step_time_s
        self.extra = extra; self.extraArrays = extraArrays
    }

    /// One JSON object, no newline. Non-finite numbers are written as null (JSON has no NaN).
    public var jsonLine: String {
        var items: [String] = [
            "\"step\": \(step)",
            "\"loss\": \(jsonNumber(loss))",
            "\"grad_norm\": \(jsonNumber(grad_norm))",
            "\"lr\": \(jsonNumber(lr))",
            "\"tokens_per_sec\": \(jsonNumber(tokens_per_sec))",
            "\"step_time_s\": \(jsonNumber(step_time_s))",
        ]
        for (k, v) in extra { items.append("\(jsonString(k)): \(jsonNumber(v))") }
        for (k, vs) in extraArrays { items.append("\(jsonString(k)): [\(vs.map(jsonNumber).joined(separator: ", "))]") }
        return "{" + items.joined(separator: ", ") + "}"
    }

    /// e.g. "step   12  loss 3.4512  grad_norm 0.8123  lr 3.00e-04  tok/s 12,345  0.123s  rss 123MB"
    public var consoleLine: String {
        var s = "step \(String(step).leftPad(4))  loss \(String(format: "%.4f", loss))  grad_norm \(String(format: "%.4f", grad_norm))"
        s += "  lr \(String(format: "%.2e", lr))  tok/s \(String(format: "%.0f", tokens_per_sec))  \(String(format: "%.3f", step_time_s))s"
        if let rss = extra.first(where: { $0.key == "max_rss_mb" }) { s += "  rss \(String(format: "%.0f", rss.value))MB" }
        return s
    }
}

extension String {
    fileprivate func leftPad(_ n: Int) -> String { count >= n ? self : String(repeating: " ", count: n - count) + self }
}

/// Appends one line per step to DUMP/metrics.jsonl and flushes it, so a crashed run keeps
/// every finished step and `tail -f` works.
public final class MetricsWriter {
    public let path: String
    private let handle: FileHandle

    /// Rewrites `path` without the lines of steps after `step` (temp file + rename); no file, no-op.
    public static func dropSteps(after step: Int, path: String) throws {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return }
        let kept = text.split(separator: "\n").filter { line in
            guard let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
                  let s = object["step"] as? Int else { return true }
            return s <= step
        }
        let tmp = path + ".tmp"
        try Data((kept.joined(separator: "\n") + (kept.isEmpty ? "" : "\n")).utf8).write(to: URL(fileURLWithPath: tmp))
        guard rename(tmp, path) == 0 else { throw CocoaError(.fileWriteUnknown, userInfo: [NSFilePathErrorKey: path]) }
    }

    /// Creates the folder if needed. `append` keeps existing lines (resume); otherwise truncates.
    public init(path: String, append: Bool = false) throws {
        self.path = path
        let url = URL(fileURLWithPath: path)
        try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
        if append && FileManager.default.fileExists(atPath: path) {
            handle = try FileHandle(forWritingTo: url)
            handle.seekToEndOfFile()
        } else {
            guard FileManager.default.createFile(atPath: path, contents: nil) else {
                throw CocoaError(.fileWriteUnknown, userInfo: [NSFilePathErrorKey: path])
            }
            handle = try FileHandle(forWritingTo: url)
        }
    }

    /// DUMP/metrics.jsonl
    public convenience init(dumpFolder: String, append: Bool = false) throws {
        try self.init(path: URL(fileURLWithPath: dumpFolder).appendingPathComponent("metrics.jsonl").path, append: append)
    }

    public func write(_ m: StepMetrics) {
        handle.write((m.jsonLine + "\n").data(using: .utf8)!)
        handle.synchronizeFile()
    }

    deinit { handle.closeFile() }
}

/// Peak resident set size of this process in MiB (getrusage: KiB on Linux, bytes on macOS).
public func maxRSSMegabytes() -> Double {
    var u = rusage()
    #if os(Linux)
    getrusage(RUSAGE_SELF.rawValue, &u)
    return Double(u.ru_maxrss) / 1024
    #else
    getrusage(RUSAGE_SELF, &u)
    return Double(u.ru_maxrss) / (1024 * 1024)
    #endif
}

/// Write the resolved config to DUMP/config.json.
public func writeConfigJSON(_ cfg: TrainerConfig, dumpFolder: String) throws {
    let dir = URL(fileURLWithPath: dumpFolder)
    try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    try cfg.json.write(to: dir.appendingPathComponent("config.json"), atomically: true, encoding: .utf8)
}

/// Current resident set size of this process in MiB (/proc/self/statm on Linux; the peak elsewhere).
public func currentRSSMegabytes() -> Double {
    #if os(Linux)
    guard let text = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8) else { return maxRSSMegabytes() }
    let parts = text.split(separator: " ")
    guard parts.count >= 2, let pages = Int(parts[1]) else { return maxRSSMegabytes() }
    return Double(pages * Int(sysconf(Int32(_SC_PAGESIZE)))) / 1_048_576
    #else
    return maxRSSMegabytes()
    #endif
}
