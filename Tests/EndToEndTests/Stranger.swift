import CZeroMQ
import Foundation
@testable import Collectives
#if canImport(Glibc)
import Glibc
#endif

/// Someone who is not a member of a tcp job and tries every way into its listening ports, over and over while the job
/// runs: garbage bytes, a ZMTP greeting that offers CURVE followed by garbage, plain ZMTP (a PUSH without CURVE),
/// a CURVE client that knows a rank's public key but holds no member's secret key (the ZAP handler's case), a rank of
/// the same job id with another secret, and a recorded session of a real member replayed byte for byte. Every ZeroMQ
/// attack sends header-shaped frames with the job's hash (what a collective would take). None of it may reach one.
final class Stranger: @unchecked Sendable {
    struct Target { var host: String; var port: Int; var rank: Int; var slot: Int }

    let jobID: String
    let worldSize: Int
    let targets: [Target]
    /// The job's public keys (a stranger may well learn them: they are public).
    private let jobPublicKeys: [[UInt8]]
    /// A real member's session with a decoy of rank `replayRank`, recorded off the wire (client → server bytes).
    private(set) var recordedSession: [UInt8] = []
    let replayRank = 1

    private let lock = NSLock()
    private var stopped = false
    private var _rounds = 0
    private var _connectedRaw = 0
    /// Full rounds of every attack on every target.
    var rounds: Int { lock.lock(); defer { lock.unlock() }; return _rounds }
    /// Raw connections a listening rank accepted.
    var connectedRaw: Int { lock.lock(); defer { lock.unlock() }; return _connectedRaw }

    /// Source addresses of the attacks, one per kind (loopback aliases: each kind then gets its own log line); nil:
    /// the system's choice.
    let sources: Sources?
    struct Sources { var garbage, fakeHello, replay, plain, foreignKey, otherSecret: String }

    /// `hosts`: each host's address and first port with its rank count (ports base + local*16 + slot, slots 0..<16).
    init(jobID: String, secret: JobSecret, hosts: [(address: String, basePort: Int, ranks: Int)], sources: Sources? = nil) {
        self.jobID = jobID
        self.sources = sources
        worldSize = hosts.reduce(0) { $0 + $1.ranks }
        var targets: [Target] = []
        var rank = 0
        for host in hosts {
            for local in 0..<host.ranks {
                for slot in 0..<ClusterSpec.maxGroupsPerRank {
                    targets.append(Target(host: host.address, port: host.basePort + local * ClusterSpec.maxGroupsPerRank + slot, rank: rank, slot: slot))
                }
                rank += 1
            }
        }
        self.targets = targets
        jobPublicKeys = secret.keys(jobID: jobID, worldSize: worldSize, rank: 0).publicKeys
    }

    // MARK: frames

    static func fnv1a(_ bytes: [UInt8]) -> UInt64 {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in bytes { h = (h ^ UInt64(b)) &* 0x0000_0100_0000_01B3 }
        return h
    }

    /// A 56-byte frame header as FrameHeader.swift lays it out, for the job's world group (slot 0), collective #1.
    func header(payloadBytes: Int, source: Int = 0, kind: UInt16 = 1) -> [UInt8] {
        var h: [UInt8] = []
        func put<T: FixedWidthInteger>(_ v: T) { withUnsafeBytes(of: v.littleEndian) { h += $0 } }
        put(UInt32(0x4E54_5453)); put(UInt16(2)); put(kind)
        put(Self.fnv1a(Array(jobID.utf8)))
        put(UInt32(0))
        put(UInt32(truncatingIfNeeded: Self.fnv1a((0..<worldSize).flatMap { withUnsafeBytes(of: UInt32($0).littleEndian, Array.init) })))
        put(UInt64(1)); put(UInt32(source)); put(UInt32(0)); put(UInt64(payloadBytes)); put(UInt64(0))
        return h
    }

    // MARK: recording a real session

