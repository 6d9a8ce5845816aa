import XCTest
import Collectives
@testable import Cluster

final class RankIdentityTests: XCTestCase {
    let valid: [String: String] = [
        "RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4", "NODE_RANK": "1",
        "TITAN_JOB_ID": "job-1", "TITAN_TOPOLOGY": "", "TITAN_LOCAL_RANKS": "8",
        "TITAN_IPC_DIR": "/tmp/titan-job-1", "TITAN_LAUNCHER_PID": "1234", "TITAN_DUMP_FOLDER": "/tmp/out",
        "TITAN_CPUS": "1,3-4",
    ]

    func testNoRankMeansNoLauncher() throws {
        XCTAssertNil(try RankIdentity.fromEnvironment(["PATH": "/bin"]))
    }

    func testReadsEveryVariable() throws {
        let identity = try XCTUnwrap(RankIdentity.fromEnvironment(valid))
        XCTAssertEqual(identity, RankIdentity(
            rank: 5, worldSize: 8, localRank: 1, localWorldSize: 4, nodeRank: 1, jobID: "job-1",
            topologyPath: nil, localRanks: 8, ipcDirectory: "/tmp/titan-job-1", launcherPID: 1234,
            dumpFolder: "/tmp/out", cpus: [1, 3, 4]))
        // What the launcher writes is what the rank reads.
        XCTAssertEqual(try RankIdentity.fromEnvironment(identity.environment), identity)
        let spec = try identity.clusterSpec(timeoutSeconds: 7)
        XCTAssertEqual(spec, Topology.local(ranks: 8).clusterSpec(jobID: "job-1", ipcDirectory: "/tmp/titan-job-1",
                                                                  timeoutSeconds: 7))
    }

    func testTopologyFileIsReloaded() throws {
        var env = valid
        env["TITAN_TOPOLOGY"] = topologiesFolder + "/two-host-tcp.toml"
        env["TITAN_LOCAL_RANKS"] = nil
        let identity = try XCTUnwrap(RankIdentity.fromEnvironment(env))
        let spec = try identity.clusterSpec(timeoutSeconds: 1)
        XCTAssertEqual(spec.transport, .tcp)
        XCTAssertEqual(spec.portOfRank[5], 29600 + ClusterSpec.maxGroupsPerRank)
    }

    /// Each malformed environment names the variable at fault.
    func testMalformedVariablesAreNamed() {
        let cases: [(change: [String: String?], variable: String)] = [
            (["RANK": "two"], "RANK"),
            (["RANK": "8"], "RANK"),
            (["WORLD_SIZE": nil], "WORLD_SIZE"),
            (["WORLD_SIZE": "0"], "WORLD_SIZE"),
            (["LOCAL_RANK": "4"], "LOCAL_RANK"),
            (["LOCAL_WORLD_SIZE": "9"], "LOCAL_WORLD_SIZE"),
            (["NODE_RANK": "-1"], "NODE_RANK"),
            (["TITAN_JOB_ID": ""], "TITAN_JOB_ID"),
            (["TITAN_IPC_DIR": nil], "TITAN_IPC_DIR"),
            (["TITAN_TOPOLOGY": nil], "TITAN_TOPOLOGY"),
            (["TITAN_TOPOLOGY": "relative.toml"], "TITAN_TOPOLOGY"),
            (["TITAN_LOCAL_RANKS": "x"], "TITAN_LOCAL_RANKS"),
            (["TITAN_LOCAL_RANKS": "4"], "TITAN_LOCAL_RANKS"),
            (["TITAN_LAUNCHER_PID": "abc"], "TITAN_LAUNCHER_PID"),
            (["TITAN_CPUS": "0-x"], "TITAN_CPUS"),
            (["TITAN_CPUS": "3-1"], "TITAN_CPUS"),
        ]
        for (change, variable) in cases {
            var env = valid
            for (key, value) in change { env[key] = value }
            XCTAssertThrowsError(try RankIdentity.fromEnvironment(env), "\(change)") { error in
                let error = error as? RankIdentityError
                XCTAssertEqual(error?.variable, variable, "\(change)")
                XCTAssertTrue(error?.description.contains(variable) ?? false)
            }
        }
    }

