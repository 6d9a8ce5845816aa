import Foundation
import XCTest

/// Ranks started by real cluster schedulers instead of our launcher: Open MPI's mpirun (Debian's openmpi-bin), a real
/// one-node Slurm (munged + slurmctld + slurmd, scripts/slurm/local-cluster.sh) running srun and the sbatch script, and a
/// torchrun-style environment whose ranks meet in the file store. Each trains as `titan launch --ranks N` does with the
/// same degrees, loss for loss.
final class SchedulerTests: XCTestCase {
    static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().path
    /// FSDP over 4 with expert parallel 2 (not the default degrees, so that they are seen to be passed on).
    static let args = ["--training.steps", "4", "--parallelism.data_parallel_shard_degree", "4",
                       "--parallelism.expert_parallel_degree", "2", "--comm.timeout_seconds", "60"]

    /// Losses per step of `titan launch --ranks 4 -- train` with `args` (run once for every test of this class).
    nonisolated(unsafe) static var launcherLosses: [Double]?

    func reference() throws -> [Double] {
        if let losses = Self.launcherLosses { return losses }
        let dump = temporaryFolder()
        let r = try Titan.run(["launch", "--ranks", "4", "--", "train"] + Self.args + ["--job.dump_folder", dump])
        XCTAssertEqual(r.status, 0, String(r.stderr.suffix(3000)))
        let losses = try Self.losses(dump)
        XCTAssertEqual(losses.count, 4)
        Self.launcherLosses = losses
        return losses
    }

    func testMpirunMatchesTheLauncher() throws {
        guard let mpirun = Command.which("mpirun") else {
            throw XCTSkip("mpirun not found: install Debian's openmpi-bin (scripts/bootstrap.sh --test-tools does)")
        }
        let want = try reference()
        let dump = temporaryFolder()
        let r = try Command.run(mpirun, ["--allow-run-as-root", "--oversubscribe", "-np", "4", Titan.path, "train"]
                                    + Self.args + ["--job.dump_folder", dump])
        XCTAssertEqual(r.status, 0, "mpirun: \(r.stdout.suffix(2000))\n\(r.stderr.suffix(3000))")
        // Open MPI gives ranks a pty even though its own output goes to our pipe: no progress line's escapes in it.
        XCTAssertFalse((r.stdout + r.stderr).contains("\u{1B}["), "a terminal escape in mpirun's output: \(r.stdout.suffix(500))")
        try assertSameLosses(Self.losses(dump), want, "mpirun -np 4")
        try assertRankLogs(dump, ranks: 4, scheduler: "Open MPI")
    }

