import Collectives
import Foundation
import XCTest
@testable import Cluster

/// The job secret's file, how ranks get the secret, and the launcher's rules for the secret and the ipc socket folder.
final class JobSecretTests: XCTestCase {
    var folder = ""

    override func setUpWithError() throws { folder = try temporaryFolder() }
    override func tearDown() { try? FileManager.default.removeItem(atPath: folder) }

    func mode(_ path: String) throws -> Int {
        (try FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as? Int) ?? -1
    }

    func testAbsentFileIsCreated0600AndReadBack() throws {
        let path = folder + "/job.secret"
        let secret = try JobSecretFile.loadOrCreate(path: path)
        XCTAssertEqual(try mode(path), 0o600)
        XCTAssertEqual(try String(contentsOfFile: path, encoding: .utf8), secret.hex + "\n")
        XCTAssertEqual(try JobSecretFile.loadOrCreate(path: path), secret, "an existing file is used as it is")
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: folder), ["job.secret"], "no temporary file left")
    }

    func testLaunchersRacingToCreateTheFileEndWithOneSecret() throws {
        let path = folder + "/raced.secret"
        let results = Results()
        DispatchQueue.concurrentPerform(iterations: 16) { i in results.set(i, Result { try JobSecretFile.loadOrCreate(path: path) }) }
        let secrets = try (0..<16).map { try results.get($0).get() }
        XCTAssertEqual(Set(secrets.map(\.hex)).count, 1, "every creator ends with the same secret")
        XCTAssertEqual(try JobSecretFile.load(path: path), secrets[0])
    }

    func testFileOthersMayReadIsRefusedNamingFileAndMode() throws {
        let path = folder + "/open.secret"
        _ = try JobSecretFile.loadOrCreate(path: path)
        for bad in [0o644, 0o640, 0o604, 0o660] {
            chmod(path, mode_t(bad))
            XCTAssertThrowsError(try JobSecretFile.loadOrCreate(path: path)) { error in
                let text = "\(error)"
                XCTAssertTrue(text.contains(path) && text.contains(String(format: "mode %04o", bad)) && text.contains("chmod 600"), text)
            }
        }
        chmod(path, 0o400)
        XCTAssertNoThrow(try JobSecretFile.load(path: path), "read-only for its owner is fine")
    }

    func testMalformedFileIsRefused() throws {
        for (name, content) in [("short", "abcd\n"), ("not-hex", String(repeating: "z", count: 64)), ("empty", "")] {
            let path = folder + "/" + name
            _ = FileManager.default.createFile(atPath: path, contents: Data(content.utf8), attributes: [.posixPermissions: 0o600])
            XCTAssertThrowsError(try JobSecretFile.loadOrCreate(path: path), name) { error in
                XCTAssertTrue("\(error)".contains(path) && "\(error)".contains("does not hold a job secret"), "\(error)")
            }
        }
        let fifo = folder + "/fifo.secret"   // opening it must not wait for a writer
        XCTAssertEqual(mkfifo(fifo, 0o600), 0)
        XCTAssertThrowsError(try JobSecretFile.loadOrCreate(path: fifo)) { XCTAssertTrue("\($0)".contains("is not a regular file"), "\($0)") }
        XCTAssertThrowsError(try JobSecretFile.loadOrCreate(path: folder + "/missing-folder/job.secret")) {
            XCTAssertTrue("\($0)".contains("cannot be created"), "\($0)")
        }
    }

    func testFileOfAnotherUserIsRefused() throws {
        try XCTSkipIf(geteuid() != 0, "needs root to give the file away")
        let path = folder + "/theirs.secret"
        _ = try JobSecretFile.loadOrCreate(path: path)
        XCTAssertEqual(chown(path, 65534, 65534), 0)
        XCTAssertThrowsError(try JobSecretFile.load(path: path)) { XCTAssertTrue("\($0)".contains("belongs to uid 65534"), "\($0)") }
    }

    func testRankSecretComesFromTheFileElseTheLaunchersVariable() throws {
        let secret = JobSecret.generate()
        XCTAssertNil(try JobSecretFile.rankSecret(file: nil, environment: [:]))
        XCTAssertEqual(try JobSecretFile.rankSecret(file: nil, environment: [JobSecret.environmentVariable: secret.hex]), secret)
        let path = folder + "/rank.secret"
        let fromFile = try JobSecretFile.rankSecret(file: path, environment: [JobSecret.environmentVariable: secret.hex])
        XCTAssertNotEqual(fromFile, secret, "--job-secret-file wins")
        XCTAssertThrowsError(try JobSecretFile.rankSecret(file: nil, environment: [JobSecret.environmentVariable: "xyz"])) {
            XCTAssertTrue("\($0)".contains(JobSecret.environmentVariable), "\($0)")
        }
    }

    // MARK: the launcher

    func launcher(_ topology: Topology, node: Int? = nil, script: String) -> Launcher {
        var l = Launcher(topology: topology, node: node, executable: "/bin/sh", arguments: ["-c", script],
                         dumpFolder: folder + "/dump", jobID: "secret-test-\(getpid())")
        l.stdoutFD = open("/dev/null", O_WRONLY)
        l.stderrFD = l.stdoutFD
        l.timeoutSeconds = 60
        return l
    }

    func rankLog(_ rank: Int) -> String {
        (try? String(contentsOfFile: folder + "/dump/logs/rank-\(rank).log", encoding: .utf8)) ?? ""
    }

    func testRanksGetTheSecretInTheirEnvironmentNeverOnTheCommandLine() throws {
        let topology = try Topology.load(path: topologiesFolder + "/two-host-tcp.toml")
        let script = "echo \"secret=$TITAN_JOB_SECRET\"; tr '\\0' ' ' < /proc/$$/cmdline"
        // Every host from one launcher: a fresh secret per job, the same for all ranks.
        XCTAssertEqual(try launcher(topology, script: script).run().exitStatus, 0)
        let line = rankLog(0).split(separator: "\n").first { $0.hasPrefix("secret=") }.map(String.init) ?? ""
        XCTAssertEqual(line.count, "secret=".count + 64, rankLog(0))
        for rank in 1..<8 { XCTAssertTrue(rankLog(rank).contains(line), "rank \(rank)") }
        XCTAssertFalse(rankLog(0).contains(String(line.dropFirst(7)) + " "), "not in the command line")
        let first = line
        XCTAssertEqual(try launcher(topology, script: script).run().exitStatus, 0)
        XCTAssertFalse(rankLog(0).contains(first), "each job its own secret")

        // With a file: the file's secret.
        let path = folder + "/job.secret"
        var withFile = launcher(topology, node: 0, script: script)
        withFile.jobSecretFile = path
        XCTAssertEqual(try withFile.run().exitStatus, 0)
        XCTAssertTrue(rankLog(0).contains("secret=" + (try JobSecretFile.load(path: path))!.hex), rankLog(0))

        // ipc needs no secret.
        XCTAssertEqual(try launcher(.local(ranks: 1), script: script).run().exitStatus, 0)
        XCTAssertTrue(rankLog(0).contains("secret=\n"), rankLog(0))
    }

    func testHostsOfSeparateLaunchersNeedTheSecretFile() throws {
        let topology = try Topology.load(path: topologiesFolder + "/two-host-tcp.toml")
        XCTAssertThrowsError(try launcher(topology, node: 1, script: "true").run()) { error in
            XCTAssertTrue("\(error)".contains("--job-secret-file PATH"), "\(error)")
        }
        var plain = topology
        plain.transportSecurity = .none
        XCTAssertEqual(try launcher(plain, node: 1, script: "true").run().exitStatus, 0, "no secret without CURVE")
    }

    func testSocketFolderOfOthersOrOpenToOthersIsRefused() throws {
        let l = launcher(.local(ranks: 1), script: "true")
        let ipc = "/tmp/titan-" + l.jobID!
        defer { try? FileManager.default.removeItem(atPath: ipc) }
        mkdir(ipc, 0o755)
        chmod(ipc, 0o755)
        XCTAssertThrowsError(try l.run()) { XCTAssertTrue("\($0)".contains("has mode 0755") && "\($0)".contains(ipc), "\($0)") }
        chmod(ipc, 0o700)
        XCTAssertEqual(try l.run().exitStatus, 0, "the user's own 0700 folder (another host's launcher made it) is fine")
        mkdir(ipc, 0o700)
        if geteuid() == 0 {
            chown(ipc, 65534, 65534)
            XCTAssertThrowsError(try l.run()) { XCTAssertTrue("\($0)".contains("belongs to uid 65534"), "\($0)") }
        }
        rmdir(ipc)
        symlink(folder, ipc)
        XCTAssertThrowsError(try l.run()) { XCTAssertTrue("\($0)".contains("is not a directory"), "\($0)") }
        unlink(ipc)
    }

    /// Ranks a scheduler started make the folder themselves, by the same rules: 0700 when they create it, and an
    /// existing one only if it is the user's own and 0700.
    func testScheduledRanksRefuseASocketFolderOpenToOthers() throws {
        let ipc = folder + "/ipc-scheduled"
        let identity = RankIdentity(rank: 0, worldSize: 2, localRank: 0, localWorldSize: 2, nodeRank: 0, jobID: "s",
                                    topologyPath: nil, localRanks: 2, ipcDirectory: ipc, launcherPID: nil, dumpFolder: nil,
                                    scheduler: .openMPI)
        try identity.prepareIPCDirectory()
        XCTAssertEqual(try mode(ipc), 0o700)
        try identity.prepareIPCDirectory()   // the next rank of the host finds it
        chmod(ipc, 0o755)
        XCTAssertThrowsError(try identity.prepareIPCDirectory()) {
            XCTAssertTrue("\($0)".contains("has mode 0755") && "\($0)".contains(ipc), "\($0)")
        }
        rmdir(ipc)
        symlink(folder, ipc)
        XCTAssertThrowsError(try identity.prepareIPCDirectory()) { XCTAssertTrue("\($0)".contains("is not a directory"), "\($0)") }
        unlink(ipc)
    }
}

private final class Results: @unchecked Sendable {
    private let lock = NSLock()
    private var values: [Int: Result<JobSecret, Error>] = [:]
    func set(_ i: Int, _ value: Result<JobSecret, Error>) { lock.lock(); values[i] = value; lock.unlock() }
    func get(_ i: Int) -> Result<JobSecret, Error> { lock.lock(); defer { lock.unlock() }; return values[i]! }
}
