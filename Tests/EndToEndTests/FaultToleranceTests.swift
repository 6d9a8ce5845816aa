import Foundation
import XCTest

/// Restarts, hang diagnosis, fault injection and elastic shrink, with real rank processes and launchers: a failed run
/// restarts from its latest checkpoint and trains exactly what an uninterrupted run trains.
final class FaultToleranceTests: XCTestCase {
    struct Step: Decodable, Equatable { var step: Int; var loss: Double; var grad_norm: Double }

    /// Short timeouts, so a hang is found in seconds; checkpoints every 3 steps.
    static let job = ["--config", "debugmodel_moe", "--training.steps", "8", "--training.local_batch_size", "2",
                      "--checkpoint.enable", "true", "--checkpoint.interval", "3",
                      "--comm.init_timeout_seconds", "60", "--comm.timeout_seconds", "4"]

    func steps(_ dump: String) throws -> [Step] {
        let text = (try? String(contentsOfFile: dump + "/metrics.jsonl", encoding: .utf8)) ?? ""
        return try text.split(separator: "\n").map { try JSONDecoder().decode(Step.self, from: Data($0.utf8)) }
    }

    /// The uninterrupted run of `args` on `ranks` ranks (computed once per argument list).
    private static var references: [String: [Step]] = [:]
    func reference(ranks: Int, _ args: [String] = job) throws -> [Step] {
        let key = "\(ranks) \(args)"
        if let r = Self.references[key] { return r }
        let dump = temporaryFolder()
        let r = try Titan.run(["launch", "--ranks", "\(ranks)", "train"] + args + ["--job.dump_folder", dump])
        XCTAssertEqual(r.status, 0, String(r.stderr.suffix(2000)))
        let s = try steps(dump)
        XCTAssertEqual(s.map(\.step), Array(1...8))
        Self.references[key] = s
        return s
    }

    /// Every step exactly once, each loss and gradient norm bit for bit the uninterrupted run's.
    func assertSameTraining(_ dump: String, as reference: [Step], file: StaticString = #filePath, line: UInt = #line) throws {
        let got = try steps(dump)
        XCTAssertEqual(got.map(\.step), reference.map(\.step), "every step exactly once", file: file, line: line)
        XCTAssertEqual(got.map(\.loss.bitPattern), reference.map(\.loss.bitPattern), "losses", file: file, line: line)
        XCTAssertEqual(got.map(\.grad_norm.bitPattern), reference.map(\.grad_norm.bitPattern), "gradient norms", file: file, line: line)
    }

    func testKilledRankRestartsFromItsCheckpointAndTrainsTheSame() throws {
        let dump = temporaryFolder()
        let r = try Titan.run(["launch", "--ranks", "4", "--max-restarts", "1", "train"] + Self.job
            + ["--fault.rank", "2", "--fault.at_step", "5", "--fault.mode", "kill", "--job.dump_folder", dump])
        XCTAssertEqual(r.status, 0, String(r.stderr.suffix(3000)))
        XCTAssertTrue(r.stderr.contains("rank 2") && r.stderr.contains("killed by signal SIGKILL"), String(r.stderr.suffix(3000)))
        XCTAssertTrue(r.stderr.contains("restart 1 of 1 after: rank 2"), String(r.stderr.suffix(3000)))
        XCTAssertTrue(r.stdout.contains("resumed from") && r.stdout.contains("step-3 at step 3"), String(r.stdout.suffix(3000)))
        try assertSameTraining(dump, as: reference(ranks: 4))
    }