    /// A real Slurm on this machine: `srun -n 4 titan train` and `sbatch scripts/slurm/train.sbatch`.
    func testSlurmSrunAndSbatchMatchTheLauncher() throws {
        let want = try reference()
        let folder = temporaryFolder()
        let script = Self.repository + "/scripts/slurm/local-cluster.sh"
        let started = Date()
        let start = try Command.run(script, ["start", folder])
        addTeardownBlock { _ = try? Command.run(script, ["stop", folder]) }   // in every case
        if start.status == 3 { throw XCTSkip("no Slurm cluster could be started here:\n\(start.stderr.suffix(2000))") }
        XCTAssertEqual(start.status, 0, start.stderr)
        guard start.status == 0, let srun = Command.which("srun"), let sbatch = Command.which("sbatch"),
              let scontrol = Command.which("scontrol") else { return }
        let setup = Date().timeIntervalSince(started)
        XCTAssertLessThan(setup, 60, "the Slurm setup should take well under a minute")
        let env = ["SLURM_CONF": folder + "/slurm.conf"]

        let dump = temporaryFolder()
        let r = try Command.run(srun, ["-n", "4", Titan.path, "train"] + Self.args + ["--job.dump_folder", dump], environment: env)
        XCTAssertEqual(r.status, 0, "srun: \(r.stdout.suffix(2000))\n\(r.stderr.suffix(3000))")
        try assertSameLosses(Self.losses(dump), want, "srun -n 4")
        try assertRankLogs(dump, ranks: 4, scheduler: "Slurm")

        // The README's sbatch script, its defaults (1 node, 4 tasks) unchanged. Waited for by polling scontrol: sbatch
        // --wait checks every few seconds only.
        let batchDump = temporaryFolder()
        let out = folder + "/sbatch.out"
        let b = try Command.run(sbatch, ["--parsable", "-o", out, Self.repository + "/scripts/slurm/train.sbatch"] + Self.args,
                                environment: env.merging(["TITAN": Titan.path, "DUMP_FOLDER": batchDump]) { $1 })
        XCTAssertEqual(b.status, 0, "sbatch: \(b.stderr)")
        let job = b.stdout.trimmingCharacters(in: .whitespacesAndNewlines).split(separator: ";").first.map(String.init) ?? ""
        var state = ""
        let deadline = Date().addingTimeInterval(120)
        while Date() < deadline {
            state = try Command.run(scontrol, ["show", "job", "-o", job], environment: env).stdout
            if !["PENDING", "RUNNING", "CONFIGURING", "COMPLETING"].contains(where: { state.contains("JobState=\($0) ") }) { break }
            Thread.sleep(forTimeInterval: 0.1)
        }
        let output = (try? String(contentsOfFile: out, encoding: .utf8)) ?? ""
        XCTAssertTrue(state.contains("JobState=COMPLETED ") && state.contains("ExitCode=0:0"),
                      "batch job \(job): \(state)\n\(output.suffix(3000))")
        try assertSameLosses(Self.losses(batchDump), want, "sbatch train.sbatch")
        XCTAssertTrue(output.contains("0: step    4"), "srun --label prefixes the ranks' lines: \(output.suffix(2000))")
        print("Slurm: setup \(String(format: "%.1f", setup)) s, srun and sbatch \(String(format: "%.1f", Date().timeIntervalSince(started) - setup)) s")
    }

    /// torchrun's variables without LOCAL_WORLD_SIZE: the ranks cannot know they share a host, so they meet in the file
    /// store (in the dump folder) first; the folder is gone after.
    func testTorchrunStyleRanksMeetInTheFileStore() throws {
        let want = try reference()
        let dump = temporaryFolder()
        let port = 20000 + Int(getpid() % 20000)
        let ranks = try (0..<4).map { rank in
            try Command.start(Titan.path, ["train"] + Self.args + ["--job.dump_folder", dump], environment: [
                "RANK": "\(rank)", "WORLD_SIZE": "4", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "\(port)"])
        }
        for (rank, r) in ranks.map({ $0.wait() }).enumerated() {
            XCTAssertEqual(r.status, 0, "rank \(rank): \(r.stderr.suffix(2000))")
        }
        try assertSameLosses(Self.losses(dump), want, "torchrun-style, file store")
        try assertRankLogs(dump, ranks: 4, scheduler: "torchrun")
        let left = try FileManager.default.contentsOfDirectory(atPath: dump).filter { $0.hasPrefix("rdzv-") }
        XCTAssertEqual(left, [], "the rendezvous folder is removed once every rank read it")
    }

    /// An inconsistent scheduler environment stops the rank before it starts, naming the variable.
    func testInconsistentSlurmEnvironmentNamesTheVariable() throws {
        let env = ["SLURM_PROCID": "0", "SLURM_STEP_ID": "0", "SLURM_NTASKS": "3", "SLURM_JOB_ID": "5",
                   "SLURM_JOB_NODELIST": "node[1-2]", "SLURM_TASKS_PER_NODE": "2(x2)"]
        let r = try Command.run(Titan.path, ["train", "--training.steps", "1", "--job.dump_folder", temporaryFolder()],
                                environment: env)
        XCTAssertEqual(r.status, 2)
        XCTAssertTrue(r.stderr.contains("SLURM_NTASKS") && r.stderr.contains("SLURM_TASKS_PER_NODE"), r.stderr)
    }

