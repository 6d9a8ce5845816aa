import CSodium
import CZeroMQ
import Foundation
import XCTest
@testable import Collectives

/// CURVE keys derived from the job secret, and two ranks (each with its own ZeroMQ context and ZAP handler, as two
/// processes have) talking over tcp while strangers knock on their ports.
final class CurveTests: XCTestCase {
    let secret = try! JobSecret(hex: String(repeating: "0123456789abcdef", count: 4))

    func testKeysAreDeterministicDistinctPerRankAndJobAndMatchLibsodium() throws {
        XCTAssertTrue(CurveSupport.isAvailable, "Debian's libzmq has CURVE")
        let a = secret.keys(jobID: "job", worldSize: 4, rank: 1)
        let b = secret.keys(jobID: "job", worldSize: 4, rank: 2)
        XCTAssertEqual(a.publicKeys, b.publicKeys, "every rank computes the same public keys")
        XCTAssertEqual(a.publicKeys, secret.keys(jobID: "job", worldSize: 4, rank: 1).publicKeys, "deterministic")
        XCTAssertEqual(Set(a.publicKeys).count, 4, "one key per rank")
        XCTAssertTrue(a.publicKeys.allSatisfy { $0.count == 32 })
        XCTAssertEqual(a.publicKey, a.publicKeys[1])
        XCTAssertNotEqual(a.secretKey, b.secretKey)
        XCTAssertTrue(Set(secret.keys(jobID: "other job", worldSize: 4, rank: 0).publicKeys).isDisjoint(with: a.publicKeys),
                      "another job id gives other keys, even from the same secret file")
        XCTAssertTrue(Set(JobSecret.generate().keys(jobID: "job", worldSize: 4, rank: 0).publicKeys).isDisjoint(with: a.publicKeys))
        XCTAssertEqual(secret.keys(jobID: "job", worldSize: 2, rank: 0).publicKeys, Array(a.publicKeys.prefix(2)),
                       "a rank's key does not depend on the world size")
        // libzmq's public key (zmq_curve_public, what the code uses) is Curve25519's: libsodium computes the same.
        for rank in 0..<4 {
            let secretKey = secret.rankSecretKey(jobID: "job", rank: rank)
            var expected = [UInt8](repeating: 0, count: 32)
            XCTAssertEqual(crypto_scalarmult_base(&expected, secretKey), 0)
            XCTAssertEqual(a.publicKeys[rank], expected, "rank \(rank)")
        }
    }

    func testSecretTextAndRedaction() throws {
        let fresh = JobSecret.generate()
        XCTAssertNotEqual(fresh, JobSecret.generate(), "a CSPRNG does not repeat 32 bytes")
        XCTAssertEqual(try JobSecret(hex: fresh.hex + "\n"), fresh)
        XCTAssertEqual(try JobSecret(hex: fresh.hex.uppercased()), fresh)
        XCTAssertEqual(fresh.hex.count, 64)
        for bad in ["", "abc", String(repeating: "g", count: 64), String(repeating: "a", count: 66)] {
            XCTAssertThrowsError(try JobSecret(hex: bad)) { XCTAssertTrue("\($0)".contains("malformed job secret"), "\($0)") }
        }
        var dumped = ""
        dump(fresh, to: &dumped)
        for text in ["\(fresh)", String(reflecting: fresh), dumped, "\(ClusterSpec(jobID: "j", worldSize: 1, transport: .tcp, jobSecret: fresh))"] {
            XCTAssertFalse(text.contains(fresh.hex) || text.contains(fresh.hex.prefix(8)), "the secret leaks through \(text)")
        }
    }

    func testTCPBindsTheHostAddressOnly() throws {
        var spec = ClusterSpec(jobID: "j", worldSize: 3, transport: .tcp, hostOfRank: ["127.0.0.2", "::1", "localhost"],
                               portOfRank: [1000, 2000, 3000])
        XCTAssertEqual(spec.bindAddress(rank: 0, groupSlot: 2), "tcp://127.0.0.2:1002")
        XCTAssertEqual(spec.bindAddress(rank: 1, groupSlot: 0), "tcp://[::1]:2000")
        XCTAssertEqual(spec.connectAddress(rank: 1, groupSlot: 0), "tcp://[::1]:2000")
        XCTAssertEqual(try spec.resolvedBindAddress(rank: 2, groupSlot: 1), "tcp://127.0.0.1:3001", "a name binds its address")
        spec.hostOfRank = ["localhost", "203.0.113.7"]
        spec.portOfRank = [1000, 1000]
        spec.worldSize = 2
        XCTAssertThrowsError(try spec.resolvedBindAddress(rank: 0, groupSlot: 0)) {
            XCTAssertTrue("\($0)".contains("resolves to the loopback address"), "\($0)")
        }
    }