    /// A rank stopped with SIGSTOP (alive, silent) is found by its peers' collective timeouts, named with the
    /// collective, group and sequence number; the flight records say it is behind; the job (the stopped process too)
    /// is torn down and restarted.
    func testStoppedRankIsNamedTornDownAndRestarted() throws {
        let dump = temporaryFolder()
        var stopped: Int32 = 0
        let r = try Titan.run(["launch", "--ranks", "4", "--max-restarts", "1", "train"] + Self.job + ["--job.dump_folder", dump,
                               "--training.steps", "8", "--fault.rank", "1", "--fault.at_step", "5", "--fault.mode", "slow",
                               "--fault.delay_ms", "300"]) { launcher in
            // Rank 1 is slowed from step 5 on, so there is time to stop it after the step-3 checkpoint.
            let deadline = Date().addingTimeInterval(60)
            while (try? self.steps(dump).count) ?? 0 < 4, Date() < deadline { usleep(20_000) }
            stopped = rankProcesses(launcher: launcher)[1] ?? 0
            if stopped > 0 { kill(stopped, SIGSTOP) }
        }
        XCTAssertGreaterThan(stopped, 0, "rank 1's process was not found")
        XCTAssertEqual(r.status, 0, String(r.stderr.suffix(4000)))
        // The peers' errors name the silent rank and where they waited; the flight recorder names it as behind.
        XCTAssertTrue(r.stdout.contains("waiting for rank(s) [1]") || r.stderr.contains("waiting for rank(s) [1]"), String(r.stderr.suffix(4000)))
        XCTAssertTrue(r.stderr.contains("flight recorder: rank 1 is behind"), String(r.stderr.suffix(4000)))
        XCTAssertTrue(r.stderr.contains("restart 1 of 1"), String(r.stderr.suffix(4000)))
        XCTAssertFalse(FileManager.default.fileExists(atPath: "/proc/\(stopped)/status") && processState(stopped) != "Z",
                       "the stopped rank is still there")
        try assertSameTraining(dump, as: reference(ranks: 4))
    }

    func testHangingRankIsFoundAndTheRestartTrainsTheSame() throws {
        let dump = temporaryFolder()
        let r = try Titan.run(["launch", "--ranks", "4", "--max-restarts", "1", "train"] + Self.job
            + ["--fault.rank", "3", "--fault.at_step", "6", "--fault.mode", "hang", "--job.dump_folder", dump])
        XCTAssertEqual(r.status, 0, String(r.stderr.suffix(3000)))
        XCTAssertTrue(r.stdout.contains("fault: this rank hangs at step 6"), String(r.stdout.suffix(3000)))
        XCTAssertTrue(r.stderr.contains("flight recorder: rank 3 is behind"), String(r.stderr.suffix(3000)))
        try assertSameTraining(dump, as: reference(ranks: 4))
    }

    /// A straggler slows the job, not its numbers.
    func testSlowRankTrainsTheSame() throws {
        let dump = temporaryFolder()
        let r = try Titan.run(["launch", "--ranks", "4", "train"] + Self.job
            + ["--fault.rank", "0", "--fault.at_step", "2", "--fault.mode", "slow", "--fault.delay_ms", "20", "--job.dump_folder", dump])
        XCTAssertEqual(r.status, 0, String(r.stderr.suffix(3000)))
        XCTAssertTrue(r.stdout.contains("[rank 0] fault: every collective of this rank waits 20.0 ms from step 2"), String(r.stdout.suffix(3000)))
        try assertSameTraining(dump, as: reference(ranks: 4))
    }

    /// Every rank of host 1 killed at once (`fault.node`), on a two-host topology started by one launcher.
    func testWholeHostKilledRestartsAndTrainsTheSame() throws {
        let topology = try twoHostTopology(ranksPerHost: 2)
        let dump = temporaryFolder()
        let r = try Titan.run(["launch", "--topology", topology, "--max-restarts", "1", "train"] + Self.job
            + ["--fault.node", "1", "--fault.at_step", "4", "--job.dump_folder", dump])
        XCTAssertEqual(r.status, 0, String(r.stderr.suffix(3000)))
        XCTAssertTrue(r.stderr.contains("restart 1 of 1"), String(r.stderr.suffix(3000)))
        let reference = temporaryFolder()
        XCTAssertEqual(try Titan.run(["launch", "--topology", topology, "train"] + Self.job + ["--job.dump_folder", reference]).status, 0)
        try assertSameTraining(dump, as: steps(reference))
    }

