import Foundation
import XCTest

/// The collective suite and the launcher with real rank processes over real sockets.
final class CollectiveProcessTests: XCTestCase {
    func testSuitePassesOnTwoThreeAndFourProcesses() throws {
        for n in [2, 3, 4] {
            let dump = temporaryFolder()
            let r = try Titan.run(["launch", "--ranks", "\(n)", "--dump-folder", dump, "--",
                                    "collectives", "--comm.timeout_seconds", "60"])
            XCTAssertEqual(r.status, 0, "world \(n): \(r.stderr.suffix(2000))")
            XCTAssertFalse(FileManager.default.fileExists(atPath: dump + "/flight"), "ranks that finish write no flight record")
            let last = r.stdout.split(separator: "\n").last.map(String.init) ?? ""
            XCTAssertEqual(last, "[rank 0] 213 passed, 0 failed", "world \(n)")
            XCTAssertTrue(r.stdout.contains("PASS all_to_all_v world n=\(n) count~\((16 << 20) / 4 / n)"), "world \(n) ran the 16 MiB cases")
        }
    }

    /// Each rank process runs on its block of CPUs, every thread of it: the rank reports the union of its threads'
    /// masks, read back after its communicator started. Two BLAS threads per rank make OpenBLAS start a pool thread
    /// before `main`, which only a process spawned bound covers. Expected: this test's own CPUs (read from /proc, not
    /// through the code under test) cut into blocks of consecutive ranks.
    func testRanksRunOnTheirCPUBlock() throws {
        #if !os(Linux)
        throw XCTSkip("CPU binding is Linux only")
        #else
        func parse(_ list: Substring) -> [Int] {
            list.split(separator: ",").flatMap { part -> [Int] in
                let b = part.split(separator: "-").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) }
                return Array(b[0]...b[b.count - 1])
            }
        }
        let status = try String(contentsOfFile: "/proc/self/status", encoding: .utf8)
        let listLine = try XCTUnwrap(status.split(separator: "\n").first { $0.hasPrefix("Cpus_allowed_list:") })
        let cpus = parse(listLine.split(separator: ":")[1])
        try XCTSkipIf(cpus.count < 2, "binding needs at least two CPUs")
        let n = 3
        for bind in ["block", "none"] {
            let dump = temporaryFolder()
            let r = try Titan.run(["launch", "--ranks", "\(n)", "--cpu-bind", bind, "--dump-folder", dump, "--",
                                   "collectives", "--comm.timeout_seconds", "60"], environment: ["OPENBLAS_NUM_THREADS": "2"])
            XCTAssertEqual(r.status, 0, String(r.stderr.suffix(2000)))
            for rank in 0..<n {
                let log = try String(contentsOfFile: "\(dump)/logs/rank-\(rank).log", encoding: .utf8)
                let line = log.split(separator: "\n").first { $0.hasPrefix("bound to CPU(s) ") }
                if bind == "none" {
                    XCTAssertNil(line, log)
                    continue
                }
                let m = cpus.count
                let expected = n >= m ? [cpus[rank * m / n]] : Array(cpus[(rank * m / n)..<((rank + 1) * m / n)])
                // "bound to CPU(s) LIST" and, with idle-CPU lending, ", lending idle CPUs through PATH" (a list has no spaces).
                let reported = try XCTUnwrap(line, "rank \(rank): \(log.prefix(500))").dropFirst("bound to CPU(s) ".count)
                    .split(separator: " ").first.map { $0.hasSuffix(",") ? $0.dropLast() : $0 } ?? ""
                XCTAssertEqual(parse(reported), expected, "rank \(rank)")
            }
        }
        #endif
    }

    /// The shipped topology of two simulated hosts of 3 and 5 ranks (ipc).
    private var unevenHosts: String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("topologies/uneven-hosts-ipc.toml").path
    }

    /// On several hosts every case runs under the ring and the hierarchical algorithms (uneven hosts, and subgroups
    /// that span them unevenly), and the hierarchical ones send each byte across the boundary once.
    func testSuiteRunsBothAlgorithmsOnUnevenHosts() throws {
        let r = try Titan.run(["launch", "--topology", unevenHosts, "--dump-folder", temporaryFolder(), "--",
                               "collectives", "--large-bytes", "65536", "--comm.timeout_seconds", "60"])
        XCTAssertEqual(r.status, 0, String(r.stderr.suffix(2000)))
        XCTAssertTrue(r.stdout.hasSuffix("[rank 0] 426 passed, 0 failed\n"), String(r.stdout.suffix(300)))
        XCTAssertTrue(r.stdout.contains("PASS reduce_scatter sum world hierarchical n=8 count=2048"), String(r.stdout.suffix(300)))
        XCTAssertTrue(r.stdout.contains("PASS inter-host bytes rows hierarchical n=4 hosts=2"), "rows [0-3] span hosts 3+1")
    }

    /// The fuzzer at a fixed seed on uneven hosts: the seed first, the suite's last line, and one op rerun alone.
    func testFuzzerAtAFixedSeed() throws {
        let r = try Titan.run(["launch", "--topology", unevenHosts, "--dump-folder", temporaryFolder(), "--",
                               "collectives", "--fuzz", "300", "--seed", "5", "--comm.timeout_seconds", "60"])
        XCTAssertEqual(r.status, 0, String(r.stderr.suffix(2000)) + String(r.stdout.suffix(2000)))
        XCTAssertTrue(r.stdout.contains("[rank 0] fuzz: seed 5, 300 ops, world 8 on 2 host(s)"), String(r.stdout.prefix(1000)))
        XCTAssertTrue(r.stdout.hasSuffix("[rank 0] 300 passed, 0 failed\n"), String(r.stdout.suffix(300)))
        let one = try Titan.run(["launch", "--topology", unevenHosts, "--dump-folder", temporaryFolder(), "--",
                                 "collectives", "--fuzz-op", "123", "--seed", "5", "--comm.timeout_seconds", "60"])
        XCTAssertEqual(one.status, 0, String(one.stderr.suffix(2000)))
        XCTAssertTrue(one.stdout.contains("fuzz: seed 5, op 123, world 8"), String(one.stdout.prefix(1000)))
        XCTAssertTrue(one.stdout.hasSuffix("[rank 0] 1 passed, 0 failed\n"), String(one.stdout.suffix(300)))
    }

    func testSingleProcessModeRunsTheSuiteOverInproc() throws {
        let dump = temporaryFolder()
        let r = try Titan.run(["launch", "--ranks", "3", "--single-process", "--dump-folder", dump, "--",
                                "collectives", "--large-bytes", "1048576"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stdout.hasSuffix("[rank 0] 213 passed, 0 failed\n"), String(r.stdout.suffix(300)))
        XCTAssertTrue(FileManager.default.fileExists(atPath: dump + "/logs/rank-2.log"))
        XCTAssertFalse(FileManager.default.fileExists(atPath: dump + "/flight"), "ranks that finish write no flight record")
    }

    /// SIGKILL one rank in the middle of the suite: the launcher stops the others and exits non-zero
    /// within seconds, naming the rank and its signal; no rank survives.
    func testKillingOneRankStopsTheJobQuickly() throws {
        var victim: Int32 = 0
        var killedAt = Date()
        var survivors: [Int32] = []
        let r = try Titan.run(["launch", "--ranks", "4", "--dump-folder", temporaryFolder(), "--", "collectives"]) { launcher in
            // Wait until all four ranks run, then kill rank 2 (found by its RANK variable).
            var ranks: [Int32: Int] = [:]
            for _ in 0..<200 where ranks.count < 4 {
                Thread.sleep(forTimeInterval: 0.05)
                ranks = Self.children(of: launcher)
            }
            Thread.sleep(forTimeInterval: 1.0)  // well inside the collectives
            victim = ranks.first { $0.value == 2 }?.key ?? 0
            killedAt = Date()
            if victim > 0 { kill(victim, SIGKILL) }
            survivors = Array(ranks.keys)
        }
        XCTAssertGreaterThan(victim, 0, "never saw rank 2 start")
        XCTAssertNotEqual(r.status, 0)
        XCTAssertLessThan(Date().timeIntervalSince(killedAt), 15, "the launcher took too long to stop the job")
        XCTAssertTrue(r.stderr.contains("rank 2"), r.stderr)
        XCTAssertTrue(r.stderr.contains("SIGKILL"), r.stderr)
        for pid in survivors { XCTAssertNotEqual(kill(pid, 0), 0, "rank process \(pid) outlived the job") }
    }

    /// Child processes of `parent` with their RANK variable.
    static func children(of parent: Int32) -> [Int32: Int] {
        var result: [Int32: Int] = [:]
        guard let entries = try? FileManager.default.contentsOfDirectory(atPath: "/proc") else { return result }
        for entry in entries {
            guard let pid = Int32(entry),
                  let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
                  let close = stat.lastIndex(of: ")") else { continue }
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            guard fields.count > 2, Int32(fields[1]) == parent,
                  let environ = FileManager.default.contents(atPath: "/proc/\(pid)/environ") else { continue }
            for variable in environ.split(separator: 0) where variable.starts(with: Array("RANK=".utf8)) {
                result[pid] = Int(String(decoding: variable.dropFirst(5), as: UTF8.self))
            }
        }
        return result
    }
}
