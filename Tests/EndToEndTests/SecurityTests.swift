import Cluster
import Collectives
import Foundation
import XCTest
#if canImport(Glibc)
import Glibc
#endif

/// tcp jobs with CURVE, as users run them: strangers knocking on every port of a running job change nothing (the job
/// trains bit for bit what it trains alone), two hosts in their own network namespaces train over a veth link while a
/// third namespace without the secret cannot join, and ranks started without a launcher share a secret file.
final class SecurityTests: XCTestCase {
    static let steps = 80
    static let job = ["--config", "debugmodel_moe", "--training.steps", "\(steps)", "--training.local_batch_size", "2",
                      "--comm.init_timeout_seconds", "60", "--comm.timeout_seconds", "30"]

    struct Step: Decodable { var step: Int; var loss: Double }

    func losses(_ dump: String) throws -> [UInt64] {
        let text = (try? String(contentsOfFile: dump + "/metrics.jsonl", encoding: .utf8)) ?? ""
        return try text.split(separator: "\n").map { try JSONDecoder().decode(Step.self, from: Data($0.utf8)).loss.bitPattern }
    }

    func logs(_ dump: String) -> String {
        let files = (try? FileManager.default.contentsOfDirectory(atPath: dump + "/logs")) ?? []
        return files.sorted().compactMap { try? String(contentsOfFile: dump + "/logs/" + $0, encoding: .utf8) }.joined(separator: "\n")
    }