    #if os(Linux)
    /// A rank whose launcher is SIGKILLed exits on its own. The "rank" is this test binary run
    /// again with only `WatchdogHelperTests` selected; its "launcher" is a shell we SIGKILL.
    func testWatchdogEndsARankWhoseLauncherWasKilled() throws {
        let selfExecutable = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")
        let folder = try temporaryFolder()
        let pidFile = folder + "/rank.pid"
        let marker = folder + "/watchdog-started"
        let script = """
            TITAN_LAUNCHER_PID=$$ TITAN_WATCHDOG_HELPER="\(marker)" "$0" ClusterTests.WatchdogHelperTests >/dev/null 2>&1 &
            echo $! > "\(pidFile)"
            wait
            """
        let shell = try spawnProcess(executable: "/bin/sh", arguments: ["-c", script, selfExecutable],
                                     environment: ProcessInfo.processInfo.environment,
                                     stdoutFD: STDERR_FILENO, stderrFD: STDERR_FILENO)
        let rankPID = try waitForPID(file: pidFile)
        defer {
            kill(rankPID, SIGKILL)  // only matters when the test fails
            try? FileManager.default.removeItem(atPath: folder)
        }
        XCTAssertEqual(try waitForPID(file: marker, timeout: 30), rankPID, "the helper never started its watchdog")
        XCTAssertFalse(processIsGone(rankPID), "the helper rank should be running")

        kill(shell, SIGKILL)
        var status: Int32 = 0
        waitpid(shell, &status, 0)
        XCTAssertTrue(waitUntilGone([rankPID], timeout: 5), "rank outlived its killed launcher")
    }
    #endif
}

/// Not a real test: the body of the "rank" process that testWatchdogEndsARankWhoseLauncherWasKilled
/// starts. Without TITAN_WATCHDOG_HELPER (the file to write our pid into once the watchdog runs)
/// it does nothing.
final class WatchdogHelperTests: XCTestCase {
    func testRankHelper() throws {
        let env = ProcessInfo.processInfo.environment
        guard let marker = env["TITAN_WATCHDOG_HELPER"],
              let pid = env["TITAN_LAUNCHER_PID"].flatMap(Int32.init) else {
            return
        }
        ParentWatchdog.start(launcherPID: pid, rank: 0, pollInterval: 0.1)
        try String(getpid()).write(toFile: marker, atomically: true, encoding: .utf8)
        Thread.sleep(forTimeInterval: 30)
        XCTFail("the watchdog should have ended this process")
    }
}

// MARK: - helpers shared by the process tests

func temporaryFolder() throws -> String {
    let path = NSTemporaryDirectory() + "cluster-tests-" + UUID().uuidString.prefix(8)
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}

func waitForPID(file: String, timeout: Double = 10) throws -> Int32 {
    let deadline = Date().addingTimeInterval(timeout)
    while Date() < deadline {
        if let text = try? String(contentsOfFile: file, encoding: .utf8),
           let pid = Int32(text.trimmingCharacters(in: .whitespacesAndNewlines)) {
            return pid
        }
        Thread.sleep(forTimeInterval: 0.05)
    }
    throw NSError(domain: "ClusterTests", code: 1, userInfo: [NSLocalizedDescriptionKey: "no pid in \(file)"])
}

/// Gone = no such process, or a zombie (dead, waiting for a parent that is not us to reap it).
func processIsGone(_ pid: Int32) -> Bool {
    if kill(pid, 0) != 0 && errno == ESRCH { return true }
    #if os(Linux)
    if let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
       let close = stat.lastIndex(of: ")") {
        let state = stat[stat.index(close, offsetBy: 2)...].prefix(1)
        return state == "Z" || state == "X"
    }
    #endif
    return false
}

func waitUntilGone(_ pids: [Int32], timeout: Double) -> Bool {
    let deadline = Date().addingTimeInterval(timeout)
    while Date() < deadline {
        if pids.allSatisfy(processIsGone) { return true }
        Thread.sleep(forTimeInterval: 0.05)
    }
    return pids.allSatisfy(processIsGone)
}