    func testRefusalsAreReportedOncePerAddressPerInterval() throws {
        let lines = Lines()
        let log = RefusalLog(interval: 0.3) { lines.append($0) }
        for _ in 0..<5 { log.refused(address: "10.0.0.9", reason: "garbage", endpoint: "tcp://127.0.0.1:1") }
        log.refused(address: "10.0.0.8", reason: "plain ZMTP", endpoint: nil)
        XCTAssertEqual(lines.all.count, 2, "\(lines.all)")
        XCTAssertTrue(lines.all[0].hasPrefix("refused a connection from 10.0.0.9 to tcp://127.0.0.1:1: garbage"), lines.all[0])
        Thread.sleep(forTimeInterval: 0.35)
        log.refused(address: "10.0.0.9", reason: "garbage", endpoint: nil)
        XCTAssertEqual(lines.all.count, 3)
        XCTAssertTrue(lines.all[2].contains("(4 more refused since the last line)"), lines.all[2])
        XCTAssertEqual(log.count, 7)
    }

    func testTCPWithCurveNeedsTheSecret() {
        let spec = ClusterSpec(jobID: "j", worldSize: 2, transport: .tcp, hostOfRank: ["127.0.0.1", "127.0.0.1"],
                               portOfRank: [1, 17])
        XCTAssertThrowsError(try Communicator(spec: spec, rank: 0)) {
            XCTAssertTrue("\($0)".contains("needs the job's secret") && "\($0)".contains("--job-secret-file"), "\($0)")
        }
    }