    /// A member (rank 0, with the job's keys) sends a header and a payload to a decoy that holds rank `replayRank`'s
    /// keys, through a proxy that records what goes over the wire. Returns once the decoy received the frames.
    func recordSession(secret: JobSecret) throws {
        let context = zmq_ctx_new()!
        defer { zmq_ctx_term(context) }
        let decoyKeys = secret.keys(jobID: jobID, worldSize: worldSize, rank: replayRank)
        let memberKeys = secret.keys(jobID: jobID, worldSize: worldSize, rank: 0)
        let decoy = zmq_socket(context, ZMQ_PULL)!
        defer { zmq_close(decoy) }
        var on: Int32 = 1, linger: Int32 = 0
        zmq_setsockopt(decoy, ZMQ_LINGER, &linger, 4)
        zmq_setsockopt(decoy, ZMQ_CURVE_SERVER, &on, 4)
        zmq_setsockopt(decoy, ZMQ_CURVE_SECRETKEY, decoyKeys.secretKey, 32)
        guard zmq_bind(decoy, "tcp://127.0.0.1:*") == 0 else { throw StrangerError("decoy bind failed") }
        var endpoint = [CChar](repeating: 0, count: 256)
        var length = endpoint.count
        zmq_getsockopt(decoy, ZMQ_LAST_ENDPOINT, &endpoint, &length)
        let decoyPort = Int(String(cString: endpoint).split(separator: ":").last!)!

        let proxy = try RecordingProxy(toPort: decoyPort)
        let client = zmq_socket(context, ZMQ_PUSH)!
        var lingerLong: Int32 = 2000
        zmq_setsockopt(client, ZMQ_LINGER, &lingerLong, 4)
        zmq_setsockopt(client, ZMQ_CURVE_SERVERKEY, memberKeys.publicKeys[replayRank], 32)
        zmq_setsockopt(client, ZMQ_CURVE_PUBLICKEY, memberKeys.publicKey, 32)
        zmq_setsockopt(client, ZMQ_CURVE_SECRETKEY, memberKeys.secretKey, 32)
        zmq_connect(client, "tcp://127.0.0.1:\(proxy.port)")
        let payload = [UInt8](repeating: 0x41, count: 64)
        let h = header(payloadBytes: payload.count)
        zmq_send(client, h, h.count, ZMQ_SNDMORE)
        zmq_send(client, payload, payload.count, 0)
        var timeout: Int32 = 10_000
        zmq_setsockopt(decoy, ZMQ_RCVTIMEO, &timeout, 4)
        var received = [UInt8](repeating: 0, count: 128)
        let n1 = zmq_recv(decoy, &received, received.count, 0)
        let n2 = zmq_recv(decoy, &received, received.count, 0)
        zmq_close(client)
        guard n1 == 56, n2 == 64 else { throw StrangerError("the decoy did not receive the member's frames (\(n1), \(n2))") }
        recordedSession = proxy.finish()
        guard recordedSession.count > 64 + 200 else { throw StrangerError("recorded only \(recordedSession.count) bytes") }
    }

    // MARK: attacking

    private var thread: Thread?
    private let finished = DispatchSemaphore(value: 0)

    /// Starts attacking on a thread of its own: `prepare` first (e.g. entering a network namespace), then, once a
    /// target listens, rounds until `stop()`.
    func start(prepare: @escaping @Sendable () -> Bool = { true }) {
        let t = Thread { [self] in
            defer { finished.signal() }
            guard prepare(), waitForListeningTarget(seconds: 60) else { return }
            attack()
        }
        thread = t
        t.start()
    }

    /// Stops the attacks and waits until the last socket is closed (so nothing reaches a later job on these ports).
    func stop() {
        lock.lock(); stopped = true; lock.unlock()
        if thread != nil { finished.wait(); thread = nil }
    }

    /// Attacks every target in rounds until `stop()`, at most `maxRounds` rounds.
    func attack(maxRounds: Int = 100) {
        let context = zmq_ctx_new()!
        defer { zmq_ctx_term(context) }
        while !isStopped, rounds < maxRounds {
            attackRound(context)
            lock.lock(); _rounds += 1; lock.unlock()
        }
    }

    private var isStopped: Bool { lock.lock(); defer { lock.unlock() }; return stopped }