    /// Two hosts of two ranks each, tcp with CURVE (the default).
    func topology(_ addresses: [String], base: Int) throws -> String {
        let path = temporaryFolder() + ".toml"
        addTeardownBlock { try? FileManager.default.removeItem(atPath: path) }
        try """
            transport = "tcp"
            [[hosts]]
            address = "\(addresses[0])"
            ranks = 2
            base_port = \(base)
            [[hosts]]
            address = "\(addresses[1])"
            ranks = 2
            base_port = \(base + 32)
            [parallelism]
            data_parallel_shard_degree = -1
            expert_parallel_degree = 2
            """.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    static let base = 20000 + Int(getpid() % 190) * 64   // below the ephemeral ports (32768-60999): an outgoing connection never holds one
    static let jobID = "curve-e2e-\(getpid())"

    /// The job alone, on loopback (computed once).
    private static var reference: [UInt64]?
    func referenceLosses(secretFile: String) throws -> [UInt64] {
        if let r = Self.reference { return r }
        let dump = temporaryFolder()
        let r = try Titan.run(["launch", "--topology", try topology(["127.0.0.1", "127.0.0.2"], base: Self.base), "--job-id", Self.jobID,
                               "--job-secret-file", secretFile, "train"] + Self.job + ["--job.dump_folder", dump])
        XCTAssertEqual(r.status, 0, String(r.stderr.suffix(3000)))
        let l = try losses(dump)
        XCTAssertEqual(l.count, Self.steps)
        Self.reference = l
        return l
    }

    func secretFile() throws -> (path: String, secret: JobSecret) {
        let path = temporaryFolder() + ".secret"
        addTeardownBlock { try? FileManager.default.removeItem(atPath: path) }
        return (path, try JobSecretFile.loadOrCreate(path: path))
    }

    /// Garbage, plain ZMTP, header-shaped frames over wrong keys and a replayed recording of a member's session, sent to
    /// every port of every rank while the job trains: it finishes with the losses of the job alone, bit for bit, and
    /// the ranks log the refused address.
    func testStrangersNeverReachACollective() throws {
        let (path, secret) = try secretFile()
        let reference = try referenceLosses(secretFile: path)
        let sources = Stranger.Sources(garbage: "127.0.0.21", fakeHello: "127.0.0.22", replay: "127.0.0.23", plain: "127.0.0.24",
                                       foreignKey: "127.0.0.25", otherSecret: "127.0.0.26")
        let stranger = Stranger(jobID: Self.jobID, secret: secret,
                                hosts: [("127.0.0.1", Self.base, 2), ("127.0.0.2", Self.base + 32, 2)], sources: sources)
        try stranger.recordSession(secret: secret)

        let dump = temporaryFolder()
        defer { stranger.stop() }
        let r = try Titan.run(["launch", "--topology", try topology(["127.0.0.1", "127.0.0.2"], base: Self.base), "--job-id", Self.jobID,
                               "--job-secret-file", path, "train"] + Self.job + ["--job.dump_folder", dump]) { _ in stranger.start() }
        let roundsWhileRunning = stranger.rounds
        stranger.stop()
        XCTAssertEqual(r.status, 0, String(r.stderr.suffix(3000)))
        XCTAssertEqual(try losses(dump), reference, "the losses of the job alone, bit for bit")
        XCTAssertGreaterThanOrEqual(roundsWhileRunning, 1, "the stranger tried everything at least once while the job ran")
        XCTAssertGreaterThan(stranger.connectedRaw, 0)
        // Each kind of attack comes from its own address, so each has its line (once a minute per rank and address).
        let text = logs(dump)
        for expected in ["from 127.0.0.24 to tcp://127.0.0.", "from 127.0.0.25: a CURVE key that is not one of this job's",
                         "from 127.0.0.26 to tcp://127.0.0."] {
            XCTAssertTrue(text.contains("transport: refused a connection " + expected), "no line with \(expected):\n\(text.suffix(3000))")
        }
    }

    /// Two hosts, each a network namespace with its own launcher (--node), joined by a veth pair; a third namespace,
    /// linked to the first, attacks both without the secret. Training finishes with the loopback run's losses.
    func testTwoHostsInNetworkNamespaces() throws {
        let (path, secret) = try secretFile()
        let reference = try referenceLosses(secretFile: path)
        let net = try Namespaces(name: "tt\(getpid() % 100000)")
        addTeardownBlock { net.remove() }
        let topo = try topology([net.hostA, net.hostB], base: Self.base)
        let stranger = Stranger(jobID: Self.jobID, secret: secret, hosts: [(net.hostA, Self.base, 2), (net.hostB, Self.base + 32, 2)])
        try stranger.recordSession(secret: secret)   // on loopback, before entering the stranger's namespace

        let dump = temporaryFolder()
        func launcher(_ node: Int) -> Process {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: "/usr/sbin/ip")
            p.arguments = ["netns", "exec", node == 0 ? net.a : net.b, Titan.path, "launch", "--topology", topo, "--node", "\(node)",
                           "--job-id", Self.jobID, "--job-secret-file", path, "train"] + Self.job + ["--job.dump_folder", dump]
            p.environment = ProcessInfo.processInfo.environment.merging(["OPENBLAS_NUM_THREADS": "1"]) { $1 }
            p.standardOutput = FileHandle.nullDevice
            return p
        }
        let node1 = launcher(1), node0 = launcher(0)
        let errors = [Pipe(), Pipe()]
        node0.standardError = errors[0]
        node1.standardError = errors[1]
        addTeardownBlock { [node0, node1] in
            for p in [node0, node1] where p.isRunning { kill(p.processIdentifier, SIGKILL) }
        }
        defer { stranger.stop() }
        try node1.run()
        try node0.run()
        stranger.start(prepare: { net.enter(net.c) })
        let e0 = String(decoding: errors[0].fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        let e1 = String(decoding: errors[1].fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        node0.waitUntilExit()
        node1.waitUntilExit()
        let rounds = stranger.rounds
        stranger.stop()
        XCTAssertEqual(node0.terminationStatus, 0, String(e0.suffix(3000)))
        XCTAssertEqual(node1.terminationStatus, 0, String(e1.suffix(3000)))
        XCTAssertEqual(try losses(dump), reference, "the loopback run's losses, bit for bit")
        XCTAssertGreaterThanOrEqual(rounds, 1, "the third namespace tried everything at least once while the job ran")
        XCTAssertGreaterThan(stranger.connectedRaw, 0, "the third namespace reached the ranks' ports")
        let text = logs(dump)
        XCTAssertTrue(text.contains("transport: refused a connection from \(net.hostC)"), String(text.suffix(3000)))
        for (i, address) in [net.hostA, net.hostB].enumerated() {
            XCTAssertTrue(text.contains(" to tcp://\(address):"), "host \(i) listens on its veth address only")
        }
    }

    /// transport_security = "none": plain tcp, with a warning at start; no secret needed, even for --node launchers.
    func testTransportSecurityNoneRunsPlainWithAWarning() throws {
        let topo = try topology(["127.0.0.1", "127.0.0.2"], base: Self.base)
        try ("transport_security = \"none\"\n" + String(contentsOfFile: topo, encoding: .utf8)).write(toFile: topo, atomically: true, encoding: .utf8)
        let r = try Titan.run(["launch", "--topology", topo, "--dump-folder", temporaryFolder(), "collectives", "--large-bytes", "65536"])
        XCTAssertEqual(r.status, 0, String(r.stderr.suffix(2000)))
        XCTAssertTrue(r.stdout.hasSuffix("[rank 0] 426 passed, 0 failed\n"), String(r.stdout.suffix(300)))
        XCTAssertEqual(r.stderr.components(separatedBy: "warning: transport_security = \"none\"").count, 2, "warned once: \(r.stderr.prefix(2000))")

        // What the warning means: the stranger that changes nothing under CURVE breaks a plain job.
        let stranger = Stranger(jobID: Self.jobID, secret: JobSecret.generate(),
                                hosts: [("127.0.0.1", Self.base, 2), ("127.0.0.2", Self.base + 32, 2)])
        defer { stranger.stop() }
        let broken = try Titan.run(["launch", "--topology", topo, "--job-id", Self.jobID, "--dump-folder", temporaryFolder(), "train"]
                                   + Self.job) { _ in stranger.start() }
        stranger.stop()
        XCTAssertNotEqual(broken.status, 0, "a plain job takes the stranger's header-shaped frames")
        XCTAssertTrue(broken.stderr.contains("bad frame"), String(broken.stderr.suffix(2000)))
    }

    /// Ranks a scheduler starts (no launcher) read the same --job-secret-file; one with another secret cannot join.
    func testRanksWithoutALauncherShareTheSecretFile() throws {
        let (path, _) = try secretFile()
        let topo = try topology(["127.0.0.1", "127.0.0.2"], base: Self.base)
        func run(secretFiles: [String], timeout: Int) throws -> [(status: Int32, output: String)] {
            let processes = (0..<4).map { rank -> (Process, Pipe) in
                let p = Process()
                p.executableURL = URL(fileURLWithPath: Titan.path)
                p.arguments = ["collectives", "--large-bytes", "65536", "--comm.timeout_seconds", "\(timeout)",
                               "--job-secret-file", secretFiles[rank]]
                p.environment = ProcessInfo.processInfo.environment.merging([
                    "RANK": "\(rank)", "WORLD_SIZE": "4", "LOCAL_RANK": "\(rank % 2)", "LOCAL_WORLD_SIZE": "2",
                    "NODE_RANK": "\(rank / 2)", "TITAN_JOB_ID": Self.jobID + "-sched", "TITAN_TOPOLOGY": topo,
                    "TITAN_IPC_DIR": "/tmp", "OPENBLAS_NUM_THREADS": "1",
                ]) { $1 }
                let err = Pipe()
                p.standardOutput = err
                p.standardError = err
                return (p, err)
            }
            for (p, _) in processes { try p.run() }
            return processes.map { p, err in
                let text = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
                p.waitUntilExit()
                return (p.terminationStatus, text)
            }
        }
        let together = try run(secretFiles: Array(repeating: path, count: 4), timeout: 60)
        for (rank, r) in together.enumerated() { XCTAssertEqual(r.status, 0, "rank \(rank): \(r.output.suffix(2000))") }
        XCTAssertTrue(together[0].output.contains("426 passed, 0 failed"), String(together[0].output.suffix(500)))

        let (otherPath, _) = try secretFile()
        let started = Date()
        let split = try run(secretFiles: [path, path, path, otherPath], timeout: 3)
        XCTAssertLessThan(Date().timeIntervalSince(started), 30)
        XCTAssertTrue(split.allSatisfy { $0.status != 0 }, "a rank with another secret never joins: \(split.map(\.status))")
        let all = split.map(\.output).joined(separator: "\n")
        XCTAssertTrue(all.contains("timed out"), String(all.suffix(2000)))
        XCTAssertTrue(all.contains("transport: refused a connection from 127.0.0.1"), "its peers refuse it: \(all.suffix(2000))")
    }
}

/// Three network namespaces: A and B (the two hosts) joined by a veth pair, C (the stranger) joined to A by another,
/// with A forwarding so C reaches B too. Only addresses inside these namespaces; nothing leaves them.
final class Namespaces: @unchecked Sendable {
    let a: String, b: String, c: String
    let hostA = "10.213.0.1", hostB = "10.213.0.2", hostC = "10.213.1.2"
    private var made: [String] = []

    init(name: String) throws {
        a = name + "a"; b = name + "b"; c = name + "c"
        guard getuid() == 0, FileManager.default.isExecutableFile(atPath: "/usr/sbin/ip") else {
            throw XCTSkip("network namespaces need root and iproute2 (/usr/sbin/ip)")
        }
        for ns in [a, b, c] {
            let r = Self.ip(["netns", "add", ns])
            if r.status != 0 {
                remove()
                throw XCTSkip("`ip netns add` is not permitted here (\(r.output.trimmingCharacters(in: .whitespacesAndNewlines))): skipping the two-namespace test")
            }
            made.append(ns)
        }
        let steps: [[String]] = [
            ["-n", a, "link", "set", "lo", "up"], ["-n", b, "link", "set", "lo", "up"], ["-n", c, "link", "set", "lo", "up"],
            ["-n", a, "link", "add", "vab", "type", "veth", "peer", "name", "vba", "netns", b],
            ["-n", a, "link", "add", "vac", "type", "veth", "peer", "name", "vca", "netns", c],
            ["-n", a, "addr", "add", hostA + "/24", "dev", "vab"], ["-n", b, "addr", "add", hostB + "/24", "dev", "vba"],
            ["-n", a, "addr", "add", "10.213.1.1/24", "dev", "vac"], ["-n", c, "addr", "add", hostC + "/24", "dev", "vca"],
            ["-n", a, "link", "set", "vab", "up"], ["-n", b, "link", "set", "vba", "up"],
            ["-n", a, "link", "set", "vac", "up"], ["-n", c, "link", "set", "vca", "up"],
            ["-n", c, "route", "add", "10.213.0.0/24", "via", "10.213.1.1"],
            ["-n", b, "route", "add", "10.213.1.0/24", "via", hostA],
            ["netns", "exec", a, "sysctl", "-qw", "net.ipv4.ip_forward=1"],
        ]
        for step in steps {
            let r = Self.ip(step)
            if r.status != 0 {
                remove()
                throw XCTSkip("could not set up the namespaces (ip \(step.joined(separator: " ")): \(r.output)): skipping")
            }
        }
    }

    func remove() {
        for ns in made { _ = Self.ip(["netns", "del", ns]) }
        made = []
    }

    /// Moves the calling thread (and the threads it starts from now on) into namespace `ns`.
    func enter(_ ns: String) -> Bool {
        typealias SetNS = @convention(c) (Int32, Int32) -> Int32
        guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "setns") else { return false }
        let fd = open("/var/run/netns/\(ns)", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        return unsafeBitCast(symbol, to: SetNS.self)(fd, 0x4000_0000 /* CLONE_NEWNET */) == 0
    }

    static func ip(_ arguments: [String]) -> (status: Int32, output: String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/sbin/ip")
        p.arguments = arguments
        let out = Pipe()
        p.standardOutput = out
        p.standardError = out
        do { try p.run() } catch { return (-1, "\(error)") }
        let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        return (p.terminationStatus, text)
    }
}
