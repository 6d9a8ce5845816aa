// What rank 0 shows on the console besides the per-step lines: on a terminal a progress line (step, steps/s, ETA)
// redrawn in place, and at the end of the run a summary. The per-step lines stay: they go to the log, and they are
// the whole console output when it is not a terminal (CI, pipes).

import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A line the console redraws in place: `log(progressLinePrefix + text)`. The launcher (and a rank printing to its own
/// terminal) shows it after a carriage return, below the other lines, and never writes it to a log file; an empty one
/// removes it.
public let progressLinePrefix = "\r"

/// Whether this rank's console is a terminal: the launcher says so in TITAN_PROGRESS (a rank's stdout is the
/// launcher's pipe); a rank without a launcher looks at its own stdout.
public func consoleIsTerminal() -> Bool {
    if let flag = ProcessInfo.processInfo.environment["TITAN_PROGRESS"] { return flag == "1" }
    return isatty(STDOUT_FILENO) != 0
}

final class ConsoleProgress {
    let firstStep: Int, lastStep: Int
    let dumpFolder: String
    let log: (String) -> Void
    let showsProgress: Bool
    /// The progress line appears once the run has taken this long (short runs print only their step lines).
    static let progressAfterSeconds = 3.0
    private let start = Date()
    private var lastDraw = Date.distantPast
    private var rows: [(step: Int, loss: Double, tokensPerSecond: Double, mfu: Double?)] = []
    private var peakRSS: Double?

    init(firstStep: Int, lastStep: Int, dumpFolder: String, log: @escaping (String) -> Void) {
        self.firstStep = firstStep
        self.lastStep = lastStep
        self.dumpFolder = dumpFolder
        self.log = log
        showsProgress = consoleIsTerminal()
    }

    func line(_ text: String) { log(text) }

    func record(_ m: StepMetrics, peakRSSMegabytes: Double?) {
        rows.append((m.step, m.loss, m.tokens_per_sec, m["mfu"]))
        if let p = peakRSSMegabytes { peakRSS = max(peakRSS ?? 0, p) }
        let now = Date(), elapsed = now.timeIntervalSince(start)
        guard showsProgress, elapsed >= Self.progressAfterSeconds, now.timeIntervalSince(lastDraw) >= 0.2 || m.step == lastStep
        else { return }
        lastDraw = now
        log(progressLinePrefix + Self.progressText(step: m.step, firstStep: firstStep, lastStep: lastStep, elapsed: elapsed, loss: m.loss))
    }

    /// e.g. "[##########..........]  50/100  4.12 steps/s  ETA 0:12  loss 2.3456"
    static func progressText(step: Int, firstStep: Int, lastStep: Int, elapsed: Double, loss: Double) -> String {
        let done = step - firstStep + 1, total = max(lastStep - firstStep + 1, 1)
        let rate = Double(done) / max(elapsed, 1e-9)
        let width = 20, filled = min(width, width * done / total)
        let bar = String(repeating: "#", count: filled) + String(repeating: ".", count: width - filled)
        let eta = Double(lastStep - step) / max(rate, 1e-9)
        return "[\(bar)] \(step)/\(lastStep)  \(String(format: "%.2f", rate)) steps/s  ETA \(duration(eta))  loss \(String(format: "%.4f", loss))"
    }

    static func duration(_ seconds: Double) -> String {
        let s = Int(seconds.rounded())
        return s >= 3600 ? String(format: "%d:%02d:%02d", s / 3600, s / 60 % 60, s % 60) : String(format: "%d:%02d", s / 60, s % 60)
    }

    /// The first steps (start-up, first touches of memory) are not steady: the means skip the first tenth of the run,
    /// at least its first step.
    static func steadyRows<T>(_ rows: [T]) -> ArraySlice<T> {
        rows.count > 1 ? rows.dropFirst(max(1, rows.count / 10)) : rows[...]
    }

    func summary(report: String?) {
        if showsProgress { log(progressLinePrefix) }   // the summary replaces the progress line
        guard let last = rows.last else { return }
        let steady = Self.steadyRows(rows)
        let meanTPS = steady.reduce(0) { $0 + $1.tokensPerSecond } / Double(steady.count)
        let mfus = steady.compactMap(\.mfu)
        var text = "summary: steps \(rows.first!.step)-\(last.step) in \(Self.duration(Date().timeIntervalSince(start)))"
            + (firstStep > 1 ? " (resumed after step \(firstStep - 1))" : "") + ", "
            + "final loss \(String(format: "%.4f", last.loss)); steady steps \(steady.first!.step)-\(last.step): "
            + "\(String(format: "%.0f", meanTPS)) tokens/s"
        if !mfus.isEmpty { text += ", mfu \(String(format: "%.1f", mfus.reduce(0, +) / Double(mfus.count)))%" }
        if let peakRSS { text += "; peak memory \(String(format: "%.0f", peakRSS)) MiB (largest rank)" }
        log(text)
        if let report { log("report: \(report)") }
    }
}