    /// Waits until one of the targets accepts a connection (the job listens); false after `seconds`.
    func waitForListeningTarget(seconds: Double) -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline, !isStopped {
            for t in targets where t.slot == 0 {
                if rawSend(t, []) { return true }
            }
            usleep(20_000)
        }
        return false
    }

    private func attackRound(_ context: UnsafeMutableRawPointer) {
        var garbage = [UInt8](repeating: 0, count: 300)
        for i in garbage.indices { garbage[i] = UInt8.random(in: 0...255) }
        garbage[0] = 0x47   // not 0xFF: what libzmq takes for a ZMTP 1.0 peer
        // A ZMTP 3.0 greeting offering CURVE, then junk where the HELLO command should be.
        let greeting: [UInt8] = [0xFF] + [UInt8](repeating: 0, count: 8) + [0x7F, 3, 0] + Array("CURVE".utf8)
            + [UInt8](repeating: 0, count: 15) + [0] + [UInt8](repeating: 0, count: 31)
        let fakeHello = greeting + [0x04, 0xC8] + Array("\u{5}HELLO".utf8) + garbage.prefix(194)
        for t in targets {
            if isStopped { return }
            rawSend(t, garbage, from: sources?.garbage)
            rawSend(t, fakeHello, from: sources?.fakeHello)
            if !recordedSession.isEmpty { rawSend(t, recordedSession, from: sources?.replay, readMilliseconds: 30) }
        }
        var sockets: [UnsafeMutableRawPointer] = []
        let payload = [UInt8](repeating: 0x42, count: 64)
        let h = header(payloadBytes: payload.count)
        for t in targets {
            for variant in 0..<3 {
                let s = zmq_socket(context, ZMQ_PUSH)!
                var linger: Int32 = 0
                zmq_setsockopt(s, ZMQ_LINGER, &linger, 4)
                switch variant {
                case 0: break   // plain ZMTP
                case 1:         // knows the rank's public key, not a member's secret key: the ZAP handler refuses it
                    var pub = [CChar](repeating: 0, count: 41), sec = [CChar](repeating: 0, count: 41)
                    zmq_curve_keypair(&pub, &sec)
                    zmq_setsockopt(s, ZMQ_CURVE_SERVERKEY, jobPublicKeys[t.rank], 32)
                    zmq_setsockopt(s, ZMQ_CURVE_PUBLICKEY, pub, 40)
                    zmq_setsockopt(s, ZMQ_CURVE_SECRETKEY, sec, 40)
                default:        // rank 0 of the same job id with another secret
                    let other = JobSecret.generate().keys(jobID: jobID, worldSize: worldSize, rank: 0)
                    zmq_setsockopt(s, ZMQ_CURVE_SERVERKEY, other.publicKeys[t.rank], 32)
                    zmq_setsockopt(s, ZMQ_CURVE_PUBLICKEY, other.publicKey, 32)
                    zmq_setsockopt(s, ZMQ_CURVE_SECRETKEY, other.secretKey, 32)
                }
                let source = [sources?.plain, sources?.foreignKey, sources?.otherSecret][variant].map { "\($0):0;" } ?? ""
                zmq_connect(s, "tcp://\(source)\(t.host):\(t.port)")
                zmq_send(s, h, h.count, ZMQ_SNDMORE | ZMQ_DONTWAIT)
                zmq_send(s, payload, payload.count, ZMQ_DONTWAIT)
                sockets.append(s)
            }
        }
        usleep(300_000)   // handshakes are tried (and refused), reconnects too
        sockets.forEach { zmq_close($0) }
    }

    /// Connects to `t`, sends `bytes`, reads what comes back for a moment, closes. True when it connected.
    @discardableResult
    private func rawSend(_ t: Target, _ bytes: [UInt8], from source: String? = nil, readMilliseconds: Int = 5) -> Bool {
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var list: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(t.host, String(t.port), &hints, &list) == 0, let ai = list else { return false }
        defer { freeaddrinfo(ai) }
        let fd = socket(ai.pointee.ai_family, ai.pointee.ai_socktype, 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        if let source {
            var local = sockaddr_in()
            local.sin_family = sa_family_t(AF_INET)
            local.sin_addr.s_addr = inet_addr(source)
            let bound = withUnsafePointer(to: &local) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            guard bound == 0 else { return false }
        }
        guard connect(fd, ai.pointee.ai_addr, ai.pointee.ai_addrlen) == 0 else { return false }
        lock.lock(); _connectedRaw += 1; lock.unlock()
        if !bytes.isEmpty { _ = send(fd, bytes, bytes.count, Int32(MSG_NOSIGNAL)) }
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        var buffer = [UInt8](repeating: 0, count: 4096)
        let deadline = Date().addingTimeInterval(Double(readMilliseconds) / 1000)
        while Date() < deadline, poll(&p, 1, 5) > 0 {
            if recv(fd, &buffer, buffer.count, Int32(MSG_DONTWAIT)) <= 0 { break }
        }
        return true
    }
}

struct StrangerError: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
}

/// One connection from a client to `toPort` on loopback, passed through and recorded (the client's bytes).
final class RecordingProxy: @unchecked Sendable {
    let port: Int
    private let listener: Int32
    private var recorded: [UInt8] = []
    private let done = DispatchSemaphore(value: 0)

    init(toPort target: Int) throws {
        let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        self.listener = listener
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let ok = withUnsafeMutablePointer(to: &address) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(listener, $0, length) == 0 && listen(listener, 1) == 0 && getsockname(listener, $0, &length) == 0
            }
        }
        guard ok else { throw StrangerError("proxy: cannot listen") }
        port = Int(UInt16(bigEndian: address.sin_port))
        Thread { [self] in pump(target) }.start()
    }

    private func pump(_ target: Int) {
        defer { close(listener); done.signal() }
        let client = accept(listener, nil, nil)
        guard client >= 0 else { return }
        defer { close(client) }
        let server = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(server) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = UInt16(target).bigEndian
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(server, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard connected == 0 else { return }
        var fds = [pollfd(fd: client, events: Int16(POLLIN), revents: 0), pollfd(fd: server, events: Int16(POLLIN), revents: 0)]
        var buffer = [UInt8](repeating: 0, count: 65536)
        while poll(&fds, 2, 10_000) > 0 {
            if fds[0].revents != 0 {
                let n = recv(client, &buffer, buffer.count, 0)
                if n <= 0 { return }
                recorded += buffer[..<n]
                _ = send(server, buffer, n, Int32(MSG_NOSIGNAL))
            }
            if fds[1].revents != 0 {
                let n = recv(server, &buffer, buffer.count, 0)
                if n <= 0 { return }
                _ = send(client, buffer, n, Int32(MSG_NOSIGNAL))
            }
        }
    }

    /// The client's bytes, once its connection ended.
    func finish() -> [UInt8] {
        done.wait()
        return recorded
    }
}
