import XCTest
import Collectives
@testable import Cluster

/// The launcher with real processes: every rank is `/bin/sh -c SCRIPT`, and the script reads $RANK.
final class LauncherTests: XCTestCase {
    var folder = ""
    var stdoutPath: String { folder + "/launcher.stdout" }
    var stderrPath: String { folder + "/launcher.stderr" }

    override func setUpWithError() throws {
        folder = try temporaryFolder()
    }

    override func tearDown() {
        try? FileManager.default.removeItem(atPath: folder)
    }

    /// Runs a launcher whose ranks run `script`, capturing its stdout/stderr in files.
    func launch(_ topology: Topology, node: Int? = nil, script: String, jobID: String? = "test-job",
                configure: (inout Launcher) -> Void = { _ in }) throws -> LaunchResult {
        var launcher = Launcher(topology: topology, node: node, executable: "/bin/sh",
                                arguments: ["-c", script], dumpFolder: folder + "/dump", jobID: jobID)
        let out = open(stdoutPath, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        let err = open(stderrPath, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        defer {
            close(out)
            close(err)
        }
        launcher.stdoutFD = out
        launcher.stderrFD = err
        launcher.graceSeconds = 2
        launcher.timeoutSeconds = 60  // a broken test must not hang CI
        configure(&launcher)
        return try launcher.run()
    }

    func read(_ path: String) -> String { (try? String(contentsOfFile: path, encoding: .utf8)) ?? "" }
    func log(rank: Int) -> String { read(folder + "/dump/logs/rank-\(rank).log") }

    /// A rank that leaves a process behind in its process group: it is killed when the rank is reaped (while the rank's
    /// zombie still holds the group id, so the signal cannot reach another's group).
    func testWhatARankLeavesInItsProcessGroupIsKilled() throws {
        let result = try launch(.local(ranks: 2), script: "sleep 300 & echo $! > \(folder)/left-$RANK; exit 0")
        XCTAssertEqual(result.exitStatus, 0, read(stderrPath))
        for rank in 0..<2 {
            let pid = try XCTUnwrap(Int(read(folder + "/left-\(rank)").trimmingCharacters(in: .whitespacesAndNewlines)))
            // Gone, or a zombie waiting for its new parent: either way no longer running.
            var running = true
            for _ in 0..<100 where running {
                let stat = read("/proc/\(pid)/stat")
                running = !stat.isEmpty && !stat.contains(") Z ")
                if running { usleep(20_000) }
            }
            XCTAssertFalse(running, "rank \(rank) left pid \(pid) running")
        }
    }

    func testSuccessPrefixesOutputAndWritesLogs() throws {
        let script = """
            echo "hello from $RANK of $WORLD_SIZE local $LOCAL_RANK/$LOCAL_WORLD_SIZE node $NODE_RANK"
            echo "job=$TITAN_JOB_ID topology=[$TITAN_TOPOLOGY] local_ranks=$TITAN_LOCAL_RANKS launcher=$TITAN_LAUNCHER_PID"
            echo "dump=$TITAN_DUMP_FOLDER blas=$OPENBLAS_NUM_THREADS"
            test -d "$TITAN_IPC_DIR" && echo "ipc dir exists: $TITAN_IPC_DIR"
            echo "warning from $RANK" >&2
            printf "no newline at the end $RANK"
            """
        let result = try launch(.local(ranks: 4), script: script)
        XCTAssertEqual(result.exitStatus, 0, read(stderrPath))
        XCTAssertNil(result.failure)
        XCTAssertEqual(result.statuses, [0: .exited(0), 1: .exited(0), 2: .exited(0), 3: .exited(0)])
        XCTAssertEqual(result.jobID, "test-job")

        let stdout = read(stdoutPath), stderr = read(stderrPath)
        let dump = URL(fileURLWithPath: folder + "/dump").standardizedFileURL.path
        for rank in 0 ..< 4 {
            XCTAssertTrue(stdout.contains("[rank \(rank)] hello from \(rank) of 4 local \(rank)/4 node 0\n"), stdout)
            XCTAssertTrue(stdout.contains("[rank \(rank)] job=test-job topology=[] local_ranks=4 launcher=\(getpid())\n"))
            XCTAssertTrue(stdout.contains("[rank \(rank)] dump=\(dump) blas="))
            XCTAssertTrue(stdout.contains("[rank \(rank)] ipc dir exists: /tmp/titan-test-job\n"))
            XCTAssertTrue(stdout.contains("[rank \(rank)] no newline at the end \(rank)\n"))
            XCTAssertTrue(stderr.contains("[rank \(rank)] warning from \(rank)\n"), stderr)

            let log = self.log(rank: rank)
            XCTAssertTrue(log.hasPrefix("hello from \(rank) of 4"), log)
            XCTAssertTrue(log.contains("warning from \(rank)\n"))
            XCTAssertTrue(log.hasSuffix("no newline at the end \(rank)\n"))
        }
        // Every line is whole: prefixed and complete.
        for line in stdout.split(separator: "\n") {
            XCTAssertTrue(line.hasPrefix("[rank "), "unprefixed line: \(line)")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: "/tmp/titan-test-job"), "ipc dir not removed")
        XCTAssertTrue(result.pids.values.allSatisfy(processIsGone))
    }

    func testRespectsUserBLASThreadsAndExtraEnvironment() throws {
        let result = try launch(.local(ranks: 2), script: "echo \"blas=$OPENBLAS_NUM_THREADS extra=$EXTRA\"") {
            $0.extraEnvironment = ["OPENBLAS_NUM_THREADS": "7", "EXTRA": "yes", "RANK": "99"]
        }
        XCTAssertEqual(result.exitStatus, 0)
        XCTAssertTrue(log(rank: 0).contains("blas=7 extra=yes"))
        XCTAssertTrue(log(rank: 1).contains("blas=7 extra=yes"))
    }

    /// Each rank gets its block of the launcher's CPUs in TITAN_CPUS and starts bound to it (the shell reports its
    /// own mask), or neither when binding is off.
    func testRanksGetTheirCPUBlock() throws {
        let cpus = CPUBinding.allowedCPUs()
        try XCTSkipIf(cpus.count < 2, "binding needs at least two CPUs")
        let script = "echo \"cpus=[$TITAN_CPUS] $(grep Cpus_allowed_list /proc/self/status | tr -d '\\t ')\""
        let result = try launch(.local(ranks: 4), script: script)
        XCTAssertEqual(result.exitStatus, 0, read(stderrPath))
        for rank in 0..<4 {
            let expected = try XCTUnwrap(CPUBinding.assignment(.block, index: rank, count: 4, cpus: cpus)).map(CPUBinding.formatList)!
            XCTAssertTrue(log(rank: rank).contains("cpus=[\(expected)] Cpus_allowed_list:\(expected)\n"), "rank \(rank): \(log(rank: rank))")
        }
        XCTAssertTrue(read(stderrPath).contains("in blocks"), read(stderrPath))
        XCTAssertEqual(CPUBinding.allowedCPUs(), cpus, "the launcher's own mask is restored")

        // Two ranks: each gets half the CPUs, and as many BLAS threads (unless the user set OPENBLAS_NUM_THREADS,
        // as scripts/test.sh does: lifted here for the launch).
        let userThreads = getenv("OPENBLAS_NUM_THREADS").map { String(cString: $0) }
        unsetenv("OPENBLAS_NUM_THREADS")
        defer { if let userThreads { setenv("OPENBLAS_NUM_THREADS", userThreads, 1) } }
        let halves = try launch(.local(ranks: 2), script: "echo \"cpus=[$TITAN_CPUS] blas=$OPENBLAS_NUM_THREADS\"")
        XCTAssertEqual(halves.exitStatus, 0)
        for rank in 0..<2 {
            let block = try XCTUnwrap(CPUBinding.assignment(.block, index: rank, count: 2, cpus: cpus))
            XCTAssertTrue(log(rank: rank).contains("cpus=[\(CPUBinding.formatList(block))] blas=\(block.count)\n"), log(rank: rank))
        }

        let unbound = try launch(.local(ranks: 4), script: script) { $0.cpuBinding = .none }
        XCTAssertEqual(unbound.exitStatus, 0)
        for rank in 0..<4 {
            XCTAssertTrue(log(rank: rank).contains("cpus=[] Cpus_allowed_list:\(CPUBinding.formatList(cpus))\n"), log(rank: rank))
        }

        // An unbound rank's BLAS threads divide the CPUs the launcher may use, not the machine's: a lone rank gets
        // them all, or the one CPU its launcher is restricted to.
        let blas = "echo \"blas=$OPENBLAS_NUM_THREADS\""
        XCTAssertEqual(try launch(.local(ranks: 1), script: blas).exitStatus, 0)
        XCTAssertTrue(log(rank: 0).contains("blas=\(cpus.count)\n"), log(rank: 0))
        let restricted = try CPUBinding.withCallingThread(boundTo: [cpus[0]]) { try launch(.local(ranks: 1), script: blas) }
        XCTAssertEqual(restricted.exitStatus, 0)
        XCTAssertTrue(log(rank: 0).contains("blas=1\n"), log(rank: 0))
    }

    /// Launchers of two hosts on one machine (--node) cut the machine's CPUs over all eight ranks together: node 1
    /// gets the blocks of ranks 4-7, not the first CPUs again.
    func testNodesOnOneMachineShareItsCPUs() throws {
        let cpus = CPUBinding.allowedCPUs()
        try XCTSkipIf(cpus.count < 2, "binding needs at least two CPUs")
        let topology = try Topology.load(path: topologiesFolder + "/two-host-tcp.toml")
        let result = try launch(topology, node: 1, script: "echo \"cpus=[$TITAN_CPUS]\"", jobID: nil) { $0.jobSecretFile = self.folder + "/job.secret" }
        XCTAssertEqual(result.exitStatus, 0, read(stderrPath))
        for rank in 4..<8 {
            let expected = try XCTUnwrap(CPUBinding.assignment(.block, index: rank, count: 8, cpus: cpus))
            XCTAssertTrue(log(rank: rank).contains("cpus=[\(CPUBinding.formatList(expected))]"), "rank \(rank): \(log(rank: rank))")
        }
    }

    func testFailingRankStopsTheOthersQuickly() throws {
        let script = """
            if [ "$RANK" = 3 ]; then
              sleep 0.5
              for i in $(seq 1 15); do echo "rank 3 line $i"; done
              exit 3
            fi
            sleep 30 &
            echo $! > "\(folder)/child-$RANK"
            echo $$ > "\(folder)/rank-$RANK"
            wait
            """
        let started = Date()
        let result = try launch(.local(ranks: 4), script: script)
        let elapsed = Date().timeIntervalSince(started)
        XCTAssertLessThan(elapsed, 10, "the launcher took \(elapsed) s to stop the job")

        XCTAssertEqual(result.exitStatus, 3)
        let failure = try XCTUnwrap(result.failure)
        XCTAssertEqual(failure.rank, 3)
        XCTAssertEqual(failure.status, .exited(3))
        XCTAssertTrue(failure.description.contains("rank 3"), failure.description)
        XCTAssertTrue(failure.description.contains("exit code 3"), failure.description)
        XCTAssertEqual(failure.lastLogLines, (6 ... 15).map { "rank 3 line \($0)" })
        XCTAssertTrue(read(stderrPath).contains("rank 3 line 15"), "the failure is reported on stderr")
        for rank in 0 ..< 3 {
            XCTAssertEqual(result.statuses[rank], .signaled(SIGTERM))
        }

        // No survivors: the ranks and the `sleep` each one started.
        var pids = Array(result.pids.values)
        for rank in 0 ..< 3 {
            pids.append(try waitForPID(file: "\(folder)/child-\(rank)"))
            XCTAssertEqual(try waitForPID(file: "\(folder)/rank-\(rank)"), result.pids[rank])
        }
        XCTAssertTrue(waitUntilGone(pids, timeout: 3), "survivors among \(pids)")
    }

    func testRankKilledBySignalIsReported() throws {
        let script = """
            if [ "$RANK" = 1 ]; then echo "about to die"; kill -9 $$; fi
            sleep 30
            """
        let result = try launch(.local(ranks: 3), script: script)
        XCTAssertEqual(result.exitStatus, 128 + SIGKILL)
        let failure = try XCTUnwrap(result.failure)
        XCTAssertEqual(failure.rank, 1)
        XCTAssertEqual(failure.status, .signaled(SIGKILL))
        XCTAssertTrue(failure.description.contains("rank 1"))
        XCTAssertTrue(failure.description.contains("SIGKILL"), failure.description)
        XCTAssertEqual(failure.lastLogLines, ["about to die"])
        XCTAssertTrue(waitUntilGone(Array(result.pids.values), timeout: 3))
    }

    func testRankIgnoringSIGTERMGetsSIGKILLAfterTheGrace() throws {
        let script = """
            if [ "$RANK" = 0 ]; then sleep 0.3; exit 1; fi
            trap '' TERM
            while true; do sleep 0.1; done
            """
        let started = Date()
        let result = try launch(.local(ranks: 2), script: script) { $0.graceSeconds = 1 }
        XCTAssertLessThan(Date().timeIntervalSince(started), 8)
        XCTAssertEqual(result.failure?.rank, 0)
        XCTAssertEqual(result.exitStatus, 1)
        XCTAssertEqual(result.statuses[1], .signaled(SIGKILL))
        XCTAssertTrue(read(stderrPath).contains("sending SIGKILL"))
        XCTAssertTrue(waitUntilGone(Array(result.pids.values), timeout: 3))
    }

    func testJobTimeout() throws {
        let result = try launch(.local(ranks: 2), script: "sleep 30") { $0.timeoutSeconds = 1 }
        XCTAssertEqual(result.exitStatus, 124)
        XCTAssertNil(result.failure?.rank)
        XCTAssertTrue(result.failure?.reason.contains("timeout") ?? false)
        XCTAssertTrue(waitUntilGone(Array(result.pids.values), timeout: 3))
    }

    func testSIGINTIsForwardedToTheRanks() throws {
        let script = """
            trap 'echo "rank $RANK got SIGINT"; exit 130' INT
            sleep 30 &
            wait
            """
        // Interrupt ourselves (the launcher) once the ranks are running.
        DispatchQueue.global().asyncAfter(deadline: .now() + 1) { kill(getpid(), SIGINT) }
        let started = Date()
        let result = try launch(.local(ranks: 2), script: script)
        XCTAssertLessThan(Date().timeIntervalSince(started), 8)
        XCTAssertEqual(result.exitStatus, 128 + SIGINT)
        XCTAssertTrue(result.failure?.reason.contains("interrupted by SIGINT") ?? false)
        XCTAssertTrue(log(rank: 0).contains("rank 0 got SIGINT"), log(rank: 0))
        XCTAssertTrue(log(rank: 1).contains("rank 1 got SIGINT"))
        XCTAssertTrue(waitUntilGone(Array(result.pids.values), timeout: 3))
    }

    func testStartsOnlyTheChosenNode() throws {
        let topology = try Topology.load(path: topologiesFolder + "/two-host-tcp.toml")
        let script = "echo \"rank $RANK node $NODE_RANK local $LOCAL_RANK/$LOCAL_WORLD_SIZE of $WORLD_SIZE topology $TITAN_TOPOLOGY\""
        let secretFile = folder + "/job.secret"
        let result = try launch(topology, node: 1, script: script, jobID: nil) { $0.jobSecretFile = secretFile }
        XCTAssertEqual(result.exitStatus, 0, read(stderrPath))
        XCTAssertEqual(Set(result.pids.keys), [4, 5, 6, 7])
        XCTAssertEqual(result.jobID, "two-host-tcp", "a partial launch needs a job id every node agrees on")
        for rank in 4 ..< 8 {
            XCTAssertTrue(log(rank: rank).contains(
                "rank \(rank) node 1 local \(rank - 4)/4 of 8 topology \(topology.sourcePath!)"), log(rank: rank))
        }
        XCTAssertThrowsError(try launch(topology, node: 2, script: "true")) { error in
            XCTAssertEqual(error as? LauncherError, .badNode(2, hostCount: 2))
        }
    }

    func testDefaultStartsEveryLocalHost() throws {
        let topology = try Topology.load(path: topologiesFolder + "/two-host-tcp.toml")
        let result = try launch(topology, script: "true", jobID: nil)
        XCTAssertEqual(result.exitStatus, 0)
        XCTAssertEqual(result.pids.count, 8, "both loopback hosts are this machine")
        XCTAssertTrue(result.jobID.hasPrefix("two-host-tcp-"), "a full launch gets a fresh job id")

        var remote = topology
        remote.hosts[0].address = "203.0.113.1"  // TEST-NET-3: never this machine
        remote.hosts[1].address = "203.0.113.2"
        remote.sourcePath = nil
        XCTAssertThrowsError(try launch(remote, script: "true")) { error in
            guard case .noLocalHost = error as? LauncherError else { return XCTFail("\(error)") }
        }
    }

    func testTopologyWithoutAFileIsWrittenForTheRanks() throws {
        let topology = try Topology.parse(toml: "name = \"inline\"\n[[hosts]]\nranks = 2\n", file: "inline.toml")
        let result = try launch(topology, script: "echo \"$TITAN_TOPOLOGY\"")
        XCTAssertEqual(result.exitStatus, 0)
        let path = log(rank: 0).trimmingCharacters(in: .whitespacesAndNewlines)
        XCTAssertTrue(path.hasSuffix("/dump/topology.toml"), path)
        var reloaded = try Topology.load(path: path)
        reloaded.sourcePath = nil
        XCTAssertEqual(reloaded, topology)
    }

    func testUnstartableRankIsAFailure() throws {
        var launcher = Launcher(topology: .local(ranks: 2), executable: "/nonexistent/titan",
                                dumpFolder: folder + "/dump", jobID: "unstartable")
        launcher.stderrFD = open("/dev/null", O_WRONLY)
        defer { close(launcher.stderrFD) }
        let result = try launcher.run()
        XCTAssertEqual(result.exitStatus, 1)
        XCTAssertEqual(result.failure?.rank, 0)
        XCTAssertTrue(result.failure?.reason.contains("could not start rank 0") ?? false)
    }
}