    // MARK: - helpers

    static func losses(_ dump: String) throws -> [Double] {
        let lines = try String(contentsOfFile: dump + "/metrics.jsonl", encoding: .utf8).split(separator: "\n")
        return try lines.map { line in
            let o = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
            return try XCTUnwrap((o["loss"] as? NSNumber)?.doubleValue)
        }
    }

    func assertSameLosses(_ got: [Double], _ want: [Double], _ label: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(got.count, want.count, label, file: file, line: line)
        for (step, (a, b)) in zip(got, want).enumerated() {
            XCTAssertLessThan(abs(a - b) / abs(b), 1e-5, "\(label) step \(step + 1): loss \(a) vs the launcher's \(b)", file: file, line: line)
        }
    }

    /// Every rank wrote DUMP/logs/rank-K.log itself (no launcher did), saying who started it.
    func assertRankLogs(_ dump: String, ranks: Int, scheduler: String, file: StaticString = #filePath, line: UInt = #line) throws {
        for k in 0..<ranks {
            let log = (try? String(contentsOfFile: "\(dump)/logs/rank-\(k).log", encoding: .utf8)) ?? ""
            XCTAssertTrue(log.contains("started by \(scheduler): rank \(k) of \(ranks)"), "rank \(k) log: \(log.prefix(500))", file: file, line: line)
        }
        let log0 = (try? String(contentsOfFile: "\(dump)/logs/rank-0.log", encoding: .utf8)) ?? ""
        XCTAssertTrue(log0.contains("step    4"), "rank 0 logs its steps: \(log0.suffix(500))", file: file, line: line)
    }
}

/// Runs any program (a scheduler's client, or a rank) with stdin closed and its output in files: no reader threads, so
/// that many can run at once.
enum Command {
    struct Result { var status: Int32; var stdout: String; var stderr: String }

    static func which(_ name: String) -> String? {
        let paths = (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin") + ":/usr/sbin:/sbin"
        return paths.split(separator: ":").map { "\($0)/\(name)" }.first { FileManager.default.isExecutableFile(atPath: $0) }
    }

    final class Running {
        let process = Process()
        let outPath = NSTemporaryDirectory() + "titan-cmd-\(UUID().uuidString.prefix(8))"

        func wait() -> Result {
            process.waitUntilExit()
            defer { for p in [outPath + ".out", outPath + ".err"] { try? FileManager.default.removeItem(atPath: p) } }
            return Result(status: process.terminationStatus,
                          stdout: (try? String(contentsOfFile: outPath + ".out", encoding: .utf8)) ?? "",
                          stderr: (try? String(contentsOfFile: outPath + ".err", encoding: .utf8)) ?? "")
        }
    }

    /// `environment` is added over the test's own (and over OPENBLAS_NUM_THREADS=1, as `Titan.run` does).
    static func start(_ executable: String, _ arguments: [String], environment extra: [String: String] = [:]) throws -> Running {
        let running = Running()
        let p = running.process
        p.executableURL = URL(fileURLWithPath: executable)
        p.arguments = arguments
        var env = ProcessInfo.processInfo.environment
        env["OPENBLAS_NUM_THREADS"] = "1"
        env.merge(extra) { $1 }
        p.environment = env
        for suffix in [".out", ".err"] { _ = FileManager.default.createFile(atPath: running.outPath + suffix, contents: nil) }
        p.standardInput = FileHandle.nullDevice
        p.standardOutput = FileHandle(forWritingAtPath: running.outPath + ".out")
        p.standardError = FileHandle(forWritingAtPath: running.outPath + ".err")
        try p.run()
        return running
    }

    static func run(_ executable: String, _ arguments: [String], environment: [String: String] = [:]) throws -> Result {
        try start(executable, arguments, environment: environment).wait()
    }
}