    /// A rank killed between the rank files of a checkpoint save: the restart resumes from the previous complete one.
    func testCrashDuringSaveResumesFromThePreviousCheckpoint() throws {
        let dump = temporaryFolder()
        let r = try Titan.run(["launch", "--ranks", "4", "--max-restarts", "1", "train"] + Self.job + ["--job.dump_folder", dump],
                              environment: ["TITAN_TEST_CRASH_DURING_SAVE": "2:6"])
        XCTAssertEqual(r.status, 0, String(r.stderr.suffix(3000)))
        XCTAssertTrue(r.stdout.contains("step-3 at step 3"), String(r.stdout.suffix(3000)))
        try assertSameTraining(dump, as: reference(ranks: 4))
    }

    func testRestartsExhaustedExitNonZeroNamingTheCause() throws {
        let dump = temporaryFolder()
        let r = try Titan.run(["launch", "--ranks", "2", "--max-restarts", "2", "train", "--training.steps", "3",
                               "--checkpoint.initial_load_path", "/nonexistent/checkpoint", "--job.dump_folder", dump])
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.stderr.contains("restart 2 of 2"), String(r.stderr.suffix(3000)))
        XCTAssertTrue(r.stderr.contains("giving up after 2 restart(s); the last failure: rank"), String(r.stderr.suffix(3000)))
        XCTAssertTrue(r.stderr.contains("/nonexistent/checkpoint"), String(r.stderr.suffix(3000)))
    }

    /// Two hosts started by two launchers (--node) that agree through a rendezvous folder: host 1's launcher is
    /// killed, its ranks go with it, and host 0 continues alone (--elastic): a world of 2 instead of 4, the same
    /// global batch in two micro-batches, the loss curve continuing as if nothing happened.
    func testElasticShrinkContinuesOnTheHostThatIsLeft() throws {
        let topology = try twoHostTopology(ranksPerHost: 2)
        let rdzv = temporaryFolder(), dump = temporaryFolder()
        let secret = rdzv + ".secret"   // the job's CURVE secret, shared by both launchers (created by the first)
        addTeardownBlock { try? FileManager.default.removeItem(atPath: secret) }
        let args = Self.job + ["--training.local_batch_size", "1", "--training.global_batch_size", "4",
                               "--training.steps", "8", "--parallelism.data_parallel_shard_degree", "-1",
                               "--job.dump_folder", dump]
        func launcher(_ node: Int) -> [String] {
            ["launch", "--topology", topology, "--node", "\(node)", "--job-id", "elastic-\(getpid())", "--rdzv-dir", rdzv,
             "--job-secret-file", secret,
             "--rdzv-timeout", "3", "--max-restarts", "1", "--elastic", "train"] + args
        }
        let node1 = Process()
        node1.executableURL = URL(fileURLWithPath: Titan.path)
        node1.arguments = launcher(1)
        node1.environment = ProcessInfo.processInfo.environment.merging(["OPENBLAS_NUM_THREADS": "1"]) { $1 }
        node1.standardOutput = FileHandle.nullDevice
        node1.standardError = FileHandle.nullDevice
        try node1.run()
        let r = try Titan.run(launcher(0)) { _ in
            let deadline = Date().addingTimeInterval(60)
            while (try? self.steps(dump).count) ?? 0 < 5, Date() < deadline { usleep(20_000) }
            // The whole host goes: its launcher and its ranks at once (left to their watchdog, the ranks could still
            // finish the last steps of this short run first).
            let ranks = rankProcesses(launcher: node1.processIdentifier)
            kill(node1.processIdentifier, SIGKILL)
            for pid in ranks.values { kill(pid, SIGKILL) }
        }
        node1.waitUntilExit()
        XCTAssertEqual(r.status, 0, String(r.stderr.suffix(4000)))
        XCTAssertTrue(r.stderr.contains("host(s) 1 lost: continuing on host(s) 0"), String(r.stderr.suffix(4000)))
        XCTAssertTrue(r.stdout.contains("world 2 = replicate 1 × shard 2"), String(r.stdout.suffix(3000)))
        let got = try steps(dump)
        let reference = try self.reference(ranks: 4, Array(args.dropLast(2)))
        XCTAssertEqual(got.map(\.step), reference.map(\.step))
        for (a, b) in zip(got, reference) {
            XCTAssertEqual(a.loss, b.loss, accuracy: 1e-5 * abs(b.loss), "step \(a.step)")
            XCTAssertEqual(a.grad_norm, b.grad_norm, accuracy: 1e-4 * abs(b.grad_norm), "step \(a.step)")
        }
    }

    /// Two launchers (--node) of one job: host 1's rank fails, host 0's launcher stops its ranks too, and both restart
    /// in step (the same attempt), training what one launcher trains.
    func testLaunchersOfSeveralHostsRestartInStep() throws {
        let topology = try twoHostTopology(ranksPerHost: 2)
        let rdzv = temporaryFolder(), dump = temporaryFolder(), reference = temporaryFolder()
        XCTAssertEqual(try Titan.run(["launch", "--topology", topology, "train"] + Self.job + ["--job.dump_folder", reference]).status, 0)
        let secret = rdzv + ".secret"
        addTeardownBlock { try? FileManager.default.removeItem(atPath: secret) }
        let args = ["--topology", topology, "--job-id", "instep-\(getpid())", "--rdzv-dir", rdzv, "--max-restarts", "1",
                    "--job-secret-file", secret, "train"]
            + Self.job + ["--fault.rank", "3", "--fault.at_step", "5", "--job.dump_folder", dump]
        let node1 = Process()
        node1.executableURL = URL(fileURLWithPath: Titan.path)
        node1.arguments = ["launch", "--node", "1"] + args
        node1.environment = ProcessInfo.processInfo.environment.merging(["OPENBLAS_NUM_THREADS": "1"]) { $1 }
        let node1Errors = Pipe()
        node1.standardOutput = FileHandle.nullDevice
        node1.standardError = node1Errors
        try node1.run()
        let r = try Titan.run(["launch", "--node", "0"] + args)
        let e1 = String(decoding: node1Errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        node1.waitUntilExit()
        XCTAssertEqual(r.status, 0, String(r.stderr.suffix(3000)))
        XCTAssertEqual(node1.terminationStatus, 0, String(e1.suffix(3000)))
        XCTAssertTrue(r.stderr.contains("host 1 failed: rank 3"), String(r.stderr.suffix(3000)))
        XCTAssertTrue(r.stderr.contains("attempt 2") && e1.contains("attempt 2"), "both launchers start attempt 2")
        try assertSameTraining(dump, as: steps(reference))
    }

    // MARK: helpers

    /// A topology of two loopback hosts with `ranksPerHost` ranks each, on tcp ports of this test's own.
    func twoHostTopology(ranksPerHost: Int) throws -> String {
        let base = 30000 + Int(getpid() % 500) * 64
        let path = temporaryFolder() + ".toml"
        addTeardownBlock { try? FileManager.default.removeItem(atPath: path) }
        try """
            transport = "tcp"
            [[hosts]]
            address = "127.0.0.1"
            ranks = \(ranksPerHost)
            base_port = \(base)
            [[hosts]]
            address = "127.0.0.2"
            ranks = \(ranksPerHost)
            base_port = \(base + 32)
            [parallelism]
            data_parallel_shard_degree = -1
            expert_parallel_degree = 2
            """.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }
}

/// Rank → pid of the rank processes a launcher started (its children, each with RANK in its environment).
func rankProcesses(launcher: Int32) -> [Int: Int32] {
    var found: [Int: Int32] = [:]
    let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(launcher)/task")) ?? []
    for task in tasks {
        let text = (try? String(contentsOfFile: "/proc/\(launcher)/task/\(task)/children", encoding: .utf8)) ?? ""
        for pid in text.split(separator: " ").compactMap({ Int32($0) }) {
            guard let environ = FileManager.default.contents(atPath: "/proc/\(pid)/environ") else { continue }
            for entry in environ.split(separator: 0) {
                let kv = String(decoding: entry, as: UTF8.self)
                if kv.hasPrefix("RANK="), let rank = Int(kv.dropFirst(5)) { found[rank] = pid }
            }
        }
    }
    return found
}

/// The state letter of /proc/PID/stat (R, S, T for stopped, Z for a zombie, ...).
func processState(_ pid: Int32) -> String {
    guard let text = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
          let close = text.lastIndex(of: ")") else { return "" }
    return String(text[text.index(close, offsetBy: 2)])
}
