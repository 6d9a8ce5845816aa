import Foundation
import XCTest

/// Runs the titan binary: the release build when TITAN_BIN names it (scripts/test.sh does),
/// else the debug build next to this test bundle.
enum Titan {
    static var path: String {
        if let bin = ProcessInfo.processInfo.environment["TITAN_BIN"], !bin.isEmpty { return bin }
        return URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("titan").path
    }

    struct Run { var status: Int32; var stdout: String; var stderr: String }

    /// Runs titan with `arguments`; `whileRunning` gets its pid once it started.
    @discardableResult
    /// `environment` is added over the test's own (and over OPENBLAS_NUM_THREADS=1).
    /// `directory`: its working directory (default: the test's).
    static func run(_ arguments: [String], environment extra: [String: String] = [:], directory: String? = nil,
                    whileRunning: ((Int32) -> Void)? = nil) throws -> Run {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: path)
        p.arguments = arguments
        if let directory { p.currentDirectoryURL = URL(fileURLWithPath: directory) }
        var env = ProcessInfo.processInfo.environment
        env["OPENBLAS_NUM_THREADS"] = "1"
        env.merge(extra) { $1 }
        p.environment = env
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        try p.run()
        // Drain both pipes while the job runs, so a chatty rank never blocks on a full pipe.
        // Each box is written by its reader only, and read after `readers.wait()`.
        final class Drained: @unchecked Sendable { var data = Data() }
        let outData = Drained(), errData = Drained()
        let readers = DispatchGroup()
        DispatchQueue.global().async(group: readers) { outData.data = out.fileHandleForReading.readDataToEndOfFile() }
        DispatchQueue.global().async(group: readers) { errData.data = err.fileHandleForReading.readDataToEndOfFile() }
        whileRunning?(p.processIdentifier)
        p.waitUntilExit()
        readers.wait()
        return Run(status: p.terminationStatus, stdout: String(decoding: outData.data, as: UTF8.self),
                   stderr: String(decoding: errData.data, as: UTF8.self))
    }
}

extension XCTestCase {
    /// A fresh run folder, removed after the test.
    func temporaryFolder() -> String {
        let path = NSTemporaryDirectory() + "titan-test-\(UUID().uuidString.prefix(8))"
        addTeardownBlock { try? FileManager.default.removeItem(atPath: path) }
        return path
    }
}