    /// Two ranks with CURVE on loopback; a plain ZMTP sender, a CURVE client that knows rank 1's public key but not a
    /// member's secret key (ZAP refuses it) and a rank of the same job id with another secret all send header-shaped
    /// frames to rank 1 first: none arrives (a frame that did would fail the collective), and rank 1 reports them.
    func testCurveRanksTalkAndRefuseStrangers() throws {
        let base = 24000 + Int(getpid() % 200) * 40   // below the ephemeral ports
        let spec = ClusterSpec(jobID: "curve-unit", worldSize: 2, transport: .tcp, hostOfRank: ["127.0.0.1", "127.0.0.1"],
                               portOfRank: [base, base + 16], timeoutSeconds: 20, transportSecurity: .curve, jobSecret: secret)
        let logs = [Lines(), Lines()]
        let comms = try (0..<2).map { rank in try Communicator(spec: spec, rank: rank, securityLog: { logs[rank].append($0) }) }
        defer { comms.forEach { $0.shutdown() } }

        let target = "tcp://127.0.0.1:\(base + 16)"
        let context = zmq_ctx_new()!
        defer { zmq_ctx_term(context) }
        var sockets: [UnsafeMutableRawPointer] = []
        // Each stranger comes from its own loopback address, so each gets its own line, with its reason.
        func stranger(from source: String, _ configure: (UnsafeMutableRawPointer) -> Void) {
            let s = zmq_socket(context, ZMQ_PUSH)!
            var linger: Int32 = 0
            zmq_setsockopt(s, ZMQ_LINGER, &linger, 4)
            configure(s)
            XCTAssertEqual(zmq_connect(s, target.replacingOccurrences(of: "tcp://", with: "tcp://\(source):0;")), 0)
            var header = [UInt8](repeating: 0, count: 48)   // magic "STTN", version 1: a frame of collective #1
            header.replaceSubrange(0..<6, with: [0x53, 0x54, 0x54, 0x4E, 1, 0])
            header[6] = 3
            _ = zmq_send(s, header, header.count, ZMQ_SNDMORE | ZMQ_DONTWAIT)
            _ = zmq_send(s, [UInt8](repeating: 7, count: 4), 4, ZMQ_DONTWAIT)
            sockets.append(s)
        }
        func setKey(_ s: UnsafeMutableRawPointer, _ option: Int32, _ key: [UInt8]) {
            XCTAssertEqual(zmq_setsockopt(s, option, key, 32), 0)
        }
        let kinds: [(source: String, line: String, configure: (UnsafeMutableRawPointer) -> Void)] = [
            // plain ZMTP (whichever side sees the mechanisms differ first hangs up: "did not offer CURVE" or "closed")
            ("127.0.0.11", "refused a connection from 127.0.0.11 to \(target): it ", { _ in }),
            ("127.0.0.12", "refused a connection from 127.0.0.12: a CURVE key that is not one of this job's", { s in
                // knows rank 1's public key, has a keypair of its own
                var pub = [CChar](repeating: 0, count: 41), sec = [CChar](repeating: 0, count: 41)
                XCTAssertEqual(zmq_curve_keypair(&pub, &sec), 0)
                setKey(s, ZMQ_CURVE_SERVERKEY, self.secret.keys(jobID: "curve-unit", worldSize: 2, rank: 1).publicKeys[1])
                XCTAssertEqual(zmq_setsockopt(s, ZMQ_CURVE_PUBLICKEY, pub, 40), 0)
                XCTAssertEqual(zmq_setsockopt(s, ZMQ_CURVE_SECRETKEY, sec, 40), 0)
            }),
            ("127.0.0.13", "refused a connection from 127.0.0.13 to \(target): its handshake failed the cryptographic checks", { s in
                // rank 0 of the same job id, with another secret
                let other = JobSecret.generate().keys(jobID: "curve-unit", worldSize: 2, rank: 0)
                setKey(s, ZMQ_CURVE_SERVERKEY, other.publicKeys[1])
                setKey(s, ZMQ_CURVE_PUBLICKEY, other.publicKey)
                setKey(s, ZMQ_CURVE_SECRETKEY, other.secretKey)
            }),
        ]
        // The ZAP handler always knows the address; a connection libzmq refuses before ZAP may be closed before the
        // monitor reads its address, and is then reported under "an address that closed before it could be read" (a
        // line of its own): knock again until each address has its line.
        let deadline = Date().addingTimeInterval(15)
        repeat {
            for kind in kinds where !logs[1].all.contains(where: { $0.hasPrefix(kind.line) }) {
                stranger(from: kind.source, kind.configure)
            }
            usleep(50_000)
        } while !kinds.allSatisfy({ kind in logs[1].all.contains { $0.hasPrefix(kind.line) } }) && Date() < deadline
        sockets.forEach { zmq_close($0) }

        let results = Results()
        let done = DispatchGroup()
        for comm in comms {
            DispatchQueue.global().async(group: done) {
                do { results.set(comm.rank, try comm.world.allReduce([Float(comm.rank + 1), 10], op: .sum)) }
                catch { results.set(comm.rank, error) }
            }
        }
        done.wait()
        for rank in 0..<2 { XCTAssertEqual(results.get(rank) as? [Float], [3, 20], "rank \(rank): \(String(describing: results.get(rank)))") }
        XCTAssertGreaterThanOrEqual(comms[1].refusedConnections, 3)
        let text = logs[1].all.joined(separator: "\n")
        for kind in kinds { XCTAssertTrue(text.contains(kind.line), "no line \(kind.line) in:\n\(text)") }
        XCTAssertLessThanOrEqual(logs[1].all.count, 4, "one line per address a minute: \(text)")
        XCTAssertEqual(logs[0].all, [], "nobody knocked on rank 0")
    }
}

final class Lines: @unchecked Sendable {
    private let lock = NSLock()
    private var lines: [String] = []
    func append(_ line: String) { lock.lock(); lines.append(line); lock.unlock() }
    var all: [String] { lock.lock(); defer { lock.unlock() }; return lines }
}

private final class Results: @unchecked Sendable {
    private let lock = NSLock()
    private var values: [Int: Any] = [:]
    func set(_ rank: Int, _ value: Any) { lock.lock(); values[rank] = value; lock.unlock() }
    func get(_ rank: Int) -> Any? { lock.lock(); defer { lock.unlock() }; return values[rank] }
}
